"""The real-noise readers (noisybench/data/realnoise) on small trees written in each dataset's
exact layout (tests/realnoise_layouts.py): split sizes and labels against the lists the tree
was built from, the manifest's SHA-256 against a serialisation written here with hashlib,
the bad-input matrix (one line naming the file, nothing written), the export to the folder
form read back by the folder reader, and the per-epoch class-balanced subset against
DivideMix's selection loop transcribed into this file."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import realnoise_layouts as lay
import torch

from noisybench.data.folder import load_folder
from noisybench.data.realnoise import (
    balanced_subset,
    load_animal10n,
    load_clothing1m,
    load_food101n,
    load_red_mini_imagenet,
    load_webvision_mini,
    split_sizes,
)
from noisybench.data.realnoise.common import _balanced_from_order
from noisybench.data.realnoise.export import export_folder, main
from noisybench.errors import UserError


def expected_sha(dataset: str, rows: list[tuple]) -> str:
    text = f"# noisybench-manifest v1 {dataset}\nsplit\tpath\tgiven\tclean\tverified\n"
    text += "".join("\t".join(str(v) for v in row) + "\n" for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- Clothing1M
@pytest.fixture(scope="module")
def c1m(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("clothing1m")
    return root, lay.clothing1m(root)


def test_clothing1m_splits_labels_and_manifest(c1m, tmp_path) -> None:
    root, spec = c1m
    data = load_clothing1m(str(root))
    assert split_sizes(data) == {"train": 42, "val": 14, "test": 14}
    given = [g for _, g, _ in spec["train"]]
    clean = [c for _, _, c in spec["train"]]
    assert data.given_labels.tolist() == given
    assert data.clean_mask.tolist() == [c >= 0 for c in clean]
    # partly known clean labels are not mixed in (the engine would count the rest as clean)
    assert data.train_labels.tolist() == given
    assert not data.clean_known
    assert data.test_labels.tolist() == list(range(14)) == data.val_labels.tolist()
    assert data.train_files[0] == str(root / "images" / "0/00/n0_0.jpg")
    assert data.class_names == spec["names"]
    assert data.mean == (0.6959, 0.6537, 0.6371)
    # 28 samples with both labels, 14 of them (j = 0) flipped to c + 1
    rec = data.noise_on_known
    assert rec["samples"] == 28 and rec["realised_rate"] == pytest.approx(0.5)
    t = np.array(rec["transition"])
    for c in range(14):
        assert t[c, c] == pytest.approx(0.5) and t[c, (c + 1) % 14] == pytest.approx(0.5)
    rows = [("train", k, g, c, -1) for k, g, c in spec["train"]]
    rows += [("val", f"{c}/v/v{c}_0.jpg", c, c, -1) for c in range(14)]
    rows += [("test", f"{c}/t/t{c}_0.jpg", c, c, -1) for c in range(14)]
    assert data.manifest_sha256 == expected_sha("clothing1m", rows)
    assert data.protocol["subset_per_epoch"] == 64000
    # what a run records (result.json's "dataset" entry): plain JSON
    import json

    from noisybench.data.realnoise import summary

    record = json.loads(json.dumps(summary(data)))
    assert record["manifest_sha256"] == data.manifest_sha256
    assert record["splits"] == {"train": 42, "val": 14, "test": 14}
    assert record["clean_known_train"] == 28 and record["missing_skipped"]["train"] == 0
    assert record["noise_on_known"]["realised_rate"] == pytest.approx(0.5)
    # a resumed run must read the same data: the recorded entry passes, another copy does not
    from noisybench.data.realnoise import check_manifest

    check_manifest(record, data, "runs/x")
    check_manifest(None, data, "runs/x")
    other = dict(record, manifest_sha256="0" * 64)
    with pytest.raises(UserError) as err:
        check_manifest(other, data, "runs/x")
    assert "runs/x was trained on clothing1m with manifest 0000000000000000" in one_line(err)


def test_clothing1m_without_the_images_folder_has_the_same_manifest(c1m, tmp_path) -> None:
    root, _ = c1m
    flat = tmp_path / "flat"
    lay.clothing1m(flat, images_dir=False)
    a, b = load_clothing1m(str(root)), load_clothing1m(str(flat))
    assert a.manifest_sha256 == b.manifest_sha256
    assert b.train_files[0] == str(flat / "0/00/n0_0.jpg")
    clean = load_clothing1m(str(root), train_list="clean")
    assert split_sizes(clean)["train"] == 28 and clean.clean_known


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_clothing1m_bad_inputs_one_line_each(c1m, tmp_path) -> None:
    root, _ = c1m
    tree = _copy_tree(root, tmp_path / "c")
    (tree / "clean_val_key_list.txt").unlink()
    with pytest.raises(UserError) as err:
        load_clothing1m(str(tree))
    assert "clean_val_key_list.txt does not exist" in one_line(err)

    tree = _copy_tree(root, tmp_path / "d")
    kv = tree / "noisy_label_kv.txt"
    kv.write_text(kv.read_text().replace("images/0/01/n0_1.jpg 0", "images/0/01/n0_1.jpg 14"))
    with pytest.raises(UserError) as err:
        load_clothing1m(str(tree))
    assert f"{kv}:2: label 14 is out of range 0..13" in one_line(err)

    tree = _copy_tree(root, tmp_path / "e")
    kv = tree / "noisy_label_kv.txt"
    kv.write_text(kv.read_text() + "images/0/01/n0_1.jpg 5\n")
    with pytest.raises(UserError) as err:
        load_clothing1m(str(tree))
    assert "0/01/n0_1.jpg is listed twice, with labels 0 and 5" in one_line(err)
    # duplicates=last: the reference loaders' dict, the last line wins, counted
    data = load_clothing1m(str(tree), duplicates="last")
    assert data.given_labels[1].item() == 5 and data.protocol["duplicates_overwritten"] == 1
    with pytest.raises(UserError, match="duplicates='first' is unknown"):
        load_clothing1m(str(tree), duplicates="first")

    tree = _copy_tree(root, tmp_path / "f")
    (tree / "images" / "3" / "01" / "n3_1.jpg").unlink()
    with pytest.raises(UserError) as err:
        load_clothing1m(str(tree))
    message = one_line(err)
    assert "1 of the 42 images listed in" in message and "noisy_train_key_list.txt" in message
    assert "3/01/n3_1.jpg" in message and "missing=skip" in message
    with pytest.warns(UserWarning, match="1 images of .* are missing and skipped"):
        data = load_clothing1m(str(tree), missing="skip")
    assert data.missing == {"train": 1, "val": 0, "test": 0}
    assert split_sizes(data)["train"] == 41
    with pytest.raises(UserError, match="missing='maybe' is unknown"):
        load_clothing1m(str(tree), missing="maybe")


# ----------------------------------------------------------------------------- WebVision
@pytest.mark.parametrize("layout", ["numeric", "wnid", "list", "elr"])
def test_webvision_mini_keeps_50_classes_and_reads_each_imagenet_layout(tmp_path, layout):
    spec = lay.webvision(tmp_path, imagenet=layout)
    data = load_webvision_mini(str(tmp_path))
    assert split_sizes(data) == {"train": 100, "test": 50, "imagenet_val": 50}
    assert data.num_classes == 50 and int(data.given_labels.max()) == 49
    assert data.given_labels.tolist() == [c for c in range(50) for _ in range(2)]
    files, labels = data.extra_tests["imagenet_val"]
    assert labels.tolist() == list(range(50))
    assert all(f"ILSVRC2012_val_{c:08d}.JPEG" in f for c, f in zip(range(50), files, strict=True))
    assert data.test_files[3] == str(tmp_path / "val_images_256" / "val000003.jpg")
    assert data.class_names[1] == "class 1"
    assert (data.image_size, data.resize) == (227, 256)  # DivideMix's crops
    assert spec["train"] == 100


def test_webvision_without_imagenet_warns_and_skips(tmp_path) -> None:
    lay.webvision(tmp_path, imagenet=None)
    with pytest.warns(UserWarning, match="second test set is skipped"):
        data = load_webvision_mini(str(tmp_path))
    assert data.extra_tests == {} and split_sizes(data) == {"train": 100, "test": 50}
    (tmp_path / "info" / "val_filelist.txt").unlink()
    with pytest.raises(UserError) as err:
        load_webvision_mini(str(tmp_path), imagenet=False)
    assert "val_filelist.txt does not exist" in one_line(err)


# ----------------------------------------------------------------------------- ANIMAL-10N
def test_animal10n_labels_from_file_names(tmp_path) -> None:
    labels = lay.animal10n(tmp_path)
    data = load_animal10n(str(tmp_path))
    assert data.given_labels.tolist() == labels["train"]
    assert data.test_labels.tolist() == labels["test"]
    assert split_sizes(data) == {"train": 40, "test": 20}
    assert data.class_names[0] == "cat" and data.num_classes == 10
    (tmp_path / "training" / "x_1.jpg").write_bytes(b"")
    with pytest.raises(UserError) as err:
        load_animal10n(str(tmp_path))
    assert "x_1.jpg: ANIMAL-10N file names are <label>_<id>.jpg" in one_line(err)


# ----------------------------------------------------------------------------- Food-101N
def test_food101n_lists_flags_and_food101_test(tmp_path) -> None:
    spec = lay.food101n(tmp_path / "Food-101N_release", tmp_path / "food-101")
    with pytest.warns(UserWarning, match="1 verification lines name keys"):
        data = load_food101n(str(tmp_path / "Food-101N_release"), str(tmp_path / "food-101"))
    keys = spec["keys"]
    assert split_sizes(data) == {"train": len(keys), "test": 10}
    assert data.given_labels.tolist() == [lay.FOOD.index(k.split("/")[0]) for k in keys]
    verified = {row[1]: row[4] for row in data.manifest if row[0] == "train"}
    assert verified == {k: spec["flags"].get(k, -1) for k in keys}
    assert data.protocol["verified"] == 5
    assert data.protocol["verified_wrong_rate"] == pytest.approx(2 / 5)
    assert data.protocol["verified_unmatched"] == 1
    assert data.protocol["files_in_two_classes"] == 1
    assert data.test_files[0] == str(tmp_path / "food-101" / "images" / "apple_pie" / "100.jpg")
    assert data.test_labels.tolist() == [c for c in range(5) for _ in range(2)]
    rows = [("train", k, lay.FOOD.index(k.split("/")[0]), -1, spec["flags"].get(k, -1))
            for k in keys]  # fmt: skip
    rows += [("test", f"{t}.jpg", lay.FOOD.index(t.split("/")[0]), lay.FOOD.index(t.split("/")[0]),
              -1) for t in spec["test"]]  # fmt: skip
    assert data.manifest_sha256 == expected_sha("food101n", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fewer = load_food101n(
            str(tmp_path / "Food-101N_release"), str(tmp_path / "food-101"),
            exclude_verified_val=True,
        )  # fmt: skip
    assert split_sizes(fewer)["train"] == len(keys) - 2


def test_food101n_bad_verification_flag(tmp_path) -> None:
    lay.food101n(tmp_path / "r", tmp_path / "f")
    path = tmp_path / "r" / "meta" / "verified_train.tsv"
    path.write_text(path.read_text() + "waffles/0400aa.jpg\t2\n")
    with pytest.raises(UserError) as err:
        load_food101n(str(tmp_path / "r"), str(tmp_path / "f"))
    assert f"{path}:6: label 2 is out of range 0..1" in one_line(err)


# ----------------------------------------------------------------------------- Red Mini-ImageNet
def test_red_mini_imagenet_levels_missing_policy_and_blue_clean(tmp_path) -> None:
    spec = lay.red_mini_imagenet(tmp_path)
    for rate in ("0.0", "0.4", "0.8"):
        data = load_red_mini_imagenet(str(tmp_path), noise_rate=rate)
        assert data.given_labels.tolist() == [y for _, y in spec["splits"][rate]]
        assert split_sizes(data) == {"train": 15, "test": 5}
        assert not data.clean_known and data.noise_on_known is None
    blue = load_red_mini_imagenet(str(tmp_path), noise_rate=0.4, color="blue")
    assert blue.clean_known
    flipped = sum(y != spec["clean"][n] for n, y in spec["splits"]["0.4"])
    assert blue.noise_on_known["realised_rate"] == pytest.approx(flipped / 15)
    (tmp_path / "all_images" / "n01_2.jpg").unlink()
    (tmp_path / "all_images" / "n04_0.jpg").unlink()
    with pytest.raises(UserError) as err:
        load_red_mini_imagenet(str(tmp_path), noise_rate=0.4)
    assert "2 of the 15 images listed in" in one_line(err)
    with pytest.warns(UserWarning, match="2 images"):
        data = load_red_mini_imagenet(str(tmp_path), noise_rate=0.4, missing="skip")
    assert data.missing == {"train": 2, "test": 0} and len(data.train_files) == 13
    assert "n01_2.jpg" not in {row[1] for row in data.manifest}
    with pytest.raises(UserError, match=r"noise_rate=0\.5 is not a CNWL level"):
        load_red_mini_imagenet(str(tmp_path), noise_rate=0.5)


def test_red_mini_imagenet_annotations_give_verification_flags(tmp_path) -> None:
    """mini-imagenet-annotations.json (CNWL's web-image verdicts): two web images of the
    0.4 split, one judged clean; every other image is an original Mini-ImageNet one (1)."""
    import json

    spec = lay.red_mini_imagenet(tmp_path)

    def row(name: str, is_clean: int) -> list[dict]:
        return [{"image/id": name, "image/class/label/is_clean": is_clean, "image/uri": "u"}]

    rows = [row("n00_0", 0), row("n02_1", 1), row("elsewhere", 0)]
    (tmp_path / "mini-imagenet-annotations.json").write_text(json.dumps({"data": rows}))
    data = load_red_mini_imagenet(str(tmp_path), noise_rate=0.4)
    flags = {row[1]: row[4] for row in data.manifest if row[0] == "train"}
    names = [n for n, _ in spec["splits"]["0.4"]]
    assert flags == {n: 0 if n == "n00_0.jpg" else 1 for n in names}
    assert data.protocol["web_images_annotated"] == 2
    assert data.protocol["verified_wrong_rate"] == pytest.approx(1 / 15)
    (tmp_path / "mini-imagenet-annotations.json").write_text("{")
    with pytest.raises(UserError) as err:
        load_red_mini_imagenet(str(tmp_path), noise_rate=0.4)
    assert "mini-imagenet-annotations.json" in one_line(err)


# ----------------------------------------------------------------------------- export + hash
def test_export_to_folder_form_reads_back_with_the_folder_reader(c1m, tmp_path) -> None:
    root, spec = c1m
    data = load_clothing1m(str(root))
    out = export_folder(data, tmp_path / "out")
    back = load_folder(str(out), folder_labels="noisy")
    # the folder reader's order: by given class, then manifest order within the class
    order = sorted(range(42), key=lambda i: (spec["train"][i][1], i))
    assert back.given_labels.tolist() == [spec["train"][i][1] for i in order]
    assert [Path(f).resolve() for f in back.train_files] == [
        Path(data.train_files[i]).resolve() for i in order
    ]
    assert back.test_labels.tolist() == list(range(14))
    assert hashlib.sha256((out / "manifest.tsv").read_bytes()).hexdigest() == data.manifest_sha256
    known = (out / "known_clean_labels.tsv").read_text().splitlines()
    assert len(known) == 28
    assert len(list((out / "selection").rglob("*.jpg"))) == 14
    with pytest.raises(UserError, match="is not empty"):
        export_folder(data, out)


def test_export_with_all_clean_labels_writes_the_label_file(tmp_path) -> None:
    spec = lay.red_mini_imagenet(tmp_path / "few", classes=5)
    few = load_red_mini_imagenet(str(tmp_path / "few"), noise_rate=0.4, color="blue")
    with pytest.raises(UserError, match="have no training sample"):
        export_folder(few, tmp_path / "none")  # 5 of the 100 classes present
    assert not (tmp_path / "none").exists()
    spec = lay.red_mini_imagenet(tmp_path / "all", classes=100, per_class=2)
    # every class given at least once: image 0 of class c labelled c + 1, image 1 labelled c
    rows = [(n, (c + 1) % 100 if n.endswith("_0.jpg") else c) for n, c in spec["clean"].items()]
    lay.write_lines(tmp_path / "all/split/blue_noise_nl_0.2", [f"{n} {y}" for n, y in rows])
    data = load_red_mini_imagenet(str(tmp_path / "all"), noise_rate=0.2, color="blue")
    assert data.noise_on_known["realised_rate"] == pytest.approx(0.5)
    out = export_folder(data, tmp_path / "out", copy=True)
    back = load_folder(str(out), folder_labels="noisy", clean_labels=str(out / "clean_labels.txt"))
    # by given class, then manifest order; clean = the blue 0.0 split's label of that image
    order = sorted(enumerate(rows), key=lambda r: (r[1][1], r[0]))
    assert back.given_labels.tolist() == [y for _, (_, y) in order]
    assert back.train_labels.tolist() == [spec["clean"][n] for _, (n, _) in order]
    assert all(not p.is_symlink() for p in (out / "train").rglob("*.jpg"))


def test_hash_command_line(c1m, tmp_path, capsys) -> None:
    root, _ = c1m
    assert main(["hash", "clothing1m", f"root={root}"]) == 0
    out = capsys.readouterr().out
    assert load_clothing1m(str(root)).manifest_sha256 in out
    assert main(["manifest", "clothing1m", str(tmp_path / "m.tsv"), f"root={root}"]) == 0
    digest = hashlib.sha256((tmp_path / "m.tsv").read_bytes()).hexdigest()
    assert digest == load_clothing1m(str(root)).manifest_sha256
    assert main(["hash", "clothing1m", f"root={tmp_path / 'nowhere'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["hash", "cifar10", "root=x"]) == 2
    assert main(["hash", "clothing1m", "colour=red"]) == 2


# ----------------------------------------------------------------------------- subset
def dividemix_selection(labels: list[int], order: list[int], num_samples: int, k: int) -> list:
    """DivideMix's dataloader_clothing1M.py, mode 'all', transcribed: the shuffled list is
    ``order``; a sample is kept while its class has fewer than num_samples / k and fewer than
    num_samples are kept."""
    class_num = torch.zeros(k)
    kept = []
    for i in order:
        label = labels[i]
        if class_num[label] < (num_samples / k) and len(kept) < num_samples:
            kept.append(i)
            class_num[label] += 1
    return kept


@pytest.mark.parametrize(("n", "k", "total"), [(500, 14, 64), (300, 3, 90), (50, 5, 200)])
def test_balanced_subset_is_dividemix_selection(n, k, total) -> None:
    rng = np.random.default_rng(n)
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)  # every class present
    labels[labels == 1] = 1
    for trial in range(3):
        order = rng.permutation(n)
        ours = _balanced_from_order(torch.as_tensor(labels), total, torch.as_tensor(order))
        ref = dividemix_selection(labels.tolist(), order.tolist(), total, k)
        assert ours.tolist() == ref, trial


def test_balanced_subset_per_epoch() -> None:
    labels = torch.arange(1400) % 14
    a = balanced_subset(labels, 140, seed=0, epoch=0)
    assert a.tolist() == balanced_subset(labels, 140, seed=0, epoch=0).tolist()
    assert a.tolist() != balanced_subset(labels, 140, seed=0, epoch=1).tolist()
    assert a.tolist() != balanced_subset(labels, 140, seed=1, epoch=0).tolist()
    assert torch.bincount(labels[a], minlength=14).tolist() == [10] * 14
    assert a.tolist() == sorted(set(a.tolist()))
    # 64,000 of 14 classes: at most ceil(64000 / 14) = 4572 per class (DivideMix's bound)
    skew = torch.cat([torch.zeros(10000, dtype=torch.long), torch.arange(60000) % 14])
    sub = balanced_subset(skew, 64000, seed=0, epoch=0)
    counts = torch.bincount(skew[sub], minlength=14)
    assert len(sub) == min(64000, int(torch.clamp(torch.bincount(skew), max=4572).sum()))
    assert int(counts.max()) == math.ceil(64000 / 14)


def test_streamed_source_trains_each_epoch_on_the_balanced_subset(c1m) -> None:
    """Clothing1M read with subset_per_epoch=14 (14 classes, 3 noisy samples each): every
    epoch of the streamed source trains on 14 distinct samples, one per class
    (``ceil(14 / 14)``), in ceil(14 / 4) = 4 steps; the subset changes with the epoch, is the
    one ``balanced_subset`` draws from (seed, epoch), and a resumed epoch replays its batches."""
    from noisybench.data.source import EvalLabels, LoaderSpec, StreamedSource

    root, _ = c1m
    data = load_clothing1m(str(root), image_size=16, resize=18, subset_per_epoch=14)
    given = data.given_labels
    assert torch.bincount(given, minlength=14).tolist() == [3] * 14
    labels = EvalLabels(test=data.test_labels, train_clean=given, train_given=given)
    spec = LoaderSpec(batch_size=4, seed=3, views=("weak",), device=torch.device("cpu"))
    source = StreamedSource(data, labels, spec, {"workers": 0})
    assert len(source) == 4
    seen = []
    for epoch in (0, 1):
        batches = list(source.epoch(epoch))
        assert [len(b.idx) for b in batches] == [4, 4, 4, 2]
        idx = torch.cat([b.idx for b in batches])
        assert sorted(idx.tolist()) == sorted(set(idx.tolist()))
        assert sorted(given[idx].tolist()) == list(range(14))
        assert all(torch.equal(b.target, given[b.idx]) for b in batches)
        assert sorted(idx.tolist()) == balanced_subset(given, 14, 3, epoch).tolist()
        resumed = list(source.epoch(epoch, start_step=2))
        assert [b.idx.tolist() for b in resumed] == [b.idx.tolist() for b in batches[2:]]
        for a, b in zip(resumed, batches[2:], strict=True):
            assert torch.equal(a.views["weak"], b.views["weak"])
        seen.append(sorted(idx.tolist()))
    assert seen[0] != seen[1]
    # too small a subset for the batch: one line
    small = load_clothing1m(str(root), image_size=16, resize=18, subset_per_epoch=3)
    with pytest.raises(UserError) as err:
        StreamedSource(small, labels, spec, {"workers": 0})
    assert "set batch_size to at most 3" in one_line(err)


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    "arch",
    ["resnet50", pytest.param("vgg19_bn", marks=pytest.mark.slow)],  # 140M parameters
)
def test_torchvision_models_load_offline_imagenet_weights(tmp_path, arch: str) -> None:
    """A torchvision 1000-class state dict loads strictly into the backbone; the K-way head is
    new; the penultimate features equal torchvision's own network's (same weights)."""
    import torchvision

    from noisybench.models import torchvision_zoo

    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    model = getattr(torchvision_zoo, f"tv_{arch}")(num_classes=7, weights=str(path)).eval()
    assert model.input_stats == "imagenet" and model.head.out_features == 7
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if arch == "resnet50":
            reference.fc = torch.nn.Identity()
        else:
            reference.classifier[-1] = torch.nn.Identity()
        torch.testing.assert_close(model.forward_features(x), reference(x))
        assert model(x).shape == (2, 7)
    plain = getattr(torchvision_zoo, f"tv_{arch}")(num_classes=7)
    assert plain.input_stats == "dataset"
    with pytest.raises(UserError, match="ImageNet weights take RGB images"):
        getattr(torchvision_zoo, f"tv_{arch}")(num_classes=7, in_channels=1, weights=str(path))
    (tmp_path / "bad.pth").write_bytes(b"nope")
    with pytest.raises(UserError):
        getattr(torchvision_zoo, f"tv_{arch}")(num_classes=7, weights=str(tmp_path / "bad.pth"))
