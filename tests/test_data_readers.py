"""Dataset readers, run through the real reading path on small files written in each
dataset's exact on-disk format."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from noisybench.data.cifar import expected_md5, load_cifar, verify_md5
from noisybench.data.digits import load_digits
from noisybench.errors import UserError

# --------------------------------------------------------------------------- CIFAR writers

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _dump(path: Path, obj: dict, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _batch(data: np.ndarray, labels: dict[bytes, list[int]], tag: str) -> dict:
    n = data.shape[0]
    out = {b"batch_label": tag.encode(), b"data": data}
    out.update(labels)
    out[b"filenames"] = [f"img_{tag}_{i}.png".encode() for i in range(n)]
    return out


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 3) -> dict:
    """CIFAR-10 layout: data_batch_1..5, test_batch, batches.meta (bytes keys, as the
    official Python 2 pickles load with encoding='bytes'). Returns what was written."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        # Image 0 of batch b: a marker byte b*10 at channel 1 (green), row 5, column 7:
        # flat offset = channel*1024 + row*32 + column.
        data[0, 1 * 1024 + 5 * 32 + 7] = 10 * b
        data[0, 1 * 1024 + 7 * 32 + 5] = 1  # the transposed position holds something else
        _dump(d / f"data_batch_{b}", _batch(data, {b"labels": labels}, f"training batch {b}"))
        all_data.append(data)
        all_labels += labels
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test[n_test - 1, 2 * 1024 + 31 * 32 + 0] = 77  # blue, last row, first column
    test[n_test - 1, 2 * 1024 + 0 * 32 + 31] = 78  # blue, first row, last column
    test_labels = [9, 0, 4][:n_test]
    _dump(d / "test_batch", _batch(test, {b"labels": test_labels}, "testing batch 1"))
    _dump(
        d / "batches.meta",
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072,
        },
    )
    return {"dir": d, "train": np.concatenate(all_data), "labels": all_labels, "test": test}


def write_cifar100(root: Path, n_train: int = 120, n_test: int = 5) -> dict:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    coarse_of = rng.permutation(np.repeat(np.arange(20), 5))  # a made-up fine->coarse map
    fine = np.concatenate([np.arange(100), rng.integers(0, 100, n_train - 100)])
    train = rng.integers(0, 256, size=(n_train, 3072), dtype=np.uint8)
    train[3, 0 * 1024 + 2 * 32 + 30] = 251  # red, row 2, column 30 of image 3
    test_fine = rng.integers(0, 100, n_test)
    test = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    for name, data, f in (("train", train, fine), ("test", test, test_fine)):
        _dump(
            d / name,
            {
                b"filenames": [f"{name}_{i}.png".encode() for i in range(len(f))],
                b"batch_label": name.encode(),
                b"fine_labels": [int(v) for v in f],
                b"coarse_labels": [int(coarse_of[v]) for v in f],
                b"data": data,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    _dump(
        d / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return {"dir": d, "coarse_of": coarse_of, "fine": fine, "test_fine": test_fine, "train": train}


# --------------------------------------------------------------------------- CIFAR tests


def test_cifar10_pixels_labels_and_batch_order(tmp_path):
    w = write_cifar10(tmp_path)
    data = load_cifar("cifar10", str(tmp_path), verify=False)
    assert data.name == "cifar10"
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (20, 3, 32, 32)
    assert data.test_images.shape == (3, 3, 32, 32)
    # Hand-placed marker of batch b sits in image 4*(b-1), channel 1, y=5, x=7.
    for b in range(1, 6):
        assert int(data.train_images[4 * (b - 1), 1, 5, 7]) == 10 * b
        assert int(data.train_images[4 * (b - 1), 1, 7, 5]) == 1
    assert int(data.test_images[2, 2, 31, 0]) == 77
    assert int(data.test_images[2, 2, 0, 31]) == 78
    # Whole tensors against an independent decoding of the planes: pixel (c, y, x) is byte
    # c*1024 + y*32 + x of the row.
    flat = w["train"]
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    expected = flat[:, c * 1024 + y * 32 + x]
    assert np.array_equal(data.train_images.numpy(), expected)
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == w["labels"]  # batches 1..5 in order
    assert data.test_labels.tolist() == [9, 0, 4]
    assert data.class_names == CIFAR10_NAMES
    assert data.num_classes == 10
    assert data.superclass is None
    assert len(data.mean) == 3 and len(data.std) == 3


def test_cifar100_superclass_map_and_labels(tmp_path):
    w = write_cifar100(tmp_path)
    data = load_cifar("cifar100", str(tmp_path), verify=False)
    assert data.train_images.shape == (120, 3, 32, 32)
    assert int(data.train_images[3, 0, 2, 30]) == 251
    assert data.train_labels.tolist() == w["fine"].tolist()  # fine labels are the labels
    assert data.test_labels.tolist() == w["test_fine"].tolist()
    assert data.num_classes == 100
    assert data.class_names[0] == "fine0" and data.class_names[99] == "fine99"
    assert data.superclass is not None and data.superclass.dtype == torch.int64
    assert data.superclass.tolist() == w["coarse_of"].tolist()


def test_cifar100_inconsistent_superclass_is_rejected(tmp_path):
    w = write_cifar100(tmp_path)
    path = w["dir"] / "train"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    i = batch[b"fine_labels"].index(7)
    batch[b"coarse_labels"][i] = (batch[b"coarse_labels"][i] + 1) % 20
    _dump(path, batch)
    with pytest.raises(UserError, match="several coarse labels"):
        load_cifar("cifar100", str(tmp_path), verify=False)


def test_missing_directory_error_names_path_and_remedy(tmp_path):
    root = tmp_path / "no_data_here"
    with pytest.raises(UserError) as info:
        load_cifar("cifar10", str(root))
    msg = str(info.value)
    assert str(root / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg
    assert "dataset.reader.download=true" in msg
    assert "\n" not in msg


def test_one_missing_file_is_named(tmp_path):
    w = write_cifar10(tmp_path)
    (w["dir"] / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"lacks data_batch_3 of the expected files \("):
        load_cifar("cifar10", str(tmp_path), verify=False)


def test_failed_download_gives_one_line_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution\nsecond line")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError) as info:
        load_cifar("cifar100", str(tmp_path), download=True)
    msg = str(info.value)
    assert "could not download CIFAR-100" in msg and str(tmp_path) in msg
    assert "cifar-100-python.tar.gz" in msg and "\n" not in msg


def test_truncated_pickle_names_the_file(tmp_path):
    w = write_cifar10(tmp_path)
    path = w["dir"] / "data_batch_2"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="data_batch_2 is truncated"):
        load_cifar("cifar10", str(tmp_path), verify=False)


def test_wrong_shape_data_is_rejected(tmp_path):
    w = write_cifar10(tmp_path)
    _dump(w["dir"] / "test_batch", _batch(np.zeros((2, 1024), np.uint8), {b"labels": [0, 1]}, "t"))
    with pytest.raises(UserError, match=r"test_batch: 'data' is uint8 \(2, 1024\)"):
        load_cifar("cifar10", str(tmp_path), verify=False)


def test_pickle_with_foreign_objects_is_refused(tmp_path):
    w = write_cifar10(tmp_path)
    _dump(w["dir"] / "batches.meta", {b"label_names": Path("x")})
    with pytest.raises(UserError, match=r"batches\.meta is truncated or not a CIFAR pickle"):
        load_cifar("cifar10", str(tmp_path), verify=False)


def test_md5_verification_rejects_and_accepts(tmp_path):
    w = write_cifar10(tmp_path)
    d = w["dir"]
    # The official checksums (from torchvision) cannot match our hand-written files.
    official = expected_md5("cifar10")
    batches = {f"data_batch_{i}" for i in range(1, 6)}
    assert set(official) == {*batches, "test_batch", "batches.meta"}
    assert official["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    with pytest.raises(UserError, match=r"data_batch_1 is corrupt.*verify=false"):
        load_cifar("cifar10", str(tmp_path), verify=True)
    # A table of the files' true checksums, computed independently here, is accepted ...
    table = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    verify_md5(d, table)
    # ... and one changed byte in one file is caught, naming that file.
    raw = bytearray((d / "test_batch").read_bytes())
    raw[-10] ^= 0xFF
    (d / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="test_batch is corrupt"):
        verify_md5(d, table)


def test_unknown_variant(tmp_path):
    with pytest.raises(UserError, match="unknown CIFAR variant 'cifar11'"):
        load_cifar("cifar11", str(tmp_path))


# --------------------------------------------------------------------------- digits


def test_digits_split_values_and_stats():
    from sklearn.datasets import load_digits as sk

    raw = sk()
    data = load_digits()
    assert data.train_images.shape == (1300, 1, 8, 8)
    assert data.test_images.shape == (497, 1, 8, 8)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    # Scaling: value v in 0..16 becomes floor(v*255/16 + 1/2): 0 -> 0, 8 -> 128, 16 -> 255.
    scaled = np.floor(raw.images * 255 / 16 + 0.5).astype(np.uint8)
    pool = {}
    for img, lab in zip(scaled, raw.target, strict=True):
        pool.setdefault(img.tobytes(), set()).add(int(lab))
    both = torch.cat([data.train_images, data.test_images])[:, 0].numpy()
    labels = torch.cat([data.train_labels, data.test_labels]).tolist()
    assert all(int(lab) in pool[img.tobytes()] for img, lab in zip(both, labels, strict=True))
    assert sorted(labels) == sorted(raw.target.tolist())  # a partition of all 1,797 images
    assert int(both.max()) == 255 and int(both.min()) == 0
    # Stratified: each class's test share is its overall share, to within one image.
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(data.test_labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 497 / 1797) <= 1.0)
    # Mean/std of the training pixels in [0, 1] units.
    train = data.train_images.double() / 255
    assert data.mean[0] == pytest.approx(train.mean().item(), abs=1e-9)
    assert data.std[0] == pytest.approx(train.std(unbiased=False).item(), abs=1e-9)


def test_digits_split_is_fixed_by_its_seed():
    a, b, c = load_digits(), load_digits(), load_digits(split_seed=1)
    assert torch.equal(a.train_images, b.train_images)
    assert torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    small = load_digits(test_size=200)
    assert small.test_images.shape[0] == 200 and small.train_images.shape[0] == 1597
    with pytest.raises(UserError, match="test_size=5"):
        load_digits(test_size=5)


# --------------------------------------------------------------------------- Tiny ImageNet


def _jpeg(path: Path, left, right=None, mode: str = "RGB") -> None:
    """A 64x64 JPEG whose left half (x < 32) is colour ``left`` and right half ``right``."""
    from PIL import Image

    right = left if right is None else right
    channels = 1 if mode == "L" else 3
    arr = np.zeros((64, 64, channels), dtype=np.uint8)
    arr[:, :32] = left
    arr[:, 32:] = right
    img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=100, subsampling=0)


def write_tinyimagenet(root: Path) -> Path:
    d = root / "tiny-imagenet-200"
    d.mkdir(parents=True)
    (d / "wnids.txt").write_text("n03\nn01\nn02\n")  # not sorted on purpose
    (d / "words.txt").write_text("n00\tnothing\nn01\tgoldfish, fish\nn02\tcat\nn03\tdog\n")
    _jpeg(d / "train/n01/images/n01_1.JPEG", (40, 50, 60))
    _jpeg(d / "train/n01/images/n01_0.JPEG", (200, 10, 10), (10, 10, 200))
    _jpeg(d / "train/n02/images/n02_0.JPEG", 128, mode="L")
    _jpeg(d / "train/n03/images/n03_0.JPEG", (0, 255, 0))
    (d / "train/n03/n03_boxes.txt").write_text("n03_0.JPEG\t0\t0\t63\t63\n")
    _jpeg(d / "val/images/val_0.JPEG", (90, 90, 20))
    _jpeg(d / "val/images/val_1.JPEG", (20, 90, 90))
    (d / "val/val_annotations.txt").write_text(
        "val_1.JPEG\tn03\t0\t0\t10\t10\nval_0.JPEG\tn01\t1\t2\t3\t4\n"
    )
    return d


def _close(pixel: torch.Tensor, rgb) -> bool:
    return bool((pixel.int() - torch.tensor(rgb)).abs().max() <= 3)  # JPEG rounding


def test_tinyimagenet_reader_and_cache(tmp_path, monkeypatch):
    from noisybench.data.tinyimagenet import CACHE, load_tinyimagenet

    d = write_tinyimagenet(tmp_path)
    data = load_tinyimagenet(str(tmp_path), workers=2)
    assert data.train_images.shape == (4, 3, 64, 64) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (2, 3, 64, 64)
    assert data.num_classes == 3 and data.class_names == ["goldfish, fish", "cat", "dog"]
    # sorted wnids n01, n02, n03; within a class sorted file names (n01_0 before n01_1)
    assert data.train_labels.tolist() == [0, 0, 1, 2]
    assert _close(data.train_images[0, :, 10, 5], (200, 10, 10))  # left half, x = 5
    assert _close(data.train_images[0, :, 10, 50], (10, 10, 200))  # right half, x = 50
    assert _close(data.train_images[1, :, 40, 40], (40, 50, 60))
    assert _close(data.train_images[2, :, 0, 0], (128, 128, 128))  # grey JPEG -> RGB
    assert _close(data.train_images[3, :, 63, 63], (0, 255, 0))
    # test = val split, in annotation-file order
    assert data.test_labels.tolist() == [2, 0]
    assert _close(data.test_images[0, :, 30, 30], (20, 90, 90))
    pix = data.train_images.double() / 255
    assert data.mean == pytest.approx(pix.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert data.std == pytest.approx(pix.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)

    # The second load reads only the cache (no JPEG is opened), with identical results.
    assert (d / CACHE).is_file()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    import PIL.Image

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a JPEG although the cache exists")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    again = load_tinyimagenet(str(tmp_path))
    assert torch.equal(again.train_images, data.train_images)
    assert torch.equal(again.test_labels, data.test_labels)
    assert again.mean == data.mean


def test_tinyimagenet_errors(tmp_path):
    from noisybench.data.tinyimagenet import load_tinyimagenet

    with pytest.raises(UserError) as info:
        load_tinyimagenet(str(tmp_path / "none"))
    msg = str(info.value)
    assert str(tmp_path / "none" / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "dataset.reader.download=true" in msg and "\n" not in msg
    d = write_tinyimagenet(tmp_path)
    _jpeg(d / "train/n02/images/n02_1.JPEG", 1)
    from PIL import Image

    Image.new("RGB", (32, 64)).save(d / "train/n02/images/n02_1.JPEG", format="JPEG")
    with pytest.raises(UserError, match=r"n02_1\.JPEG is 32x64, expected 64x64"):
        load_tinyimagenet(str(tmp_path), cache=False)


# --------------------------------------------------------------------------- dataset configs


@pytest.mark.parametrize(
    ("name", "asym", "padding", "hflip"),
    [
        ("digits", "digits", 1, False),
        ("cifar10", "cifar10_tanaka", 4, True),
        ("cifar100", "cifar100_block_next", 4, True),
        ("tinyimagenet", None, 4, True),
    ],
)
def test_dataset_configs(name, asym, padding, hflip, tmp_path):
    import inspect

    from hydra.utils import get_method, instantiate
    from omegaconf import OmegaConf

    from noisybench.data.views import build_views

    path = Path(__file__).parents[1] / "conf" / "dataset" / f"{name}.yaml"
    cfg = OmegaConf.merge({"data_dir": str(tmp_path)}, {"dataset": OmegaConf.load(path)})
    ds = cfg.dataset
    assert ds.name == name and ds.asym_map == asym
    assert ds.augment.crop_padding == padding and ds.augment.hflip is hflip
    reader = get_method(ds.reader._target_)
    args = {k for k in ds.reader if k != "_target_"}
    assert args <= set(inspect.signature(reader).parameters)
    if name != "digits":
        assert ds.reader.root == str(tmp_path)
        # No files there: the reader raises the clear UserError, which Hydra's instantiate
        # wraps (InstantiationException); the run must unwrap it via __cause__.
        with pytest.raises(Exception) as info:
            instantiate(ds.reader)
        err = info.value if isinstance(info.value, UserError) else info.value.__cause__
        assert isinstance(err, UserError) and str(tmp_path) in str(err)
    channels = 1 if name == "digits" else 3
    views = build_views(["weak", "strong_1"], ds.augment, (0.5,) * channels, (0.2,) * channels, 8)
    assert set(views) == {"weak", "strong_1"}
