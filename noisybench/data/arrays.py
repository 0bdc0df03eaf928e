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
) -> ImageData:
    """Read the ``.npz`` file at ``path`` (see the module docstring).

    Args:
        num_classes: K (default: 1 + the largest label in either split).
        labels: ``"clean"``: ``train_labels`` are clean (synthetic noise, or real noisy
            labels from ``noisy_labels``); ``"noisy"``: ``train_labels`` are the given noisy
            labels, ``clean_labels`` the clean ones when known.
        noisy_labels / clean_labels: label files (``.npy`` or one integer per line).
        mean, std: per-channel normalisation in [0, 1] units (default: training pixels').
    """
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"dataset.reader.path={path} is not a file; give an .npz with {_KEYS}")
    if labels not in ("clean", "noisy"):
        raise UserError(f"dataset.reader.labels={labels!r} must be 'clean' or 'noisy'")
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
    train_y = _labels(arrays["train_labels"], "train_labels", train.shape[0], file)
    test_y = _labels(arrays["test_labels"], "test_labels", test.shape[0], file)
    top = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
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
        pixels = train.astype(np.float64) / 255.0
        mean_v = pixels.mean(axis=(0, 2, 3))
        std_v = pixels.std(axis=(0, 2, 3))
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
