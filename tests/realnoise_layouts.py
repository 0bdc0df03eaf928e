"""Small trees in the exact on-disk layouts of the five real-noise datasets, written by the
tests (tiny random JPEG files), with the numbers each tree was built from so that the tests
check the readers against the lists, not against the readers' own output."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def jpeg(path: Path, seed: int, side: tuple[int, int] = (24, 48)) -> None:
    """A random-pixel JPEG of random size within ``side``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(side[0], side[1] + 1, size=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=80)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# ----------------------------------------------------------------------------- Clothing1M
def clothing1m(root: Path, images_dir: bool = True, per_class: int = 3) -> dict:
    """14 classes x ``per_class`` noisy training images; image j=0 of each class is
    mislabelled (class c+1); images j<2 also carry a clean label (so 28 have both); one clean
    val and one clean test image per class; two clean-train images per class."""
    base = root / "images" if images_dir else root
    noisy_kv, clean_kv, noisy_train, clean_train, val, test = [], [], [], [], [], []
    expect_train = []  # (key without images/, given, clean or -1)
    seed = 0
    for c in range(14):
        for j in range(per_class):
            rel = f"{c}/{j:02d}/n{c}_{j}.jpg"
            given = (c + 1) % 14 if j == 0 else c
            noisy_kv.append(f"images/{rel} {given}")
            noisy_train.append(f"images/{rel}")
            clean = c if j < 2 else -1
            if clean >= 0:
                clean_kv.append(f"images/{rel} {clean}")
            expect_train.append((rel, given, clean))
            jpeg(base / rel, seed := seed + 1)
        for split, store in (("v", val), ("t", test), ("ct", clean_train)):
            for j in range(2 if split == "ct" else 1):
                rel = f"{c}/{split}/{split}{c}_{j}.jpg"
                clean_kv.append(f"images/{rel} {c}")
                store.append(f"images/{rel}")
                jpeg(base / rel, seed := seed + 1)
    write_lines(root / "noisy_label_kv.txt", noisy_kv)
    write_lines(root / "clean_label_kv.txt", clean_kv)
    write_lines(root / "noisy_train_key_list.txt", noisy_train)
    write_lines(root / "clean_train_key_list.txt", clean_train)
    write_lines(root / "clean_val_key_list.txt", val)
    write_lines(root / "clean_test_key_list.txt", test)
    names = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
             "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]  # fmt: skip
    write_lines(root / "category_names_eng.txt", names)
    return {"train": expect_train, "val": len(val), "test": len(test), "names": names}


# ----------------------------------------------------------------------------- WebVision
WNIDS = [f"n{1440764 + 7 * c:08d}" for c in range(60)]


def webvision(root: Path, imagenet: str | None = "numeric", classes: int = 52) -> dict:
    """Google images of ``classes`` classes (2 each; classes >= 50 must be dropped) plus a
    flickr list that mini-WebVision ignores; WebVision val 1 per class under val_images_256/;
    ILSVRC12 val of 52 classes (1 each) in the layout ``imagenet``: ``numeric``
    (root/imagenet/val/<c>/), ``wnid`` (root/imagenet_val/<WNID>/), ``list`` (flat
    root/imagenet/ + imagenet_val.txt), ``elr`` or None (absent)."""
    train, val, flickr = [], [], []
    seed = 1000
    for c in range(classes):
        for j in range(2):
            rel = f"google/q{c:04d}/{j:06d}.jpg"
            train.append(f"{rel} {c}")
            jpeg(root / rel, seed := seed + 1)
        flickr.append(f"flickr/q{c:04d}/000000.jpg {c}")
        val.append(f"val{c:06d}.jpg {c}")
        jpeg(root / "val_images_256" / f"val{c:06d}.jpg", seed := seed + 1)
    write_lines(root / "info" / "train_filelist_google.txt", train)
    write_lines(root / "info" / "train_filelist_flickr.txt", flickr)
    write_lines(root / "info" / "val_filelist.txt", val)
    write_lines(root / "info" / "synsets.txt", [f"{w} class {c}" for c, w in enumerate(WNIDS)])
    if imagenet == "numeric":
        for c in range(classes):
            jpeg(root / "imagenet" / "val" / str(c) / f"ILSVRC2012_val_{c:08d}.JPEG", c)
    elif imagenet == "wnid":
        for c in range(classes):
            jpeg(root / "imagenet_val" / WNIDS[c] / f"ILSVRC2012_val_{c:08d}.JPEG", c)
    elif imagenet in ("list", "elr"):
        # list: flat root/imagenet/ holding the list; elr (ELR+'s loader): the list in
        # root/imagenet/, the images flat in root/imagenet/val/
        folder = root / "imagenet" / ("val" if imagenet == "elr" else "")
        lines = []
        for c in range(classes):
            name = f"ILSVRC2012_val_{c:08d}.JPEG"
            jpeg(folder / name, c)
            lines.append(f"{name} {c}")
        write_lines(root / "imagenet" / "imagenet_val.txt", lines)
    return {"train": min(classes, 50) * 2, "test": min(classes, 50), "imagenet": min(classes, 50)}


# ----------------------------------------------------------------------------- ANIMAL-10N
def animal10n(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> dict:
    """training/<label>_<id>.jpg and testing/<label>_<id>.jpg, 64 x 64."""
    labels = {"train": [], "test": []}
    seed = 2000
    for split, folder, per in (("train", "training", train_per_class),
                               ("test", "testing", test_per_class)):  # fmt: skip
        n = 0
        for c in range(10):
            for _ in range(per):
                jpeg(root / folder / f"{c}_{n:05d}.jpg", seed := seed + 1, (64, 64))
                labels[split].append(c)
                n += 1
    return labels


# ----------------------------------------------------------------------------- Food-101N
FOOD = ["apple_pie", "baby_back_ribs", "filet_mignon", "hot_and_sour_soup", "waffles"]


def food101n(root: Path, food101: Path, per_class: int = 3) -> dict:
    """Food-101N_release/ (meta/ with headers, images/) and food-101/ (meta/classes.txt
    without a header, meta/test.txt without extensions, images/). One hash file sits in two
    class folders; verified_train.tsv also verifies that hash under a third class (a key that is
    not in imagelist.tsv, as in the release); verified_val.tsv verifies two images."""
    keys = []
    seed = 3000
    for c, name in enumerate(FOOD):
        for j in range(per_class):
            keys.append(f"{name}/{c:02d}{j:02d}aa.jpg")
    keys.append("waffles/shared0hash.jpg")
    keys.append("filet_mignon/shared0hash.jpg")
    for key in keys:
        jpeg(root / "images" / key, seed := seed + 1)
    write_lines(root / "meta" / "classes.txt", ["class_name", *FOOD])
    write_lines(root / "meta" / "imagelist.tsv", ["class_name/key", *keys])
    verified_train = ["class_name/key\tverification_label", f"{keys[0]}\t1", f"{keys[1]}\t0",
                      f"{keys[4]}\t1", "hot_and_sour_soup/shared0hash.jpg\t1"]  # fmt: skip
    verified_val = ["class_name/key\tverification_label", f"{keys[7]}\t0", f"{keys[8]}\t1"]
    write_lines(root / "meta" / "verified_train.tsv", verified_train)
    write_lines(root / "meta" / "verified_val.tsv", verified_val)
    test = []
    for c, name in enumerate(FOOD):
        for j in range(2):
            test.append(f"{name}/{100 + 10 * c + j}")
            jpeg(food101 / "images" / f"{name}/{100 + 10 * c + j}.jpg", seed := seed + 1)
    write_lines(food101 / "meta" / "classes.txt", FOOD)
    write_lines(food101 / "meta" / "test.txt", test)
    flags = {keys[0]: 1, keys[1]: 0, keys[4]: 1, keys[7]: 0, keys[8]: 1}
    return {"keys": keys, "flags": flags, "test": test, "verified_val": {keys[7], keys[8]}}


# ----------------------------------------------------------------------------- Red Mini-ImageNet
def red_mini_imagenet(root: Path, classes: int = 5, per_class: int = 3) -> dict:
    """split/{red,blue}_noise_nl_{0.0..0.8} over all_images/, split/clean_validation over
    all_validation/ (labels in 0..99; only ``classes`` of them used)."""
    seed = 4000
    names = []
    for c in range(classes):
        for j in range(per_class):
            names.append((f"n{c:02d}_{j}.jpg", c))
            jpeg(root / "all_images" / f"n{c:02d}_{j}.jpg", seed := seed + 1)
    splits = {}
    for rate in ("0.0", "0.2", "0.4", "0.6", "0.8"):
        flips = int(float(rate) * len(names))
        rows = [(n, (c + 1) % classes if i < flips else c) for i, (n, c) in enumerate(names)]
        splits[rate] = rows
        write_lines(root / "split" / f"red_noise_nl_{rate}", [f"{n} {y}" for n, y in rows])
        write_lines(root / "split" / f"blue_noise_nl_{rate}", [f"{n} {y}" for n, y in rows])
    val = []
    for c in range(classes):
        jpeg(root / "all_validation" / f"v{c:02d}.jpg", seed := seed + 1)
        val.append(f"v{c:02d}.jpg {c}")
    write_lines(root / "split" / "clean_validation", val)
    return {"splits": splits, "clean": dict(names), "test": len(val)}
