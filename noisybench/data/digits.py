"""scikit-learn's bundled handwritten digits: a tiny dataset for CPU smoke runs.

1,797 grey images of 8x8 pixels with values 0..16 (the UCI "optical recognition of
handwritten digits" test set), ten classes. No download is needed. The images are scaled to
0..255 (``round(v * 255 / 16)``) and split by a fixed, seeded, class-stratified split.
"""

from __future__ import annotations

import numpy as np
import torch

from noisybench.data.base import ImageData
from noisybench.errors import UserError

__all__ = ["load_digits"]

_NUM_SAMPLES = 1797
_NUM_CLASSES = 10


def load_digits(test_size: int = 497, split_seed: int = 0) -> ImageData:
    """Load the digits as uint8 ``(N, 1, 8, 8)`` with a stratified train/test split.

    Args:
        test_size: number of test images (default 497, leaving 1,300 for training).
        split_seed: seed of the stratified split; the same seed always gives the same split.

    Returns:
        :class:`ImageData` whose mean/std are those of the training pixels ([0, 1] units,
        population std).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    test_size = int(test_size)
    if not _NUM_CLASSES <= test_size <= _NUM_SAMPLES - _NUM_CLASSES:
        raise UserError(
            f"digits test_size={test_size} must be between {_NUM_CLASSES} and "
            f"{_NUM_SAMPLES - _NUM_CLASSES} so that both splits hold every class"
        )
    bunch = sk_load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=test_size,
        stratify=labels,
        random_state=int(split_seed),
        shuffle=True,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = images[train_idx].astype(np.float64) / 255.0
    return ImageData(
        name="digits",
        train_images=torch.from_numpy(np.ascontiguousarray(images[train_idx])),
        train_labels=torch.from_numpy(labels[train_idx]),
        test_images=torch.from_numpy(np.ascontiguousarray(images[test_idx])),
        test_labels=torch.from_numpy(labels[test_idx]),
        num_classes=_NUM_CLASSES,
        class_names=[str(d) for d in range(_NUM_CLASSES)],
        mean=(float(train.mean()),),
        std=(float(train.std()),),
    )
