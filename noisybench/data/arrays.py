"""A generic in-memory dataset from one ``.npz`` file (any user's small image dataset).

The file holds ``train_images`` and ``test_images`` as uint8 ``(N, H, W)`` (grey) or
``(N, H, W, C)`` (channels last, C = 1 or 3), and int ``train_labels`` (N,) and
``test_labels`` (M,) with classes ``0 .. K-1``. The images are converted to the
``(N, C, H, W)`` layout of :class:`noisybench.data.base.ImageData` and, like CIFAR, moved to
the training device once (``DeviceLoader``). Sample ``i`` is row ``i`` of ``train_images``.
Mean and std are computed from the training pixels unless given.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from noisybench.data.base import ImageData
from noisybench.data.labels_file import check_labels, read_label_file
from noisybench.errors import UserError

__all__ = ["load_arrays"]

_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


MIN_SIDE = 2
"""Smallest image side accepted (a 1x1 or 0x0 image has nothing to crop or pool)."""
MAX_INFERRED_CLASSES = 1000
"""Above this many classes inferred from the labels (no ``num_classes``), the labels must
use at least half of the classes: one stray label of 99,999 made K = 100,000 and a 74.5 GiB
allocation (issue 20, item 10)."""


def channel_stats(images: np.ndarray, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, in [0, 1] units, of uint8 ``(N, C, H, W)``
    images, from exact integer sums over chunks of about ``chunk`` values: memory stays at
    one chunk's int64 copy (32 MiB) instead of 8 bytes per pixel of the whole set (8.7x the
    images' size before). ``var = E[x^2] - E[x]^2`` with the sums as exact int64 (no rounding)."""
    n, c = images.shape[0], images.shape[1]
    count = n * images.shape[2] * images.shape[3]
    total = np.zeros(c, dtype=np.int64)
    squares = np.zeros(c, dtype=np.int64)
    rows = max(1, chunk // max(1, c * images.shape[2] * images.shape[3]))
    for start in range(0, n, rows):
        part = images[start : start + rows].astype(np.int64)
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0


def _images(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: {key} is {arr.dtype}; store the images as uint8 (0..255)")
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3):
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    raise UserError(
        f"{path}: {key} has shape {arr.shape}; use (N, H, W) or (N, H, W, C) with C = 1 or 3"
    )


def _labels(arr: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    fix = "give one label per image, classes 0 .. K-1"
    return check_labels(arr, f"{path}: {key}", fix, None, n)


def load_arrays(  # noqa: C901, PLR0913
    path: str,
    name: str = "arrays",
    num_classes: int | None = None,
    labels: str = "clean",
    noisy_labels: str | None = None,
    clean_labels: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    fingerprint: str | None = None,
) -> ImageData:
    """Read the ``.npz`` file at ``path`` (see the module docstring).

    Args:
        num_classes: K (default: 1 + the largest label in either split).
        labels: ``"clean"``: ``train_labels`` are clean (synthetic noise, or real noisy
            labels from ``noisy_labels``); ``"noisy"``: ``train_labels`` are the given noisy
            labels, ``clean_labels`` the clean ones when known.
        noisy_labels / clean_labels: label files (``.npy`` or one integer per line).
        mean, std: per-channel normalisation in [0, 1] units (default: training pixels').
        fingerprint: the digest of the data the run was trained on
            (:mod:`noisybench.data.fingerprint`); other data is refused. None: not checked.
    """
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"dataset.reader.path={path} is not a file; give an .npz with {_KEYS}")
    if labels not in ("clean", "noisy"):
        raise UserError(f"dataset.reader.labels={labels!r} must be 'clean' or 'noisy'")
    if fingerprint is not None:
        from noisybench.data.fingerprint import data_fingerprint, refuse_other_data

        now = data_fingerprint(
            {
                "_target_": "noisybench.data.arrays.load_arrays",
                "path": path,
                "noisy_labels": noisy_labels,
                "clean_labels": clean_labels,
            }
        )
        refuse_other_data(fingerprint, now, f"dataset.reader.path={path}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [k for k in _KEYS if k not in npz.files]
            arrays = {k: npz[k] for k in _KEYS if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{file} is not a readable .npz file ({type(err).__name__}); write it with "
            "numpy.savez(path, train_images=..., train_labels=..., test_images=..., "
            "test_labels=...)"
        ) from err
    if missing:
        raise UserError(f"{file} lacks {missing}; the .npz must hold {', '.join(_KEYS)}")
    train = _images(arrays["train_images"], "train_images", file)
    test = _images(arrays["test_images"], "test_images", file)
    if train.shape[1:] != test.shape[1:]:
        raise UserError(
            f"{file}: train images {train.shape[1:]} and test images {test.shape[1:]} differ "
            "in (C, H, W); store both splits at the same size"
        )
    if train.shape[0] == 0:
        raise UserError(f"{file}: train_images is empty; store at least one training image")
    if test.shape[0] == 0:
        raise UserError(
            f"{file}: test_images is empty; store at least one test image (every epoch is "
            "evaluated on the test split)"
        )
    if min(train.shape[2:]) < MIN_SIDE:
        raise UserError(
            f"{file}: images are {train.shape[2]}x{train.shape[3]} pixels; the models need at "
            f"least {MIN_SIDE}x{MIN_SIDE} (upsample them before saving)"
        )
    train_y = _labels(arrays["train_labels"], "train_labels", train.shape[0], file)
    test_y = _labels(arrays["test_labels"], "test_labels", test.shape[0], file)
    top = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    if num_classes is None and top > max(MAX_INFERRED_CLASSES, 1):
        n_used = len(np.union1d(train_y, test_y))
        if top > 2 * n_used:  # a stray label: most classes between 0 and the top are empty
            split = "train_labels" if int(train_y.max(initial=0)) + 1 == top else "test_labels"
            raise UserError(
                f"{file}: the largest label in {split} is {top - 1} but only {n_used} "
                f"distinct labels occur, so K would be {top}; fix the stray label, or set "
                f"dataset.reader.num_classes={top} if the classes really go up to {top - 1}"
            )
    k = top if num_classes is None else int(num_classes)
    if k < top:
        raise UserError(
            f"{file}: labels go up to {top - 1} but num_classes={k}; raise num_classes or fix "
            "the labels"
        )
    folder = torch.from_numpy(train_y)
    given = None
    clean_known = True
    if labels == "clean":
        clean = folder
        if clean_labels is not None:
            raise UserError(
                "dataset.reader.clean_labels is only for labels=noisy (train_labels are the "
                "clean labels here); drop it"
            )
        if noisy_labels is not None:
            given = read_label_file(noisy_labels, len(folder), k, "dataset.reader.noisy_labels")
    else:
        if noisy_labels is not None:
            raise UserError(
                "dataset.reader.noisy_labels is only for labels=clean (train_labels are the "
                "noisy labels here); drop it"
            )
        given = folder
        if clean_labels is not None:
            clean = read_label_file(clean_labels, len(folder), k, "dataset.reader.clean_labels")
        else:
            clean, clean_known = folder.clone(), False
    if mean is None or std is None:
        mean_v, std_v = channel_stats(train)
        mean = mean if mean is not None else tuple(float(v) for v in mean_v)
        std = std if std is not None else tuple(float(max(v, 1e-6)) for v in std_v)
    channels = train.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"dataset mean/std need {channels} values, one per channel")
    return ImageData(
        name=name,
        train_images=torch.from_numpy(train),
        train_labels=clean,
        test_images=torch.from_numpy(test),
        test_labels=torch.from_numpy(test_y),
        num_classes=k,
        class_names=[str(i) for i in range(k)],
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        given_labels=given,
        clean_known=clean_known,
    )
