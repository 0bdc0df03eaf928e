"""The streaming image-folder reader and the .npz arrays reader, on files the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from noisybench.data.arrays import load_arrays
from noisybench.data.folder import FolderLoader, eval_batches, load_folder
from noisybench.errors import UserError

CLASSES = 20
PER_CLASS = 10


def _write_folder(root: Path) -> None:
    write_image_folder(root, CLASSES, PER_CLASS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    _write_folder(root)
    return root


def test_indices_are_sorted_classes_then_sorted_files(folder: Path) -> None:
    data = load_folder(str(folder), image_size=32, resize=36)
    want = [
        str(folder / "train" / f"n{c:03d}" / name)
        for c in range(CLASSES)
        for name in sorted(f"img{j}.JPEG" for j in range(PER_CLASS))
    ]
    assert data.train_files == want
    assert data.train_labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    assert data.num_classes == CLASSES and data.class_names[3] == "n003"
    assert len(data.test_files) == 2 * CLASSES and data.given_labels is None


def test_every_sample_once_per_epoch_shapes_and_determinism(folder: Path) -> None:
    data = load_folder(str(folder), image_size=32, resize=36)
    noisy = (data.train_labels + 1) % CLASSES
    loader = FolderLoader(data, noisy, batch_size=48, views=("weak",), seed=3, workers=2)
    assert len(loader) == 5  # ceil(200 / 48)
    batches = list(loader.epoch(1))
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(200))
    for b in batches:
        assert b.views["weak"].shape == (b.idx.shape[0], 3, 32, 32)
        assert b.views["weak"].dtype == torch.float32
        assert torch.equal(b.target, noisy[b.idx])
    # the order is randperm seeded from (seed, epoch): same epoch again, other worker count,
    # and a resume from step 2 give the same indices and the same pixels
    again = list(FolderLoader(data, noisy, 48, ("weak",), seed=3, workers=0).epoch(1, 2))
    for a, b in zip(batches[2:], again, strict=True):
        assert torch.equal(a.idx, b.idx)
        assert torch.equal(a.views["weak"], b.views["weak"])
    other = torch.cat([b.idx for b in loader.epoch(2)])
    assert not torch.equal(idx, other)


def test_eval_batches_match_pil_decode_resize_centre_crop(folder: Path) -> None:
    """Eval pixels = PIL decode, then torchvision's reference resize (shorter side) and
    centre crop, then (x / 255 - mean) / std, in sample order."""
    from torchvision.transforms.functional import center_crop, resize

    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    data = load_folder(str(folder), image_size=32, resize=36, mean=mean, std=std)
    x, y, idx = next(eval_batches(data, "test", batch_size=4, workers=0))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1] and idx.tolist() == [0, 1, 2, 3]
    for b in range(4):
        img = Image.open(data.test_files[b]).convert("RGB")
        pix = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        ref = center_crop(resize(pix, [36], antialias=True), [32, 32]).float() / 255
        ref = (ref - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        # at most one grey level apart (uint8 rounding of the two resize code paths)
        level = (x[b] - ref).abs() * torch.tensor(std)[:, None, None] * 255
        assert level.max() < 1.01 and level.mean() < 0.3


def test_sharded_processes_take_disjoint_shares(folder: Path) -> None:
    data = load_folder(str(folder), image_size=16, resize=16)
    shares = []
    for rank in range(2):
        loader = FolderLoader(
            data, data.train_labels, 40, ("plain",), seed=0, workers=0, rank=rank, world_size=2
        )
        shares.append([b.idx for b in loader.epoch(0)])
    whole = FolderLoader(data, data.train_labels, 40, ("plain",), seed=0, workers=0)
    for a, b, g in zip(shares[0], shares[1], whole.epoch(0), strict=True):
        assert torch.equal(torch.cat([a, b]), g.idx) and a.shape == b.shape == (20,)


def test_folder_label_files(folder: Path, tmp_path: Path) -> None:
    noisy = np.arange(200) % CLASSES
    np.save(tmp_path / "noisy.npy", noisy)
    data = load_folder(str(folder), noisy_labels=str(tmp_path / "noisy.npy"))
    assert data.given_labels.tolist() == noisy.tolist() and data.clean_known
    (tmp_path / "clean.txt").write_text("\n".join(str(v) for v in noisy[::-1]))
    data = load_folder(str(folder), folder_labels="noisy", clean_labels=str(tmp_path / "clean.txt"))
    assert data.train_labels.tolist() == noisy[::-1].tolist()
    assert data.given_labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    unknown = load_folder(str(folder), folder_labels="noisy")
    assert not unknown.clean_known


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_folder_bad_inputs(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        load_folder(str(tmp_path / "nope"))
    assert "not a folder" in _one_line(exc)
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "a" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        load_folder(str(tmp_path / "a"))
    assert "no images" in _one_line(exc)
    (tmp_path / "b" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        load_folder(str(tmp_path / "b"))
    assert "no class sub-folders" in _one_line(exc)
    np.save(tmp_path / "short.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(UserError) as exc:
        load_folder(str(folder), noisy_labels=str(tmp_path / "short.npy"))
    assert "7 labels for 200" in _one_line(exc)
    data = load_folder(str(folder))
    with pytest.raises(UserError) as exc:
        FolderLoader(data, data.train_labels, 10, ("weak", "strong_1"), seed=0)
    assert "strong_1" in _one_line(exc)


def test_arrays_reader_layouts_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (30, 6, 5), dtype=np.uint8)
    path = tmp_path / "grey.npz"
    np.savez(
        path,
        train_images=grey,
        train_labels=np.arange(30) % 4,
        test_images=grey[:7],
        test_labels=np.arange(7) % 4,
    )
    data = load_arrays(str(path))
    assert data.train_images.shape == (30, 1, 6, 5) and data.num_classes == 4
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(grey))
    pix = grey.astype(np.float64) / 255
    assert data.mean[0] == pytest.approx(pix.mean()) and data.std[0] == pytest.approx(pix.std())
    rgb = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(
        path,
        train_images=rgb,
        train_labels=np.arange(12) % 3,
        test_images=rgb[:2],
        test_labels=np.array([0, 1]),
    )
    np.save(tmp_path / "noisy.npy", (np.arange(12) + 1) % 3)
    data = load_arrays(str(path), noisy_labels=str(tmp_path / "noisy.npy"))
    assert data.train_images.shape == (12, 3, 4, 4)
    assert int(data.train_images[5, 2, 1, 3]) == int(rgb[5, 1, 3, 2])
    assert data.given_labels.tolist() == ((np.arange(12) + 1) % 3).tolist()


def test_arrays_bad_inputs(tmp_path: Path) -> None:
    imgs = np.zeros((5, 4, 4), dtype=np.uint8)
    cases = {
        "mismatch.npz": dict(
            train_images=imgs,
            train_labels=np.zeros(4, int),
            test_images=imgs,
            test_labels=np.zeros(5, int),
        ),
        "float.npz": dict(
            train_images=imgs.astype(np.float32),
            train_labels=np.zeros(5, int),
            test_images=imgs,
            test_labels=np.zeros(5, int),
        ),
        "missing.npz": dict(train_images=imgs, train_labels=np.zeros(5, int)),
        "sizes.npz": dict(
            train_images=imgs,
            train_labels=np.zeros(5, int),
            test_images=np.zeros((5, 3, 3), np.uint8),
            test_labels=np.zeros(5, int),
        ),
    }
    expect = {
        "mismatch.npz": "4 labels for 5 images",
        "float.npz": "uint8",
        "missing.npz": "lacks",
        "sizes.npz": "differ",
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(UserError) as exc:
            load_arrays(str(tmp_path / name))
        assert expect[name] in _one_line(exc)
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError) as exc:
        load_arrays(str(tmp_path / "corrupt.npz"))
    assert "not a readable" in _one_line(exc)
    with pytest.raises(UserError) as exc:
        load_arrays(str(tmp_path / "absent.npz"))
    assert "not a file" in _one_line(exc)


def test_bsd_trains_through_the_streaming_reader(folder: Path) -> None:
    """One epoch of BSD on the JPEG folder through FolderLoader: every sample's Eq. 5 count
    moves from A0 to gamma * A0 + 1 exactly once, and the model's parameters change."""
    from noisybench.method import MethodContext
    from noisybench.methods.bsd import BSD
    from noisybench.models.small_cnn import small_cnn

    torch.manual_seed(0)
    data = load_folder(str(folder), image_size=32, resize=36)
    loader = FolderLoader(data, data.train_labels, 50, ("weak",), seed=1, workers=2)
    model = small_cnn(num_classes=CLASSES)
    method = BSD(gamma=0.9, c=10.0, eps=0.0, store_dtype="float32")
    ctx = MethodContext(
        num_samples=200,
        num_classes=CLASSES,
        noisy_labels=data.train_labels,
        epochs=1,
        steps_per_epoch=len(loader),
        device=torch.device("cpu"),
    )
    method.setup(ctx)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for batch in loader.epoch(0):
        out = method.training_step(model, batch, 0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(batch, out, 0)
    torch.testing.assert_close(method.counts, torch.full((200,), 0.9 * 10.0 + 1.0))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_second_weak_view_is_an_independent_draw(folder: Path) -> None:
    """``weak_1`` (DivideMix, the ensemble) crops independently of ``weak``; ``weak`` is the
    same with or without it, and both are reproducible."""
    data = load_folder(str(folder), image_size=24, resize=28)
    two = FolderLoader(data, data.train_labels, 50, ("weak", "weak_1"), seed=5, workers=0)
    one = FolderLoader(data, data.train_labels, 50, ("weak",), seed=5, workers=0)
    a, b = next(iter(two.epoch(0))), next(iter(one.epoch(0)))
    assert torch.equal(a.views["weak"], b.views["weak"])
    assert a.views["weak_1"].shape == a.views["weak"].shape
    differ = (a.views["weak_1"] - a.views["weak"]).flatten(1).abs().amax(1) > 0
    assert int(differ.sum()) >= 45  # a crop of 50 images coincides for almost none
    again = next(iter(two.epoch(0)))
    assert torch.equal(again.views["weak_1"], a.views["weak_1"])
    with pytest.raises(UserError, match="provides the views"):
        FolderLoader(data, data.train_labels, 50, ("weak", "strong_0"), seed=5, workers=0)


def test_decoding_in_the_training_process_leaves_its_generator_alone(folder: Path) -> None:
    """With workers=0 the crops are drawn in the training process from per-sample seeds; the
    global generator, which the engine checkpoints for exact resume, must come out unchanged."""
    data = load_folder(str(folder), image_size=16, resize=18)
    loader = FolderLoader(data, data.train_labels, 64, ("weak", "weak_1"), seed=2, workers=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    batches = list(loader.epoch(0))
    assert len(batches) == 4
    assert torch.equal(torch.get_rng_state(), state)
