"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["ImageData"]


@dataclass
class ImageData:
    """A labelled image classification dataset held as uint8 tensors (on the CPU).

    The training set is moved to the training device once, as one uint8 tensor; augmentation
    then runs batch-wise on the device (see :mod:`noisybench.data.views`).

    Attributes:
        name: dataset name as in ``conf/dataset``.
        train_images: uint8 ``(N, C, H, W)``.
        train_labels: int64 ``(N,)``, the clean labels (only the engine ever sees them).
        test_images: uint8 ``(M, C, H, W)``.
        test_labels: int64 ``(M,)``.
        num_classes: K.
        class_names: K names, index order.
        mean, std: per-channel normalisation constants in [0, 1] units.
        superclass: int64 ``(K,)`` mapping each class to its coarse class (CIFAR-100), else None.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    superclass: Tensor | None = None
