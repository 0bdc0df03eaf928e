"""Tiny ImageNet (200 classes, 64x64 RGB; cs231n) from the extracted official archive.

Layout under ``root/tiny-imagenet-200/``: ``wnids.txt`` (the 200 class ids), ``words.txt``
(id -> English names), ``train/<wnid>/images/*.JPEG`` (500 per class) and
``val/images/*.JPEG`` with labels in ``val/val_annotations.txt``. The official test split has
no labels, so, as usual, the validation split serves as the test set.

Classes are numbered in sorted wnid order (the order an ``ImageFolder`` over ``train/`` gives);
training images are ordered by class, then file name; test images follow
``val_annotations.txt``. Grey-scale JPEGs are converted to RGB. Decoding 110,000 JPEGs takes
a while, so the decoded arrays are cached in ``noisybench-cache.npz`` next to the data
(written atomically); later loads read only that file. Delete it after changing the data.
Mean and std are computed from the training images (and cached with them).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from noisybench.data.base import ImageData, download_archive
from noisybench.errors import UserError
from noisybench.io import atomic_write

__all__ = ["load_tinyimagenet"]

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
CACHE = "noisybench-cache.npz"
_CACHE_VERSION = 1
_SIZE = 64


def _missing_error(directory: Path, missing: list[str]) -> UserError:
    return UserError(
        f"Tiny ImageNet not found: {directory} lacks {', '.join(missing)} (expected wnids.txt, "
        "words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt); "
        f"set dataset.reader.download=true, or extract {ARCHIVE} ({URL}) into {directory.parent}"
    )


def _download(root: Path) -> None:
    download_archive(
        URL,
        root,
        ARCHIVE,
        ARCHIVE_MD5,
        "Tiny ImageNet",
        f"{root / FOLDER} holds wnids.txt, train/ and val/",
    )


def _read_lines(path: Path) -> list[str]:
    return [line.rstrip("\r\n") for line in path.read_text().splitlines() if line.strip()]


def _class_names(directory: Path, wnids: list[str]) -> list[str]:
    words = directory / "words.txt"
    table: dict[str, str] = {}
    if words.is_file():
        for line in _read_lines(words):
            wnid, _, name = line.partition("\t")
            table[wnid.strip()] = name.strip()
    return [table.get(w, w) for w in wnids]


_Listing = tuple[list[Path], list[int], list[Path], list[int]]


def _listing(directory: Path, wnids: list[str]) -> _Listing:
    index = {w: k for k, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for k, wnid in enumerate(wnids):
        folder = directory / "train" / wnid / "images"
        if not folder.is_dir():
            raise _missing_error(directory, [f"train/{wnid}/images"])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        if not files:
            raise _missing_error(directory, [f"train/{wnid}/images/*.JPEG"])
        train_files += files
        train_labels += [k] * len(files)
    test_files: list[Path] = []
    test_labels: list[int] = []
    annotations = directory / "val" / "val_annotations.txt"
    for number, line in enumerate(_read_lines(annotations), start=1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(
                f"{annotations} line {number} is {line!r}, expected '<file>\\t<wnid>...' with a "
                "wnid from wnids.txt; re-extract the archive"
            )
        path = directory / "val" / "images" / parts[0]
        if not path.is_file():
            raise _missing_error(directory, [f"val/images/{parts[0]}"])
        test_files.append(path)
        test_labels.append(index[parts[1]])
    return train_files, train_labels, test_files, test_labels


def _decode(paths: list[Path], workers: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(paths), 3, _SIZE, _SIZE), dtype=np.uint8)

    def one(i: int) -> None:
        path = paths[i]
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(
                f"{path} is not a readable image ({err}); re-extract the archive"
            ) from err
        if arr.shape != (_SIZE, _SIZE, 3):
            raise UserError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]}, expected {_SIZE}x{_SIZE}; "
                "re-extract the archive"
            )
        out[i] = arr.transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std over all pixels, in [0, 1] units."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean * mean, 0.0))


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``path`` atomically: a temporary file in the same directory, then a rename."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_cache(path: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError):
        return None
    ok = (
        int(arrays.get("version", np.array(-1))) == _CACHE_VERSION
        and arrays.get("wnids") is not None
        and arrays["wnids"].tolist() == wnids
    )
    return arrays if ok else None


def load_tinyimagenet(
    root: str,
    download: bool = False,
    cache: bool = True,
    workers: int | None = None,
) -> ImageData:
    """Load Tiny ImageNet as :class:`ImageData` (100,000 train / 10,000 test, uint8 (N,3,64,64)).

    Args:
        root: directory holding ``tiny-imagenet-200/`` (``data_dir`` in the config).
        download: fetch and extract the official archive into ``root`` if it is missing.
        cache: read/write the decoded arrays in ``tiny-imagenet-200/noisybench-cache.npz``.
        workers: threads decoding JPEGs (default: the number of CPUs).
    """
    root_path = Path(root).expanduser()
    directory = root_path / FOLDER
    required = ["wnids.txt", "train", "val/images", "val/val_annotations.txt"]

    def missing_files() -> list[str]:
        return [name for name in required if not (directory / name).exists()]

    missing = missing_files()
    if missing and download:
        _download(root_path)
        missing = missing_files()
    if missing:
        raise _missing_error(directory, missing)

    wnids = sorted(_read_lines(directory / "wnids.txt"))
    if len(set(wnids)) != len(wnids) or not wnids:
        raise UserError(f"{directory / 'wnids.txt'} is empty or repeats a wnid; re-extract it")
    cache_path = directory / CACHE
    arrays = _read_cache(cache_path, wnids) if cache and cache_path.is_file() else None
    if arrays is None:
        train_files, train_labels, test_files, test_labels = _listing(directory, wnids)
        n_workers = workers or os.cpu_count() or 1
        train_images = _decode(train_files, n_workers)
        mean, std = _channel_stats(train_images)
        arrays = {
            "version": np.array(_CACHE_VERSION),
            "wnids": np.array(wnids),
            "train_images": train_images,
            "train_labels": np.array(train_labels, dtype=np.int64),
            "test_images": _decode(test_files, n_workers),
            "test_labels": np.array(test_labels, dtype=np.int64),
            "mean": mean,
            "std": std,
        }
        if cache:
            try:
                _write_cache(cache_path, arrays)
            except OSError as err:
                warnings.warn(
                    f"could not write the Tiny ImageNet cache {cache_path} ({err}); the next "
                    "load will decode the JPEGs again",
                    stacklevel=2,
                )
    return ImageData(
        name="tinyimagenet",
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"]),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"]),
        num_classes=len(wnids),
        class_names=_class_names(directory, wnids),
        mean=tuple(float(m) for m in arrays["mean"]),
        std=tuple(float(s) for s in arrays["std"]),
    )
