"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from noisybench.errors import UserError

__all__ = ["ImageData", "download_archive"]


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
        given_labels: int64 ``(N,)`` noisy labels that come with the dataset (real-noise
            datasets, e.g. from a label file); None means noise is applied synthetically.
            When set, training uses them instead of the configured noise model.
        clean_known: False when the clean training labels are unknown (real noise without a
            clean label file); ``train_labels`` then repeats ``given_labels`` and label
            recovery / memorisation diagnostics are meaningless and should be skipped.
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
    given_labels: Tensor | None = None
    clean_known: bool = True


def download_archive(
    url: str, root: Path, filename: str, md5: str | None, title: str, extracted: str
) -> None:
    """Download and extract a dataset archive into ``root`` with torchvision's utilities
    (which check ``md5``); any failure (offline, disk, checksum) becomes one line saying how
    to get the files by hand. ``extracted`` says what the extracted folder must hold."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(url, str(root), filename=filename, md5=md5)
    except Exception as err:  # network, disk or checksum failure: all mean "get it by hand"
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not download {title} from {url} ({detail}); download {filename} by hand "
            f"and put it in {root} (then dataset.reader.download=true extracts it), or "
            f"extract it so that {extracted}"
        ) from err
