"""Readers of the five real-noise datasets, from their official on-disk layouts.

Each returns a :class:`noisybench.data.realnoise.common.RealNoiseData` (a streamed
:class:`noisybench.data.folder.FolderData`: the files are decoded in DataLoader workers, only
uint8 crops travel to the device) with its manifest and SHA-256. Layouts and protocols, as the
datasets' documentation and the reference loaders define them (docs/datasets_real_noise.md):

- Clothing1M (Xiao et al. 2015): ``noisy_label_kv.txt`` / ``clean_label_kv.txt``
  (``images/0/00/x.jpg label``), ``noisy_train_key_list.txt``, ``clean_val_key_list.txt``,
  ``clean_test_key_list.txt`` (``clean_train_key_list.txt`` for ``train_list=clean``),
  ``category_names_eng.txt``. Images under ``root/images/`` or directly under ``root``
  (DivideMix/ELR+ strip the ``images/`` prefix); manifest paths never carry the prefix.
- mini-WebVision (Li et al. 2017; Jiang et al. 2018's mini protocol): the first 50 classes of
  ``info/train_filelist_google.txt``, test ``info/val_filelist.txt`` under
  ``val_images_256/``, and the ILSVRC12 validation images of the same 50 classes as a second
  test set (class folders ``0..49`` as in DivideMix, WNID folders, or a flat folder with a
  ``name label`` list), skipped with a warning when absent.
- ANIMAL-10N (Song et al. 2019): ``training/`` and ``testing/``, label in ``<label>_<id>.jpg``.
- Food-101N (Lee et al. 2018): ``meta/classes.txt`` (header ``class_name``),
  ``meta/imagelist.tsv`` (header, keys ``class/hash.jpg``, the folder is the noisy label),
  ``meta/verified_{train,val}.tsv`` (``key<TAB>0|1``: the label is right or wrong), images under
  ``images/``; the test set is Food-101's ``meta/test.txt`` under ``images/`` of Food-101.
- Red Mini-ImageNet (CNWL, Jiang et al. 2020): ``split/{red,blue}_noise_nl_<r>``
  (``name label``) under ``all_images/``, test ``split/clean_validation`` under
  ``all_validation/``; copies made from the URLs miss images, hence ``missing=skip``;
  ``mini-imagenet-annotations.json``, when present, gives the web images' verdicts.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from noisybench.data.realnoise.common import (
    UNKNOWN,
    Entry,
    RealNoiseData,
    Split,
    build_data,
    env_root,
    read_keys,
    read_lines,
    read_pairs,
    require_file,
)
from noisybench.errors import UserError

__all__ = [
    "CLOTHING1M_CLASSES",
    "load_animal10n",
    "load_clothing1m",
    "load_food101n",
    "load_red_mini_imagenet",
    "load_webvision_mini",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# category_names_eng.txt of the release, in label order
CLOTHING1M_CLASSES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)  # DivideMix's and ELR+'s normalisation
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)
# the dataset's documented label order (names only label the classes: the labels come from the
# file names; one later loader, CLIPCleaner's, reports 4 and 5 swapped in the annotation)
ANIMAL10N_CLASSES = (
    "cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan",
    "hamster", "guinea pig",
)  # fmt: skip
RED_NOISE_LEVELS = ("0.0", "0.2", "0.4", "0.6", "0.8")


def _images_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------- Clothing1M
def load_clothing1m(  # noqa: PLR0913
    root: str,
    train_list: str = "noisy",
    missing: str = "refuse",
    duplicates: str = "refuse",
    subset_per_epoch: int = 64000,
    image_size: int = 224,
    resize: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "clothing1m",
) -> RealNoiseData:
    """Clothing1M: noisy training list (or the clean one), clean val (selection), clean test.

    Training samples that also appear in ``clean_label_kv.txt`` keep both labels
    (``clean_mask``; the realised rate and transition matrix on them: ``noise_on_known``).
    """
    base = env_root(root, "Clothing1M")
    hint = "put the Clothing1M annotation files in dataset.reader.root"
    prefix = "images/"
    images = base / "images" if (base / "images").is_dir() else base

    def strip(key: str) -> str:
        return key[len(prefix) :] if key.startswith(prefix) else key

    overwritten: list[str] = []

    def pairs(file: str) -> dict[str, int]:
        raw = read_pairs(
            base / file, "Clothing1M label file", 14, hint, duplicates=duplicates,
            overwritten=overwritten,
        )  # fmt: skip
        out: dict[str, int] = {}
        for key, label in raw.items():
            short = strip(key)
            if out.get(short, label) != label and duplicates == "last":
                overwritten.append(short)
            elif out.get(short, label) != label:
                raise UserError(
                    f"{base / file}: {short} is listed twice (with and without images/), with "
                    f"labels {out[short]} and {label}; remove one of the two lines"
                )
            out[short] = label
        return out

    noisy = pairs("noisy_label_kv.txt")
    clean = pairs("clean_label_kv.txt")
    names_file = base / "category_names_eng.txt"
    classes = list(CLOTHING1M_CLASSES)
    if names_file.is_file():
        listed = [line for _, line in read_lines(names_file, "Clothing1M class names", hint)]
        if len(listed) != 14:
            raise UserError(
                f"{names_file} lists {len(listed)} classes, Clothing1M has 14; restore the "
                "dataset's original file"
            )
        classes = listed

    def keyed(file: str, labels: dict[str, int], what: str) -> list[str]:
        keys = [strip(k) for k in read_keys(base / file, f"Clothing1M {what} list", hint)]
        absent = [k for k in keys if k not in labels]
        if absent:
            source = "noisy_label_kv.txt" if labels is noisy else "clean_label_kv.txt"
            raise UserError(
                f"{base / file}: {len(absent)} keys have no label in {source} (first: "
                f"{absent[0]}); restore the dataset's original files"
            )
        return keys

    if train_list == "noisy":
        keys = keyed("noisy_train_key_list.txt", noisy, "noisy training")
        train = [Entry(k, noisy[k], clean.get(k, UNKNOWN)) for k in keys]
        source = base / "noisy_train_key_list.txt"
    elif train_list == "clean":
        keys = keyed("clean_train_key_list.txt", clean, "clean training")
        train = [Entry(k, clean[k], clean[k]) for k in keys]
        source = base / "clean_train_key_list.txt"
    else:
        raise UserError(f"dataset.reader.train_list={train_list!r} must be 'noisy' or 'clean'")
    val = [Entry(k, clean[k], clean[k]) for k in keyed("clean_val_key_list.txt", clean, "val")]
    test = [Entry(k, clean[k], clean[k]) for k in keyed("clean_test_key_list.txt", clean, "test")]
    return build_data(
        name,
        classes,
        Split("train", images, train, str(source)),
        Split("test", images, test, str(base / "clean_test_key_list.txt")),
        val=Split("val", images, val, str(base / "clean_val_key_list.txt")),
        missing=missing,
        mean=mean or CLOTHING1M_MEAN,
        std=std or CLOTHING1M_STD,
        image_size=image_size,
        resize=resize,
        protocol={
            "subset_per_epoch": int(subset_per_epoch),
            "selection": "clean_val",
            "train_list": train_list,
            "duplicates_overwritten": len(overwritten),
        },
    )


# ----------------------------------------------------------------------------- WebVision
def _imagenet_val(  # noqa: C901
    root: Path, imagenet_root: str | None, imagenet_list: str | None, wnids: list[str], k: int
) -> Split | None:
    """The ILSVRC12 validation images of the first ``k`` classes, in one of three layouts:
    class folders ``0..k-1`` (DivideMix), WNID folders (ImageFolder; index = the WNID's
    position in ``info/synsets.txt``, else in sorted order), or a flat folder with a
    ``name label`` list (``imagenet_list``, or ``imagenet_val.txt`` next to / in the folder).
    None (with a warning) when none is found."""
    if imagenet_root is not None:
        candidates = [Path(str(imagenet_root)).expanduser()]
        if not candidates[0].is_dir():
            raise UserError(
                f"dataset.reader.imagenet_root={imagenet_root} is not a folder; point it at the "
                "ILSVRC12 validation images or set it to null"
            )
    else:
        candidates = [root / "imagenet" / "val", root / "imagenet_val", root / "imagenet"]
    for folder in candidates:
        if not folder.is_dir():
            continue
        lists = [Path(imagenet_list)] if imagenet_list else []
        lists += [folder / "imagenet_val.txt", folder.parent / "imagenet_val.txt"]
        listed = next((p for p in lists if p.is_file()), None)
        if imagenet_list and listed != Path(imagenet_list):
            raise UserError(
                f"dataset.reader.imagenet_list={imagenet_list} does not exist; give the "
                "'name label' list of the ILSVRC12 validation images or set it to null"
            )
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        entries: list[Entry] = []
        if listed is not None:
            labels = read_pairs(listed, "ILSVRC12 validation list", 1000, "", keep=k)
            entries = [Entry(name, label, label) for name, label in labels.items()]
            source = str(listed)
        elif subdirs and all(s.isdigit() for s in subdirs):
            for c in sorted(int(s) for s in subdirs):
                if c < k:
                    names = _images_in(folder / str(c))
                    entries += [Entry(f"{c}/{n}", c, c) for n in names]
            source = f"{folder} (class folders 0..{k - 1})"
        elif subdirs and all(re.fullmatch(r"n\d{8}", s) for s in subdirs):
            order = wnids if wnids else subdirs
            index = {w: i for i, w in enumerate(order)}
            for w in subdirs:
                c = index.get(w)
                if c is not None and c < k:
                    entries += [Entry(f"{w}/{n}", c, c) for n in _images_in(folder / w)]
            entries.sort(key=lambda e: (e.given, e.path))
            source = f"{folder} (WNID folders)"
        else:
            continue
        if entries:
            return Split("imagenet_val", folder, entries, source)
    warnings.warn(
        "webvision_mini: no ILSVRC12 validation images found (looked for "
        f"{', '.join(str(c) for c in candidates)}); the second test set is skipped. Put the "
        "images there or set dataset.reader.imagenet_root",
        stacklevel=2,
    )
    return None


def load_webvision_mini(  # noqa: PLR0913
    root: str,
    num_classes: int = 50,
    imagenet: bool = True,
    imagenet_root: str | None = None,
    imagenet_list: str | None = None,
    missing: str = "refuse",
    duplicates: str = "refuse",
    image_size: int = 227,
    resize: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "webvision_mini",
) -> RealNoiseData:
    """mini-WebVision: the Google images of the first ``num_classes`` (50) classes; test on
    the WebVision validation set of those classes and on ILSVRC12's (``extra_tests``)."""
    base = env_root(root, "WebVision")
    hint = "put WebVision's info/ folder (train_filelist_google.txt, val_filelist.txt) in root"
    k = int(num_classes)
    if not 1 <= k <= 1000:
        raise UserError(f"dataset.reader.num_classes={num_classes} must be in 1..1000")
    overwritten: list[str] = []
    lists = base / "info" / "train_filelist_google.txt", base / "info" / "val_filelist.txt"
    train_pairs, val_pairs = (
        read_pairs(f, "WebVision list", 1000, hint, None, None, k, duplicates, overwritten)
        for f in lists
    )
    synsets = base / "info" / "synsets.txt"
    wnids: list[str] = []
    classes = [str(c) for c in range(k)]
    if synsets.is_file():
        lines = [line for _, line in read_lines(synsets, "WebVision synsets", hint)]
        wnids = [line.split()[0] for line in lines]
        classes = [line.split(maxsplit=1)[-1] for line in lines[:k]]
    extra = []
    if imagenet:
        split = _imagenet_val(base, imagenet_root, imagenet_list, wnids, k)
        if split is not None:
            extra.append(split)
    return build_data(
        name,
        classes,
        Split(
            "train",
            base,
            [Entry(p, y) for p, y in train_pairs.items()],
            str(base / "info" / "train_filelist_google.txt"),
        ),
        Split(
            "test",
            base / "val_images_256",
            [Entry(p, y, y) for p, y in val_pairs.items()],
            str(base / "info" / "val_filelist.txt"),
        ),
        extra_tests=extra,
        missing=missing,
        mean=mean or (0.485, 0.456, 0.406),
        std=std or (0.229, 0.224, 0.225),
        image_size=image_size,
        resize=resize,
        protocol={
            "selection": "last",
            "extra_tests": [s.name for s in extra],
            "topk": [5],  # the field's tables report top-1 and top-5 on both test sets
            "duplicates_overwritten": len(overwritten),
        },
    )


# ----------------------------------------------------------------------------- ANIMAL-10N
def _animal_split(folder: Path, split: str) -> Split:
    if not folder.is_dir():
        raise UserError(
            f"ANIMAL-10N folder {folder} does not exist; put the release's training/ and "
            "testing/ folders in dataset.reader.root"
        )
    entries = []
    for file in _images_in(folder):
        head = file.split("_", 1)[0]
        if "_" not in file or not head.isdigit() or not 0 <= int(head) < 10:
            raise UserError(
                f"{folder / file}: ANIMAL-10N file names are <label>_<id>.jpg with label 0..9; "
                "move the file out of the folder"
            )
        entries.append(Entry(file, int(head)))
    return Split(split, folder, entries, str(folder))


def load_animal10n(
    root: str,
    image_size: int = 64,
    resize: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "animal10n",
) -> RealNoiseData:
    """ANIMAL-10N: 50,000 training and 5,000 test images (64 x 64), label in the file name;
    the training labels are noisy (about 8 %), the test labels clean; no validation split."""
    base = env_root(root, "ANIMAL-10N")
    train = _animal_split(base / "training", "train")
    test = _animal_split(base / "testing", "test")
    test.entries = [Entry(e.path, e.given, e.given) for e in test.entries]
    return build_data(
        name,
        ANIMAL10N_CLASSES,
        train,
        test,
        mean=mean or (0.5, 0.5, 0.5),
        std=std or (0.5, 0.5, 0.5),
        image_size=image_size,
        resize=resize,
        protocol={"selection": "last"},
    )


# ----------------------------------------------------------------------------- Food-101N
def _class_list(path: Path, what: str, hint: str) -> list[str]:
    lines = [line for _, line in read_lines(path, what, hint)]
    if lines and lines[0] == "class_name":
        lines = lines[1:]
    return lines


def load_food101n(  # noqa: C901, PLR0913
    root: str,
    food101_root: str,
    exclude_verified_val: bool = False,
    missing: str = "refuse",
    image_size: int = 224,
    resize: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "food101n",
) -> RealNoiseData:
    """Food-101N: the 310,009 web images of ``meta/imagelist.tsv`` (the class folder is the
    noisy label) with the human verification flags, tested on Food-101's test split.

    A verification line whose key is not in ``imagelist.tsv`` (the release lists one image
    under a second class there) is counted in ``protocol["verified_unmatched"]``, not
    refused: the flag belongs to a (class, image) pair that is not a training sample.

    ``exclude_verified_val=True`` leaves ``verified_val.tsv``'s images out of training, and its
    images verified correct (flag 1) become the clean validation split (``val``, selection
    rule ``clean_val``): their label is known right. Those verified wrong have no known class
    and are left out, so the split leans towards images that look like their class. With
    ``False`` (the papers' training set) they are trained on, and there is no clean val.
    """
    base = env_root(root, "Food-101N_release")
    test_base = env_root(food101_root, "food-101")
    hint = "put the Food-101N release's meta/ folder in dataset.reader.root"
    classes = _class_list(base / "meta" / "classes.txt", "Food-101N class list", hint)
    index = {c: i for i, c in enumerate(classes)}
    listed = base / "meta" / "imagelist.tsv"
    keys: list[str] = []
    seen: set[str] = set()
    for n, line in read_lines(listed, "Food-101N image list", hint):
        if n == 1 and line.startswith("class_name"):
            continue
        cls = line.split("/", 1)[0]
        if "/" not in line or cls not in index:
            raise UserError(
                f"{listed}:{n}: {line[:80]!r} is not <class>/<file> with a class of "
                "meta/classes.txt; fix the line or restore the original file"
            )
        if line not in seen:
            seen.add(line)
            keys.append(line)
    flags: dict[str, int] = {}
    unmatched = 0
    verified_val: dict[str, None] = {}  # in file order
    for file in ("verified_train.tsv", "verified_val.tsv"):
        path = base / "meta" / file
        for key, flag in read_pairs(
            path, "Food-101N verification list", 2, hint, "\t", header="class_name"
        ).items():
            if key not in seen:
                unmatched += 1
                continue
            if flags.get(key, flag) != flag:
                raise UserError(
                    f"{path}: {key} is verified both as 0 and 1 across the verification "
                    "files; restore the dataset's original files"
                )
            flags[key] = flag
            if file == "verified_val.tsv":
                verified_val[key] = None
    if unmatched:
        warnings.warn(
            f"food101n: {unmatched} verification lines name keys that are not in "
            "imagelist.tsv (counted in protocol.verified_unmatched)",
            stacklevel=2,
        )
    val = None
    if exclude_verified_val:
        keys = [k for k in keys if k not in verified_val]
        # Held out of training, the verified-val images whose label was verified correct are
        # a clean validation split (the clean_val selection rule's); those verified wrong
        # have no known class and are left out.
        right = [k for k in verified_val if flags[k] == 1]
        if right:
            val = Split(
                "val",
                base / "images",
                [Entry(k, index[k.split("/")[0]], index[k.split("/")[0]], 1) for k in right],
                str(base / "meta" / "verified_val.tsv"),
            )
    hashes: dict[str, str] = {}
    two_classes = 0
    for key in keys:
        cls, file = key.split("/", 1)
        if hashes.setdefault(file, cls) != cls:
            two_classes += 1
    train = [Entry(k, index[k.split("/", 1)[0]], UNKNOWN, flags.get(k, UNKNOWN)) for k in keys]
    test_classes = _class_list(test_base / "meta" / "classes.txt", "Food-101 class list", "")
    if sorted(test_classes) != sorted(classes):
        raise UserError(
            f"{test_base / 'meta' / 'classes.txt'} and {base / 'meta' / 'classes.txt'} list "
            "different classes; point dataset.reader.food101_root at Food-101 (food-101/)"
        )
    test_list = test_base / "meta" / "test.txt"
    test: list[Entry] = []
    for n, line in read_lines(test_list, "Food-101 test list", "put Food-101 in food101_root"):
        cls = line.split("/", 1)[0]
        if cls not in index:
            raise UserError(f"{test_list}:{n}: class {cls!r} is not in meta/classes.txt")
        rel = line if line.lower().endswith(IMAGE_SUFFIXES) else f"{line}.jpg"
        test.append(Entry(rel, index[cls], index[cls]))
    n_verified = sum(1 for e in train if e.verified != UNKNOWN)
    wrong = sum(1 for e in train if e.verified == 0)
    data = build_data(
        name,
        classes,
        Split("train", base / "images", train, str(listed)),
        Split("test", test_base / "images", test, str(test_list)),
        val=val,
        missing=missing,
        mean=mean or (0.485, 0.456, 0.406),
        std=std or (0.229, 0.224, 0.225),
        image_size=image_size,
        resize=resize,
        protocol={
            "selection": "last" if val is None else "clean_val",
            "verified": n_verified,
            "verified_wrong_rate": wrong / n_verified if n_verified else None,
            "verified_unmatched": unmatched,
            "files_in_two_classes": two_classes,
            "exclude_verified_val": bool(exclude_verified_val),
        },
    )
    return data


# ----------------------------------------------------------------------------- Red Mini-ImageNet
def _cnwl_flags(path: Path, names: list[str]) -> tuple[dict[str, int], int]:
    """Verification flags of CNWL's ``mini-imagenet-annotations.json`` when present:
    ``{"data": [[{"image/id": ..., "image/class/label/is_clean": 0|1, ...}], ...]}`` lists the
    web images with their human verdict; a training image not in it is an original
    Mini-ImageNet image, whose label is right (1). Returns ``({name: flag}, web images)``;
    no file: no flags."""
    import json

    if not path.is_file():
        return {}, 0
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["data"]
        verdict = {str(r[0]["image/id"]): int(r[0]["image/class/label/is_clean"]) for r in rows}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise UserError(
            f"cannot read {path} ({type(err).__name__}: {err}); restore CNWL's original file "
            "or remove it (the verification flags are then left out)"
        ) from err
    flags = {}
    web = 0
    for name in names:
        stem = name.rsplit(".", 1)[0]
        if stem in verdict:
            web += 1
            flags[name] = 1 if verdict[stem] else 0
        else:
            flags[name] = 1
    return flags, web


def load_red_mini_imagenet(  # noqa: PLR0913
    root: str,
    noise_rate: str | float = "0.4",
    color: str = "red",
    missing: str = "refuse",
    duplicates: str = "refuse",
    image_size: int = 32,
    resize: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "red_mini_imagenet",
) -> RealNoiseData:
    """Red (web) or blue (synthetic) Mini-ImageNet of CNWL at one noise level.

    Blue splits' clean labels come from ``blue_noise_nl_0.0`` (same images); red noise has none
    (its noisy images are web images of another class set, with no clean label).
    """
    base = env_root(root, "mini-imagenet (CNWL)")
    rate = f"{float(noise_rate):.1f}"
    if rate not in RED_NOISE_LEVELS:
        raise UserError(
            f"dataset.reader.noise_rate={noise_rate} is not a CNWL level; use one of "
            f"{list(RED_NOISE_LEVELS)}"
        )
    if color not in ("red", "blue"):
        raise UserError(f"dataset.reader.color={color!r} must be 'red' or 'blue'")
    hint = "put CNWL's split/ folder in dataset.reader.root"
    split_file = base / "split" / f"{color}_noise_nl_{rate}"
    require_file(split_file, "CNWL split file", hint)
    overwritten: list[str] = []
    pairs = read_pairs(split_file, "CNWL split file", 100, hint, None, None, None, duplicates,
                       overwritten)  # fmt: skip
    clean: dict[str, int] = {}
    if color == "blue":
        clean = read_pairs(base / "split" / "blue_noise_nl_0.0", "CNWL split file", 100, hint)
    flags, annotated = _cnwl_flags(base / "mini-imagenet-annotations.json", list(pairs))
    train = [Entry(p, y, clean.get(p, UNKNOWN), flags.get(p, UNKNOWN)) for p, y in pairs.items()]
    verified = [f for f in flags.values() if f != UNKNOWN]
    val_file = base / "split" / "clean_validation"
    test_pairs = read_pairs(val_file, "CNWL split file", 100, hint)
    return build_data(
        name,
        [str(c) for c in range(100)],
        Split("train", base / "all_images", train, str(split_file)),
        Split(
            "test",
            base / "all_validation",
            [Entry(p, y, y) for p, y in test_pairs.items()],
            str(val_file),
        ),
        missing=missing,
        mean=mean or (0.485, 0.456, 0.406),
        std=std or (0.229, 0.224, 0.225),
        image_size=image_size,
        resize=resize,
        protocol={
            "selection": "last",
            "noise_rate": rate,
            "color": color,
            "web_images_annotated": annotated,
            "verified_wrong_rate": (verified.count(0) / len(verified)) if verified else None,
            "duplicates_overwritten": len(overwritten),
        },
    )
