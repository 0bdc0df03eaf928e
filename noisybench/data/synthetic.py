"""Synthetic CIFAR-shaped data for benchmarks and smoke runs that must not download anything.

The images are uint8 noise drawn from a seeded generator and the labels are drawn uniformly;
there is nothing to learn, so accuracies are meaningless. What matters is that the shapes, the
dtype, the sizes and therefore the cost of every step and evaluation are those of the real
dataset (CIFAR-10 by default: 50,000 + 10,000 images of 3 x 32 x 32, 10 classes).
"""

from __future__ import annotations

import torch

from noisybench.data.base import ImageData
from noisybench.errors import UserError

__all__ = ["load_synthetic"]


def load_synthetic(
    num_train: int = 50_000,
    num_test: int = 10_000,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
) -> ImageData:
    """Random uint8 images ``(N, channels, size, size)`` with uniform random labels.

    Raises:
        UserError: a size that is not a positive integer, or fewer than 2 classes.
    """
    values = {
        "num_train": num_train,
        "num_test": num_test,
        "channels": channels,
        "size": size,
    }
    for key, value in values.items():
        if int(value) < 1:
            raise UserError(f"dataset.reader.{key}={value} must be a positive integer")
    if int(num_classes) < 2:
        raise UserError(f"dataset.reader.num_classes={num_classes} must be at least 2")
    gen = torch.Generator().manual_seed(int(seed))
    k, c, s = int(num_classes), int(channels), int(size)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (int(n), c, s, s), generator=gen, dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, k, (int(n),), generator=gen, dtype=torch.int64)

    return ImageData(
        name="synthetic",
        train_images=images(num_train),
        train_labels=labels(num_train),
        test_images=images(num_test),
        test_labels=labels(num_test),
        num_classes=k,
        class_names=[f"class{i}" for i in range(k)],
        mean=(0.5,) * c,
        std=(0.29,) * c,
    )
