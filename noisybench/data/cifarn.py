"""CIFAR-10N / CIFAR-100N: real human label noise (Wei et al., "Learning with Noisy Labels
Revisited: A Study Using Real-World Human Annotations", ICLR 2022).

The official label files (``data/CIFAR-10_human.pt`` and ``data/CIFAR-100_human.pt`` of
https://github.com/UCSC-REAL/cifar-10-100n) are ``torch.save`` pickles of a dict of int64
NumPy arrays of length 50,000, indexed in torchvision's training order (the order of
:func:`noisybench.data.cifar.load_cifar`). Keys:

* CIFAR-10N: ``clean_label``, ``aggre_label``, ``worse_label``, ``random_label1``,
  ``random_label2``, ``random_label3``;
* CIFAR-100N: ``clean_label``, ``noisy_label`` (fine), ``clean_coarse_label``,
  ``noisy_coarse_label`` (the 20 superclasses).

Published realised noise rates (the paper, Table 1): aggre 9.03 %, random1 17.23 %,
random2 18.12 %, random3 17.64 %, worse 40.21 %, CIFAR-100N noisy (fine) 40.20 %.

The files are read with ``torch.load(weights_only=True)`` and only the NumPy globals an
int64 array needs allow-listed, so a file carrying any other pickled object (code) is refused
before anything in it runs. Every set is verified: the keys exist, the arrays are 1-D
integers as long as the training set, values lie in ``[0, K)``, and the file's clean labels
equal the dataset's own training labels (which catches a CIFAR-10 file used with CIFAR-100,
the fine file used with coarse labels, or a training set in another order).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noisybench.data.labels_file import check_labels
from noisybench.errors import UserError

__all__ = ["HUMAN_SETS", "HumanSet", "download_human_file", "read_human_labels"]

_BASE_URL = "https://raw.githubusercontent.com/UCSC-REAL/cifar-10-100n/main/data/"


@dataclass(frozen=True)
class HumanSet:
    """One label set of an official CIFAR-N file.

    Attributes:
        file: the official file name (``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``).
        key: the noisy label array's key in the file.
        clean_key: the key of the clean labels the set is checked against.
        num_classes: K of the labels (10, 100, or 20 for the coarse sets).
        published_rate: the realised noise rate published with the data set (None if not
            published).
    """

    file: str
    key: str
    clean_key: str
    num_classes: int
    published_rate: float | None

    @property
    def url(self) -> str:
        return _BASE_URL + self.file


_C10 = "CIFAR-10_human.pt"
_C100 = "CIFAR-100_human.pt"

HUMAN_SETS: dict[str, HumanSet] = {
    "cifar10n_aggre": HumanSet(_C10, "aggre_label", "clean_label", 10, 0.0903),
    "cifar10n_random1": HumanSet(_C10, "random_label1", "clean_label", 10, 0.1723),
    "cifar10n_random2": HumanSet(_C10, "random_label2", "clean_label", 10, 0.1812),
    "cifar10n_random3": HumanSet(_C10, "random_label3", "clean_label", 10, 0.1764),
    "cifar10n_worse": HumanSet(_C10, "worse_label", "clean_label", 10, 0.4021),
    "cifar100n_noisy": HumanSet(_C100, "noisy_label", "clean_label", 100, 0.4020),
    "cifar100n_noisy_coarse": HumanSet(_C100, "noisy_coarse_label", "clean_coarse_label", 20, None),
}
"""Noise variant name -> label set (each also registered in ``noise.NOISE_VARIANTS``)."""


def _allowed_globals() -> list:
    """The only globals an int64 ndarray pickle needs (NumPy 2 names, and NumPy 1's
    ``numpy.core`` name for the same function, which files written with NumPy 1 use)."""
    reconstruct = np._core.multiarray._reconstruct
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.int64)),
        (type(np.dtype(np.int64)), "numpy.dtype[int64]"),
    ]


def download_human_file(path: Path, url: str) -> None:
    """Fetch an official CIFAR-N file to ``path`` (only when asked: ``noise.download=true``)."""
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, str(path.parent), filename=path.name)
    except Exception as err:  # offline, HTTP error, disk: all mean "get it by hand"
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not download {url} ({detail}); download it by hand to {path} or point "
            "noise.file at a copy"
        ) from err


def _load(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines()
        keys = ("Unsupported global", "Can only build")
        reason = next((line for line in lines if any(k in line for k in keys)), "")
        if not reason:
            raise UserError(
                f"CIFAR-N label file {path} is not a readable torch file ({lines[0][:80]}); "
                "download the official file again (noise.download=true)"
            ) from None
        reason = reason.split("error: ")[-1].split(" was not an allowed")[0]
        raise UserError(
            f"CIFAR-N label file {path} holds more than label arrays and was not loaded "
            f"({reason.strip()}); download the official file again (noise.download=true)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"CIFAR-N label file {path} is not a readable torch file ({detail}); download the "
            "official file again (noise.download=true)"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"CIFAR-N label file {path} holds a {type(obj).__name__}, not a dict of label "
            "arrays; download the official file again (noise.download=true)"
        )
    return obj


def _array(obj: dict, key: str, path: Path, n: int, k: int) -> np.ndarray:
    if key not in obj:
        raise UserError(
            f"CIFAR-N label file {path} has no {key!r} (it has {sorted(map(str, obj))}); use "
            f"the official {'CIFAR-100' if k != 10 else 'CIFAR-10'}_human.pt for this noise set"
        )
    fix = (
        "CIFAR-N labels fit the full CIFAR training set (50,000) and its classes only; "
        "download the official file again (noise.download=true)"
    )
    return check_labels(obj[key], f"{key!r} in {path}", fix, k, n)


def read_human_labels(
    variant: str,
    path: str | Path,
    clean_labels: np.ndarray,
    num_classes: int,
    *,
    download: bool = False,
) -> np.ndarray:
    """The noisy labels of CIFAR-N set ``variant`` from the official file at ``path``.

    Args:
        variant: a key of :data:`HUMAN_SETS`.
        path: the file (``noise.file``; by default ``<data_dir>/CIFAR-10_human.pt`` or
            ``CIFAR-100_human.pt``).
        clean_labels: the dataset's own training labels, in torchvision's order.
        num_classes: K of the dataset (must equal the set's).
        download: fetch the official file first when it is missing.

    Raises:
        UserError: missing file, unsafe or unreadable pickle, missing key, wrong length or
            class range, or clean labels that differ from the dataset's.
    """
    spec = HUMAN_SETS[variant]
    path = Path(path).expanduser()
    if spec.num_classes != num_classes:
        raise UserError(
            f"noise {variant} has {spec.num_classes} classes but the dataset has {num_classes}; "
            + (
                "use dataset=cifar100_coarse"
                if spec.num_classes == 20
                else f"use dataset={'cifar10' if spec.num_classes == 10 else 'cifar100'}"
            )
        )
    if not path.is_file():
        if download:
            download_human_file(path, spec.url)
        if not path.is_file():
            raise UserError(
                f"CIFAR-N label file {path} does not exist; pass noise.download=true to fetch "
                f"{spec.url}, or set noise.file to where {spec.file} is"
            )
    obj = _load(path)
    clean = np.asarray(clean_labels, dtype=np.int64)
    n = clean.shape[0]
    noisy = _array(obj, spec.key, path, n, num_classes)
    file_clean = _array(obj, spec.clean_key, path, n, num_classes)
    if not np.array_equal(file_clean, clean):
        bad = int(np.count_nonzero(file_clean != clean))
        raise UserError(
            f"the clean labels in {path} ({spec.clean_key!r}) differ from the dataset's training "
            f"labels at {bad} of {n} samples; use the CIFAR-N file that belongs to this dataset, "
            "and the dataset in torchvision's training order"
        )
    return noisy
