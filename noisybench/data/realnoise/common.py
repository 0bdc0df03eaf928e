"""Shared machinery of the real-noise readers: list files, the manifest, the missing-image
policy and the per-epoch class-balanced subset.

The **manifest** is what makes two groups' runs on an undistributable dataset comparable: one
row per sample, in the reader's stable sample order, split by split::

    # noisybench-manifest v1 <dataset>
    split<TAB>path<TAB>given<TAB>clean<TAB>verified
    train<TAB>0/00/123.jpg<TAB>3<TAB>-1<TAB>-1
    ...

``path`` is relative to the split's own root folder with ``/`` separators (never absolute, so
it is the same on every machine), ``given`` the label the dataset provides (noisy for training
samples, the ground truth for clean evaluation splits), ``clean`` the clean label where the
dataset has one (``-1`` otherwise) and ``verified`` a human verdict on the given label where
the dataset has one (Food-101N's verification lists, CNWL's annotation file: ``1`` label
correct, ``0`` wrong, ``-1`` not verified). The SHA-256 recorded with a run is the
hash of exactly these UTF-8 bytes (``\\n`` line ends, header included), so
``sha256sum manifest.tsv`` on an exported manifest gives the same hex digest.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from noisybench.data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderData
from noisybench.errors import UserError

__all__ = [
    "EXTRA_TEST_PREFIX",
    "MANIFEST_VERSION",
    "MISSING_POLICIES",
    "Entry",
    "RealNoiseData",
    "balanced_subset",
    "build_data",
    "check_manifest",
    "evaluation_splits",
    "manifest_bytes",
    "read_pairs",
]

MANIFEST_VERSION = "noisybench-manifest v1"
#: The prefix each extra test set's metrics are recorded under, by manifest split name
#: (mini-WebVision's ILSVRC12 validation images: ``test_imagenet/acc``, ``test_imagenet/top5``).
EXTRA_TEST_PREFIX = {"imagenet_val": "test_imagenet"}
MISSING_POLICIES = ("refuse", "skip")
UNKNOWN = -1


@dataclass(frozen=True)
class Entry:
    """One sample of a list file: its path relative to ``base`` and its labels."""

    path: str
    given: int
    clean: int = UNKNOWN
    verified: int = UNKNOWN


@dataclass
class Split:
    """The samples of one split and the folder their paths are relative to."""

    name: str
    base: Path
    entries: list[Entry]
    source: str  # the list file (or folder) the entries come from, for messages


@dataclass
class RealNoiseData(FolderData):
    """A :class:`FolderData` with what a real-noise protocol adds.

    Attributes:
        manifest_sha256: SHA-256 of :func:`manifest_bytes` (see the module docstring).
        manifest: ``(split, path, given, clean, verified)`` rows in manifest order.
        val_files / val_labels: the clean selection split (Clothing1M's clean val) or None.
        extra_tests: further test sets by name (mini-WebVision's ``imagenet_val``):
            ``{name: (files, labels)}``.
        missing: images listed but absent and skipped (``missing=skip``), by split.
        clean_mask: bool ``(N,)``, training samples whose clean label is known (Clothing1M's
            samples with both labels).
        noise_on_known: realised rate and transition matrix on the samples of ``clean_mask``
            (a :class:`noisybench.data.noise.NoiseRecord` as a dict) or None.
        protocol: the standard protocol's numbers (per-epoch subset size, selection split).
    """

    manifest_sha256: str = ""
    manifest: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    val_files: list[str] | None = None
    val_labels: Tensor | None = None
    extra_tests: dict[str, tuple[list[str], Tensor]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    clean_mask: Tensor | None = None
    noise_on_known: dict | None = None
    protocol: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- list files
def require_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a file, else a one-line UserError naming it."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {hint}")
    return path


def read_lines(path: Path, what: str, hint: str) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-empty lines of a UTF-8 list file."""
    require_file(path, what, hint)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"cannot read {what} {path} ({type(err).__name__}); replace it with the dataset's "
            "original file"
        ) from err
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def parse_label(text: str, num_classes: int, where: str) -> int:
    """An integer class index in ``[0, num_classes)`` or a one-line UserError at ``where``."""
    try:
        value = int(text)
    except ValueError:
        raise UserError(
            f"{where}: label {text!r} is not an integer; fix the line or restore the "
            "dataset's original file"
        ) from None
    if not 0 <= value < num_classes:
        raise UserError(
            f"{where}: label {value} is out of range 0..{num_classes - 1}; fix the line or "
            "restore the dataset's original file"
        )
    return value


def read_pairs(  # noqa: PLR0913
    path: Path,
    what: str,
    num_classes: int,
    hint: str,
    sep: str | None = None,
    header: str | None = None,
    keep: int | None = None,
    duplicates: str = "refuse",
    overwritten: list[str] | None = None,
) -> dict[str, int]:
    """``{key: label}`` of a ``key label`` list file, in file order.

    ``header``: a first line starting with it is skipped. ``keep``: labels ``>= keep`` are
    dropped (mini-WebVision keeps the first 50 classes) after the range check against
    ``num_classes``. A key listed twice with the same label counts once; with two different
    labels it is refused (which one is right cannot be decided here), unless
    ``duplicates="last"``: the last line wins, as in the reference loaders (a Python dict
    filled line by line), and the key is appended to ``overwritten``.
    """
    check_duplicates(duplicates)
    out: dict[str, int] = {}
    for n, line in read_lines(path, what, hint):
        if header is not None and n == 1 and line.startswith(header):
            continue
        parts = line.split(sep) if sep else line.split()
        if len(parts) != 2:
            raise UserError(
                f"{path}:{n}: expected 'path label', got {line[:80]!r}; fix the line or "
                "restore the dataset's original file"
            )
        key, label_text = parts[0].strip(), parts[1].strip()
        label = parse_label(label_text, num_classes, f"{path}:{n}")
        if keep is not None and label >= keep:
            continue
        previous = out.get(key)
        if previous is not None and previous != label:
            if duplicates == "refuse":
                raise UserError(
                    f"{path}:{n}: {key} is listed twice, with labels {previous} and {label}; "
                    "remove one of the two lines, or set dataset.reader.duplicates=last (the "
                    "last line wins, as in the reference loaders; the count is recorded)"
                )
            if overwritten is not None:
                overwritten.append(key)
        out[key] = label
    return out


DUPLICATE_POLICIES = ("refuse", "last")


def check_duplicates(duplicates: str) -> None:
    if duplicates not in DUPLICATE_POLICIES:
        raise UserError(
            f"dataset.reader.duplicates={duplicates!r} is unknown; use one of "
            f"{list(DUPLICATE_POLICIES)}"
        )


def read_keys(path: Path, what: str, hint: str) -> list[str]:
    """The keys (one per line) of a key-list file, duplicates dropped, in file order."""
    seen: dict[str, None] = {}
    for _, line in read_lines(path, what, hint):
        seen.setdefault(line.split()[0], None)
    return list(seen)


# ----------------------------------------------------------------------------- manifest
def manifest_bytes(dataset: str, rows: Iterable[tuple[str, str, int, int, int]]) -> bytes:
    """The manifest's canonical serialisation (module docstring); hashed with SHA-256."""
    lines = [f"# {MANIFEST_VERSION} {dataset}", "split\tpath\tgiven\tclean\tverified"]
    for split, path, given, clean, verified in rows:
        if "\t" in path or "\n" in path:
            raise UserError(
                f"{dataset}: image path {path!r} contains a tab or line break; rename the file"
            )
        lines.append(f"{split}\t{path}\t{given}\t{clean}\t{verified}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _resolve(split: Split, missing: str) -> tuple[list[str], list[Entry], int]:
    """Absolute files and entries of a split after the missing-image policy."""
    files: list[str] = []
    kept: list[Entry] = []
    absent: list[str] = []
    base = str(split.base)
    isfile, join = os.path.isfile, os.path.join  # a stat per file; pathlib is ~2x slower at 1M
    for entry in split.entries:
        full = join(base, entry.path)
        if isfile(full):
            files.append(full)
            kept.append(entry)
        else:
            absent.append(entry.path)
    if absent and missing == "refuse":
        raise UserError(
            f"{len(absent)} of the {len(split.entries)} images listed in {split.source} are "
            f"missing under {split.base} (first: {absent[0]}); put them there, or set "
            "dataset.reader.missing=skip to leave them out (the count is recorded)"
        )
    return files, kept, len(absent)


def build_data(  # noqa: PLR0913
    name: str,
    class_names: Sequence[str],
    train: Split,
    test: Split,
    *,
    val: Split | None = None,
    extra_tests: Sequence[Split] = (),
    missing: str = "refuse",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    resize: int = 256,
    protocol: dict | None = None,
) -> RealNoiseData:
    """Check every listed file (missing-image policy), build the manifest and the data.

    Training labels: ``given`` is the noisy label. When every training sample has a clean
    label, ``train_labels`` holds them and ``clean_known`` is True; otherwise ``train_labels``
    is the given label (``clean_known`` False) and the partly known clean labels are summarised
    in ``clean_mask`` and ``noise_on_known`` (realised rate and transition matrix on them).
    """
    if missing not in MISSING_POLICIES:
        raise UserError(
            f"dataset.reader.missing={missing!r} is unknown; use one of {list(MISSING_POLICIES)}"
        )
    if int(image_size) < 1 or int(resize) < int(image_size):
        raise UserError(
            f"dataset image_size={image_size} / resize={resize}: need 1 <= image_size <= resize"
        )
    rows: list[tuple[str, str, int, int, int]] = []
    counts: dict[str, int] = {}
    resolved: dict[str, tuple[list[str], list[Entry]]] = {}
    for split in [train, *([val] if val is not None else []), test, *extra_tests]:
        files, kept, absent = _resolve(split, missing)
        if not kept:
            raise UserError(
                f"{name}: no image of {split.source} was found under {split.base}; check "
                "dataset.reader.root (and the layout in docs/datasets_real_noise.md)"
            )
        counts[split.name] = absent
        resolved[split.name] = (files, kept)
        rows += [(split.name, e.path, e.given, e.clean, e.verified) for e in kept]
        if absent:
            warnings.warn(
                f"{name}: {absent} images of {split.source} are missing and skipped "
                "(dataset.reader.missing=skip)",
                stacklevel=2,
            )
    k = len(class_names)
    train_files, train_entries = resolved[train.name]
    given = torch.tensor([e.given for e in train_entries], dtype=torch.long)
    clean = torch.tensor([e.clean for e in train_entries], dtype=torch.long)
    mask = clean >= 0
    # Partly known clean labels (Clothing1M) are not mixed into train_labels: the engine's
    # noise record and diagnostics would count the unknown ones as clean. They stay in
    # clean_mask / noise_on_known, and train_labels is the given label, as for any real-noise
    # data without clean labels (clean_known False).
    labels = clean if bool(mask.all()) else given.clone()
    noise_on_known = None
    if bool(mask.any()):
        from noisybench.data.noise import make_noise_record

        record = make_noise_record(
            clean[mask].numpy(), given[mask].numpy(), k, variant="real", nominal_rate=0.0, seed=0
        )
        noise_on_known = {**record.__dict__, "samples": int(mask.sum())}

    def labels_of(split_name: str) -> Tensor:
        return torch.tensor([e.given for e in resolved[split_name][1]], dtype=torch.long)

    payload = manifest_bytes(name, rows)
    data = RealNoiseData(
        name=name,
        train_files=train_files,
        train_labels=labels,
        test_files=resolved[test.name][0],
        test_labels=labels_of(test.name),
        num_classes=k,
        class_names=list(class_names),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        given_labels=given,
        clean_known=bool(mask.all()),
        image_size=int(image_size),
        resize=int(resize),
        manifest_sha256=hashlib.sha256(payload).hexdigest(),
        manifest=rows,
        val_files=None if val is None else resolved[val.name][0],
        val_labels=None if val is None else labels_of(val.name),
        extra_tests={s.name: (resolved[s.name][0], labels_of(s.name)) for s in extra_tests},
        missing=counts,
        clean_mask=mask,
        noise_on_known=noise_on_known,
        protocol=dict(protocol or {}),
    )
    return data


def evaluation_splits(data: object) -> dict[str, tuple[list[str], Tensor]]:
    """The splits a run evaluates each epoch besides ``test``, as ``{name: (files, labels)}``:
    ``"clean_val"`` for a dataset's own clean validation split (Clothing1M's clean val,
    Food-101N's verified-correct val images; the ``clean_val`` selection rule's split) and
    each extra test set under its record prefix (:data:`EXTRA_TEST_PREFIX`). Empty for any
    dataset without them (every dataset other than the real-noise readers')."""
    out: dict[str, tuple[list[str], Tensor]] = {}
    files, labels = getattr(data, "val_files", None), getattr(data, "val_labels", None)
    if files is not None and labels is not None:
        out["clean_val"] = (list(files), labels)
    for name, (files, labels) in (getattr(data, "extra_tests", None) or {}).items():
        out[EXTRA_TEST_PREFIX.get(name, f"test_{name}")] = (list(files), labels)
    return out


def split_sizes(data: RealNoiseData) -> dict[str, int]:
    """Samples per split of the manifest (after the missing-image policy)."""
    sizes: dict[str, int] = {}
    for split, *_ in data.manifest:
        sizes[split] = sizes.get(split, 0) + 1
    return sizes


def summary(data: RealNoiseData) -> dict:
    """What a run records about the data (``result.json``'s ``"dataset"`` entry)."""
    return {
        "name": data.name,
        "manifest": MANIFEST_VERSION,
        "manifest_sha256": data.manifest_sha256,
        "splits": split_sizes(data),
        "missing_skipped": dict(data.missing),
        "clean_known_train": int(data.clean_mask.sum()) if data.clean_mask is not None else 0,
        "noise_on_known": data.noise_on_known,
        "protocol": dict(data.protocol),
    }


def check_manifest(saved: dict | None, data: RealNoiseData, run_dir: str) -> None:
    """Refuse to resume a run on other data than it started with.

    ``saved`` is the run's recorded :func:`summary` (``result.json``'s ``"dataset"`` entry or
    the checkpoint's); None (a run from before manifests were recorded) passes.
    """
    if not saved or "manifest_sha256" not in saved:
        return
    if saved["manifest_sha256"] != data.manifest_sha256:
        raise UserError(
            f"{run_dir} was trained on {data.name} with manifest {saved['manifest_sha256'][:16]}, "
            f"the data now read gives {data.manifest_sha256[:16]} (other files, labels or "
            "missing images); point dataset.reader.root at the same copy, or set restart=true"
        )


def env_root(root: str | os.PathLike[str], what: str) -> Path:
    """``root`` as a folder, or a one-line UserError."""
    base = Path(str(root)).expanduser()
    if not base.is_dir():
        raise UserError(
            f"dataset.reader.root={root} is not a folder; point it at the {what} folder "
            "(layout: docs/datasets_real_noise.md)"
        )
    return base


# ----------------------------------------------------------------------------- subset
def balanced_subset(labels: Tensor | np.ndarray, total: int, seed: int, epoch: int) -> Tensor:
    """Indices of one epoch's class-balanced subset of the noisy training set.

    DivideMix's Clothing1M protocol (Li et al. 2020, ``dataloader_clothing1M.py``, mode
    ``all``): shuffle the noisy training list, walk it and keep a sample while its (noisy)
    class has fewer than ``total / K`` kept samples and fewer than ``total`` are kept in all;
    64,000 images per epoch (``num_batches * batch_size * 2`` = 1000 x 32 x 2). So each class
    contributes ``ceil(total / K)`` samples at most (4,572 for 64,000 / 14) and a class with
    fewer samples contributes all of them. Here the shuffle is ``randperm`` from a generator
    seeded by ``(seed, epoch)`` only, so a resumed run draws the same subset.

    Returns:
        int64 sorted indices (the loader shuffles them with its own per-epoch order).
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).cpu()
    n = int(y.shape[0])
    if total < 1:
        raise UserError(f"subset size {total} must be >= 1; set it to a positive number")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    entropy = np.random.SeedSequence([int(seed), int(epoch), 0x5B5E7]).generate_state(2)
    gen = torch.Generator().manual_seed(((int(entropy[0]) << 32) | int(entropy[1])) >> 1)
    return _balanced_from_order(y, total, torch.randperm(n, generator=gen)).sort().values


def _balanced_from_order(labels: Tensor, total: int, order: Tensor) -> Tensor:
    """The samples DivideMix's loop keeps walking ``order``, in walking order (vectorised:
    each sample's rank within its class along ``order``, kept while below the quota, then the
    first ``total``)."""
    k = int(labels.max()) + 1
    quota = math.ceil(total / k)  # count < total / k  <=>  count < ceil(total / k)
    yp = labels[order]
    by_class = torch.sort(yp, stable=True).indices
    sorted_y = yp[by_class]
    starts = torch.searchsorted(sorted_y, sorted_y, right=False)
    rank = torch.empty_like(yp)
    rank[by_class] = torch.arange(yp.shape[0]) - starts
    return order[rank < quota][:total]
