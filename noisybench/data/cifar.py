"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the original pickled batches.

The on-disk layout is the one torchvision's downloader produces (the extracted official
archives): ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``root/cifar-100-python/{train, test, meta}``. Each batch file is a pickled dict whose
``data`` entry is a uint8 ``(n, 3072)`` array: per row the 1024 red, then green, then blue
bytes of a 32x32 image in row-major order. The training images are concatenated in
torchvision's order (batches 1..5), so index ``i`` here is index ``i`` of
``torchvision.datasets.CIFAR10`` -- which is the order CIFAR-10N / CIFAR-100N label files use.

The files are read here rather than through torchvision's dataset classes so that checksum
verification is a separate, switchable step (``verify``) and errors name the exact file.
The expected checksums are read at run time from torchvision's class attributes.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisybench.data.base import ImageData, download_archive
from noisybench.errors import UserError

__all__ = [
    "CIFAR_STATS",
    "expected_md5",
    "load_cifar",
    "md5sum",
    "read_batch",
    "verify_md5",
]

# Per-channel mean and standard deviation of the training images, in [0, 1] units, over all
# pixels of all 50,000 images (the std over pixels, not the often-quoted mean of per-image stds
# (0.2023, 0.1994, 0.2010)).
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    torchvision_class: str
    archive: str


_SPECS = {
    "cifar10": _Spec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        torchvision_class="CIFAR10",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": _Spec(
        title="CIFAR-100",
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        torchvision_class="CIFAR100",
        archive="cifar-100-python.tar.gz",
    ),
}


def _spec(variant: str) -> _Spec:
    if variant not in _SPECS:
        raise UserError(f"unknown CIFAR variant {variant!r}; use one of {sorted(_SPECS)}")
    return _SPECS[variant]


def _torchvision_class(variant: str) -> Any:
    from torchvision import datasets

    return getattr(datasets, _spec(variant).torchvision_class)


def expected_md5(variant: str) -> dict[str, str]:
    """``{file name: md5}`` of the official files, read from torchvision's class attributes."""
    cls = _torchvision_class(variant)
    table = {name: md5 for name, md5 in [*cls.train_list, *cls.test_list]}
    table[cls.meta["filename"]] = cls.meta["md5"]
    return table


def md5sum(path: Path, block: int = 1 << 20) -> str:
    """Hex md5 digest of a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(directory: str | Path, expected: Mapping[str, str]) -> None:
    """Check each ``directory/name`` against ``expected[name]``; UserError on the first mismatch."""
    directory = Path(directory)
    for name, md5 in expected.items():
        path = directory / name
        got = md5sum(path)
        if got != md5:
            raise UserError(
                f"{path} is corrupt (md5 {got}, expected {md5}); delete it and download again "
                "(dataset.reader.download=true), or set dataset.reader.verify=false if the file "
                "was changed on purpose"
            )


def _array_globals() -> dict[tuple[str, str], Any]:
    """The exact ``(module, name)`` pairs a CIFAR batch pickle may name, each mapped to the
    object it means. Written by NumPy 1 (``numpy.core``) or 2 (``numpy._core``); never a
    prefix: ``numpy.`` alone admits modules whose import runs a program (``numpy.f2py.__main__``
    starts f2py's command-line tool)."""
    import codecs

    core = getattr(np, "_core", None) or np.core  # NumPy 2, or NumPy 1's name
    multiarray, numeric = core.multiarray, core.numeric
    pairs: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        pairs[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        pairs[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        pairs[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return pairs


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays (the CIFAR batches need nothing else).

    Every global is looked up in :func:`_array_globals` by its exact ``(module, name)`` and
    returned from there: nothing is imported while reading, and anything else is refused."""

    _ALLOWED = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Python 3 writes bytes under pickle protocol <= 2 as _codecs.encode(text, "latin1").
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR file")
        return found


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_batch(path: str | Path) -> dict[str, Any]:
    """Read one pickled CIFAR file into a dict with ``str`` keys.

    The official files are Python 2 pickles; loaded with ``encoding="bytes"`` their keys are
    ``bytes`` (``b"data"``), which are decoded here. Byte-string names are decoded too.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserError(
            f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); delete it and download "
            "again (dataset.reader.download=true)"
        ) from err
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a CIFAR dict; download again")
    out = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = [_text(v) for v in value]
        out[_text(key)] = value
    return out


def _images_and_labels(path: Path, label_keys: tuple[str, ...]) -> tuple[np.ndarray, list]:
    batch = read_batch(path)
    missing = [k for k in ("data", *label_keys) if k not in batch]
    if missing:
        raise UserError(f"{path} has no {missing} entries; it is not a CIFAR batch, download again")
    data = np.asarray(batch["data"])
    n = data.shape[0] if data.ndim == 2 else -1
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072); download again"
        )
    labels = [np.asarray(batch[k], dtype=np.int64) for k in label_keys]
    if any(lab.shape != (n,) for lab in labels):
        raise UserError(f"{path}: {n} images but a different number of labels; download again")
    return data, labels


def _download(spec: _Spec, variant: str, root: Path) -> None:
    cls = _torchvision_class(variant)
    holds = f"{root / spec.folder} holds the files"
    download_archive(cls.url, root, cls.filename, cls.tgz_md5, spec.title, holds)


def load_cifar(
    variant: str,
    root: str,
    download: bool = False,
    verify: bool = True,
    labels: str = "fine",
) -> ImageData:
    """Load CIFAR-10 (``variant="cifar10"``) or CIFAR-100 (``"cifar100"``) as :class:`ImageData`.

    Args:
        variant: ``"cifar10"`` or ``"cifar100"``.
        root: directory holding ``cifar-10-batches-py/`` or ``cifar-100-python/``
            (``data_dir`` in the config).
        download: fetch and extract the official archive into ``root`` if files are missing.
        verify: check every file's md5 against the official value before reading.
        labels: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (the 20
            superclasses as the classes, e.g. for CIFAR-100N's coarse label sets).

    Returns:
        uint8 ``(50000, 3, 32, 32)`` / ``(10000, 3, 32, 32)`` images in torchvision's order;
        for CIFAR-100 with fine labels, ``superclass`` maps each of the 100 fine classes to its
        coarse class.
    """
    if labels not in ("fine", "coarse") or (labels == "coarse" and variant != "cifar100"):
        raise UserError(
            f"labels={labels!r} is not available for {variant}; use labels=fine (or coarse "
            "with CIFAR-100)"
        )
    label_type = labels
    spec = _spec(variant)
    root_path = Path(root).expanduser()
    directory = root_path / spec.folder
    files = [*spec.train, spec.test, spec.meta]

    def missing_files() -> list[str]:
        return [name for name in files if not (directory / name).is_file()]

    missing = missing_files()
    if missing and download:
        _download(spec, variant, root_path)
        missing = missing_files()
    if missing:
        lacks = "holds none" if len(missing) == len(files) else f"lacks {', '.join(missing)}"
        raise UserError(
            f"{spec.title} not found: {directory} {lacks} of the expected files "
            f"({', '.join(files)}); set dataset.reader.download=true, or extract {spec.archive} "
            f"into {root_path}, or point data_dir at the directory that holds {spec.folder}/"
        )
    if verify:
        verify_md5(directory, {name: expected_md5(variant)[name] for name in files})

    label_keys = ("labels",) if variant == "cifar10" else ("fine_labels", "coarse_labels")
    train = [_images_and_labels(directory / name, label_keys) for name in spec.train]
    test_data, test_labels = _images_and_labels(directory / spec.test, label_keys)
    train_data = np.concatenate([d for d, _ in train])
    train_labels = [np.concatenate([lab[i] for _, lab in train]) for i in range(len(label_keys))]

    meta = read_batch(directory / spec.meta)
    if spec.names_key not in meta:
        raise UserError(f"{directory / spec.meta} has no {spec.names_key!r}; download again")
    class_names = [str(n) for n in meta[spec.names_key]]
    num_classes = len(class_names)
    for labels, where in ((train_labels[0], spec.train[0]), (test_labels[0], spec.test)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(
                f"{directory / where} has labels outside 0..{num_classes - 1}; download again"
            )

    superclass = None
    if variant == "cifar100":
        superclass = _superclass_map(
            np.concatenate([train_labels[0], test_labels[0]]),
            np.concatenate([train_labels[1], test_labels[1]]),
            num_classes,
            directory,
        )
    if label_type == "coarse":  # the 20 superclasses become the classes
        names = meta.get("coarse_label_names")
        if names is None:
            raise UserError(f"{directory / spec.meta} has no 'coarse_label_names'; download again")
        class_names = [str(n) for n in names]
        num_classes = len(class_names)
        train_labels = [train_labels[1]]
        test_labels = [test_labels[1]]
        superclass = None

    mean, std = CIFAR_STATS[variant]
    return ImageData(
        name=variant,
        train_images=_to_images(train_data),
        train_labels=torch.from_numpy(train_labels[0].copy()),
        test_images=_to_images(test_data),
        test_labels=torch.from_numpy(test_labels[0].copy()),
        num_classes=num_classes,
        class_names=class_names,
        mean=mean,
        std=std,
        superclass=superclass,
    )


def _to_images(data: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, 3072)`` rows of R, G, B planes -> ``(n, 3, 32, 32)``."""
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))


def _superclass_map(fine: np.ndarray, coarse: np.ndarray, k: int, directory: Path) -> torch.Tensor:
    """``(K,)`` fine class -> coarse class, from the labelled pairs; each must be consistent."""
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[fine] = coarse
    if not np.array_equal(mapping[fine], coarse):
        raise UserError(
            f"{directory}: a fine class has several coarse labels; the files are corrupt, "
            "download again"
        )
    absent = np.flatnonzero(mapping < 0)
    if absent.size:
        raise UserError(
            f"{directory}: fine classes {absent[:5].tolist()}... never occur, so their "
            "superclass is unknown; the files are incomplete, download again"
        )
    return torch.from_numpy(mapping)
