"""Given label files for real-noise datasets: one integer label per training sample, in the
reader's stable sample order (``.npy`` of integers, or text with one integer per line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from noisybench.errors import UserError

__all__ = ["read_label_file"]


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
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise UserError(
            f"{what}: {path} holds a {values.dtype} array of shape {values.shape}; it must be "
            "a 1-D integer array"
        )
    if values.shape[0] != num_samples:
        raise UserError(
            f"{what}: {path} has {values.shape[0]} labels for {num_samples} training samples; "
            "give one label per sample in the reader's order (sorted classes, sorted files)"
        )
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise UserError(
            f"{what}: {path} has labels in [{values.min()}, {values.max()}] outside "
            f"[0, {num_classes}); use the reader's class indices (sorted class names)"
        )
    return torch.from_numpy(values.astype(np.int64))
