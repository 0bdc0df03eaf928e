"""Given label files for real-noise datasets: one integer label per training sample, in the
reader's stable sample order (``.npy`` of integers, or text with one integer per line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from noisybench.errors import UserError

__all__ = ["read_label_file"]


def check_labels(
    values: object, what: str, fix: str, num_classes: int | None = None, count: int | None = None
) -> np.ndarray:
    """The one check of a label vector (clean labels, a saved or given noisy-label file, the
    CIFAR-N sets, an arrays file): 1-D integers, ``count`` of them (when given) in
    ``[0, num_classes)`` (``[0, K)`` with ``num_classes`` None: not negative); an int64 copy.

    Raises:
        UserError: one line naming ``what`` and ending with ``fix`` (what to do).
    """
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise UserError(
            f"{what} is a {arr.dtype} array of shape {arr.shape}, not 1-D integer labels (labels "
            f"must be integers: class indices, not one-hot or float); {fix}"
        )
    if count is not None and arr.shape[0] != count:
        raise UserError(f"{what} has {arr.shape[0]} labels for {count} images; {fix}")
    top = num_classes if num_classes is not None else None
    if arr.size and (arr.min() < 0 or (top is not None and arr.max() >= top)):
        bound = f"[0, {top})" if top is not None else "[0, K)"
        raise UserError(
            f"{what} has labels in [{arr.min()}, {arr.max()}], outside {bound}: labels must lie "
            f"in {bound}; {fix}"
        )
    return arr.astype(np.int64)  # a copy: the caller's array is never touched


def read_label_file(path: str | Path, num_samples: int, num_classes: int, what: str) -> Tensor:
    """Read ``num_samples`` integer labels in ``[0, num_classes)`` from ``path`` as int64.

    ``what`` names the option in error messages (e.g. ``dataset.reader.noisy_labels``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what}: no file {path}; give a .npy or one-label-per-line .txt file")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as err:
        raise UserError(
            f"{what}: {path} is not a readable label file ({type(err).__name__}); write one "
            "integer per line or a .npy integer array"
        ) from err
    fix = (
        "give one label per sample in the reader's order (sorted classes, sorted files), "
        "with the reader's class indices (sorted class names)"
    )
    labels = check_labels(values, f"{what}: {path}", fix, num_classes, num_samples)
    return torch.from_numpy(labels)
