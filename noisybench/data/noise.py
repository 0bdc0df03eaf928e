"""Synthetic label noise: pure, seeded functions (numpy in, numpy out).

The BSD paper (Section 4.2.3, "Label noise") generates "symmetric label noise by randomly
reassigning a percentage of all labels, and asymmetric noise using the class-dependent definition
from prior work (Tanaka et al. 2018)". The field uses several incompatible conventions under the
same names (REFERENCE.md section 4), so every variant here has its own name and its realised rate
is recorded next to the nominal one.

Conventions (T[i, j] = P(noisy = j | clean = i), K classes, nominal rate r, "round" = half up):

* ``none``: the clean labels.
* ``sym_incl`` ("include the true class"; DivideMix, ELR, TE, and the PreAct ResNet-18
  comparisons in the paper's Table 4): exactly round(r*N) samples, chosen without replacement,
  get a label drawn uniformly from all K classes, so some keep their label. Realised wrong-label
  rate ~ r(1 - 1/K): sym80 on a 10-class dataset changes 72% of the labels.
* ``sym_excl`` ("exclude the true class", per-sample draw; loss-correction and CIFAR-N code):
  each label is flipped with probability r, to one of the other K-1 classes uniformly.
  T = (1-r) I + r/(K-1) (1 - I). Realised rate ~ r (binomial spread).
* ``sym_balanced`` ("exact, class-balanced"; Wang et al. 2019, SCE): exactly round(r*n_c) samples
  of every class c move to one of the other K-1 classes uniformly. Realised rate
  = sum_c round(r*n_c) / N, i.e. r up to rounding. (SCE's code uses int(r*N/K) per class.)
* ``asym``: a class-dependent map (``ASYM_MAPS``, chosen by ``asym_map``); for every source class
  c (map[c] != c) exactly round(r*n_c) samples, drawn from the *clean* labels of c, get label
  map[c]. Drawing from the clean labels avoids the in-place bug of ELR issue 16, where cats
  already moved to "dog" could be drawn again from the dog pool and moved back. Realised rate
  = sum over source classes round(r*n_c) / N (r*5/10 for the CIFAR-10 Tanaka map on balanced
  data). DivideMix's "asym" picks round(r*N) samples from all classes and flips those of the
  source classes: the same expected number of changes (0.2002 of CIFAR-10's labels at r = 0.4
  against 0.2000 here), only each source class's count is random instead of exact.
* ``pairflip`` (Han et al. 2018, Co-teaching): the cyclic map c -> (c+1) mod K over all
  classes, with the asym convention (exactly round(r*n_c) per class, from clean labels).
  Co-teaching's code draws each sample independently instead; the expected matrix is the same.
* ``idn`` (Xia et al. 2020, "Part-dependent label noise", the instance-dependent generation
  algorithm): per-sample flip rate q_i ~ N(r, 0.1^2) truncated to (0, 1); per clean class y a
  projection W_y in R^{D x K} with N(0, 1) entries; scores s = x_i W_{y_i}, s[y_i] = -inf;
  p_i = q_i softmax(s) + (1 - q_i) e_{y_i}; the noisy label is drawn from p_i. Realised rate
  ~ E[q] (the truncated-normal mean; r itself when r is more than ~0.3 from 0 and 1).
* ``cifar10n_aggre``, ``cifar10n_random1..3``, ``cifar10n_worse``, ``cifar100n_noisy``,
  ``cifar100n_noisy_coarse`` (Wei et al. 2022, real human annotations): read from the official
  CIFAR-N file (:mod:`noisybench.data.cifarn`) through :func:`apply_noise` with ``file=``;
  nothing is drawn, so rate and seed only go into the record.

Every function draws from ``np.random.default_rng(seed)`` only, never mutates its input, and
returns int64 labels. A nominal rate of 0 returns the clean labels for every variant.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from noisybench.data.cifarn import HUMAN_SETS, read_human_labels
from noisybench.data.labels_file import check_labels
from noisybench.errors import UserError
from noisybench.io import atomic_write

__all__ = [
    "ASYM_MAPS",
    "NOISE_VARIANTS",
    "NoiseRecord",
    "apply_noise",
    "build_asym_map",
    "inject_noise",
    "label_hash",
    "load_labels",
    "make_noise_record",
    "register_asym_map",
    "register_noise",
    "save_labels",
    "transition_matrix",
]


class NoiseFn(Protocol):
    """Signature of a registered noise variant (validated inputs, a seeded generator)."""

    def __call__(  # noqa: PLR0913
        self,
        labels: np.ndarray,
        num_classes: int,
        rate: float,
        rng: np.random.Generator,
        *,
        asym_map: str | None,
        superclass: np.ndarray | None,
        features: np.ndarray | None,
    ) -> np.ndarray: ...


AsymMapFn = Callable[[int, np.random.Generator, "np.ndarray | None"], np.ndarray]

NOISE_VARIANTS: dict[str, NoiseFn] = {}
"""Variant name -> function. Add a variant with ``@register_noise("name")``."""

ASYM_MAPS: dict[str, AsymMapFn] = {}
"""Map name -> ``f(num_classes, rng, superclass) -> target`` (int64 (K,), target[c] == c means
class c is not a source class). Add one with ``@register_asym_map("name")``."""

# Which map each dataset uses by default (documentation for error messages; the dataset config
# supplies the actual default as ``dataset.asym_map``).
_DATASET_MAP_HINT = (
    "digits/MNIST: digits; CIFAR-10: cifar10_tanaka; CIFAR-100: cifar100_block_next, "
    "cifar100_block_pair or cifar100_superclass"
)


def register_noise(name: str, *, uses_asym_map: bool = False) -> Callable[[NoiseFn], NoiseFn]:
    """Register a noise variant under ``name`` (a new variant = one function + this decorator).

    ``uses_asym_map`` marks variants for which ``asym_map`` matters; for the others the record
    stores ``asym_map=None`` even when the dataset supplies a default map.
    """

    def decorator(fn: NoiseFn) -> NoiseFn:
        if name in NOISE_VARIANTS:
            raise ValueError(f"noise variant {name!r} is registered twice")
        fn.uses_asym_map = uses_asym_map  # type: ignore[attr-defined]
        NOISE_VARIANTS[name] = fn
        return fn

    return decorator


def register_asym_map(name: str) -> Callable[[AsymMapFn], AsymMapFn]:
    """Register a class-dependent flip map under ``name``."""

    def decorator(fn: AsymMapFn) -> AsymMapFn:
        if name in ASYM_MAPS:
            raise ValueError(f"asymmetric map {name!r} is registered twice")
        ASYM_MAPS[name] = fn
        return fn

    return decorator


# --------------------------------------------------------------------------------------------
# Helpers


def _round_half_up(x: float) -> int:
    """round(x) with halves rounded up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


def _random_other_class(
    labels: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """A class != labels[i] for each i, uniform over the other K-1 classes."""
    return (labels + rng.integers(1, num_classes, size=labels.shape[0])) % num_classes


def _flip_exact_per_class(
    labels: np.ndarray, target: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """For every source class c (target[c] != c) move exactly round(rate*n_c) clean samples of c
    to target[c]. Indices are drawn from the clean labels, so nothing is flipped twice."""
    noisy = labels.copy()
    for c in np.flatnonzero(target != np.arange(target.shape[0])):
        idx = np.flatnonzero(labels == c)
        k = _round_half_up(rate * idx.shape[0])
        if k:
            noisy[rng.choice(idx, size=k, replace=False)] = target[c]
    return noisy


def _fixed_map(name: str, pairs: dict[int, int], num_classes: int) -> np.ndarray:
    """A K-vector map from explicit ``source -> target`` pairs, for 10-class datasets."""
    largest = max(max(pairs), max(pairs.values()))
    if largest >= num_classes:
        raise UserError(
            f"asymmetric map {name!r} references class {largest} but the dataset has only "
            f"{num_classes} classes; choose a map for this dataset with noise.asym_map "
            f"({_DATASET_MAP_HINT})"
        )
    if num_classes != 10:
        raise UserError(
            f"asymmetric map {name!r} is defined for 10-class datasets but this one has "
            f"{num_classes} classes; choose a map for this dataset with noise.asym_map "
            f"({_DATASET_MAP_HINT})"
        )
    target = np.arange(num_classes, dtype=np.int64)
    for src, dst in pairs.items():
        target[src] = dst
    return target


def _blocks_of_five(name: str, num_classes: int) -> int:
    if num_classes % 5:
        raise UserError(
            f"asymmetric map {name!r} groups classes in blocks of 5 but num_classes={num_classes} "
            f"is not a multiple of 5; choose another noise.asym_map ({_DATASET_MAP_HINT})"
        )
    return num_classes // 5


# --------------------------------------------------------------------------------------------
# Asymmetric maps


@register_asym_map("cifar10_tanaka")
def _map_cifar10_tanaka(
    num_classes: int, rng: np.random.Generator, superclass: np.ndarray | None
) -> np.ndarray:
    """Tanaka et al. 2018 (used by the BSD paper, Section 4.2.3), CIFAR-10 class indices:
    truck(9)->automobile(1), bird(2)->airplane(0), deer(4)->horse(7), cat(3)<->dog(5)."""
    return _fixed_map("cifar10_tanaka", {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}, num_classes)


@register_asym_map("digits")
def _map_digits(
    num_classes: int, rng: np.random.Generator, superclass: np.ndarray | None
) -> np.ndarray:
    """Patrini et al. 2017 (MNIST): 2->7, 3->8, 5<->6, 7->1."""
    return _fixed_map("digits", {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}, num_classes)


@register_asym_map("cifar100_block_next")
def _map_cifar100_block_next(
    num_classes: int, rng: np.random.Generator, superclass: np.ndarray | None
) -> np.ndarray:
    """ELR's CIFAR-100 map: blocks of 5 consecutive indices (not the true superclasses); each
    class goes to the next one in its block, cyclically (4 -> 0 within the block)."""
    _blocks_of_five("cifar100_block_next", num_classes)
    c = np.arange(num_classes, dtype=np.int64)
    return c - c % 5 + (c % 5 + 1) % 5


@register_asym_map("cifar100_block_pair")
def _map_cifar100_block_pair(
    num_classes: int, rng: np.random.Generator, superclass: np.ndarray | None
) -> np.ndarray:
    """SCE's CIFAR-100 map (Wang et al. 2019, official code ``datasets.py``,
    ``build_for_cifar100``): in every block of 5 consecutive indices one random pair of distinct
    classes (a, b) is chosen and swapped, a<->b; the other 3 classes of the block are clean.
    So only 40 of 100 classes are sources and the realised rate on balanced data is 0.4*r.
    The pairs are drawn from the noise seed. (SCE then draws every sample independently from
    that matrix; here the asym convention applies: exactly round(r*n_c) per source class.)"""
    target = np.arange(num_classes, dtype=np.int64)
    for block in range(_blocks_of_five("cifar100_block_pair", num_classes)):
        a, b = 5 * block + rng.choice(5, size=2, replace=False)
        target[a], target[b] = b, a
    return target


@register_asym_map("cifar100_superclass")
def _map_cifar100_superclass(
    num_classes: int, rng: np.random.Generator, superclass: np.ndarray | None
) -> np.ndarray:
    """True CIFAR-100 superclasses: within each coarse class, fine classes ordered by index and
    each sent to the next one, cyclically. A coarse class with one member stays clean."""
    if superclass is None:
        raise UserError(
            "asymmetric map 'cifar100_superclass' needs the fine->coarse superclass array but "
            "the dataset provides none; use a dataset with superclasses (CIFAR-100) or "
            "noise.asym_map=cifar100_block_next"
        )
    sc = np.asarray(superclass)
    if sc.shape != (num_classes,) or not np.issubdtype(sc.dtype, np.integer):
        raise UserError(
            f"superclass must be an integer array of shape ({num_classes},) mapping each fine "
            f"class to its coarse class, got dtype {sc.dtype} shape {sc.shape}; fix the dataset "
            "reader's superclass field"
        )
    target = np.arange(num_classes, dtype=np.int64)
    for coarse in np.unique(sc):
        members = np.flatnonzero(sc == coarse)  # ascending class index
        target[members] = np.roll(members, -1)
    return target


def build_asym_map(
    name: str | None,
    num_classes: int,
    rng: np.random.Generator,
    superclass: np.ndarray | None = None,
) -> np.ndarray:
    """Look up ``name`` in ``ASYM_MAPS`` and build the int64 (K,) target vector."""
    if name is None:
        raise UserError(
            "noise variant 'asym' needs a class map but none was given; set noise.asym_map "
            f"(or dataset.asym_map) to one of {sorted(ASYM_MAPS)} ({_DATASET_MAP_HINT})"
        )
    if name not in ASYM_MAPS:
        raise UserError(
            f"unknown asymmetric map {name!r}; set noise.asym_map to one of {sorted(ASYM_MAPS)} "
            f"({_DATASET_MAP_HINT})"
        )
    target = np.asarray(ASYM_MAPS[name](num_classes, rng, superclass), dtype=np.int64)
    if target.shape != (num_classes,) or target.min() < 0 or target.max() >= num_classes:
        raise UserError(
            f"asymmetric map {name!r} references classes outside [0, {num_classes}); choose a "
            f"map that fits this dataset with noise.asym_map ({_DATASET_MAP_HINT})"
        )
    return target


# --------------------------------------------------------------------------------------------
# Variants


@register_noise("none")
def _noise_none(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """No noise: the clean labels."""
    return labels.copy()


@register_noise("sym_incl")
def _noise_sym_incl(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Symmetric, include the true class (DivideMix/ELR): exactly round(r*N) samples, chosen
    without replacement, relabelled uniformly over all K classes. E[wrong] = r(1 - 1/K)."""
    noisy = labels.copy()
    k = _round_half_up(rate * labels.shape[0])
    idx = rng.choice(labels.shape[0], size=k, replace=False)
    noisy[idx] = rng.integers(0, num_classes, size=k)
    return noisy


@register_noise("sym_excl")
def _noise_sym_excl(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Symmetric, exclude the true class, per-sample draw: T = (1-r) I + r/(K-1) (1 - I)."""
    flip = rng.random(labels.shape[0]) < rate
    return np.where(flip, _random_other_class(labels, num_classes, rng), labels)


@register_noise("sym_balanced")
def _noise_sym_balanced(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Symmetric, exact and class-balanced (SCE): exactly round(r*n_c) samples of each class c
    move to one of the other K-1 classes, uniformly."""
    noisy = labels.copy()
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        k = _round_half_up(rate * idx.shape[0])
        if k:
            chosen = rng.choice(idx, size=k, replace=False)
            noisy[chosen] = _random_other_class(labels[chosen], num_classes, rng)
    return noisy


@register_noise("asym", uses_asym_map=True)
def _noise_asym(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Class-dependent (Tanaka 2018 for CIFAR-10, Patrini 2017 for digits, ...): exactly
    round(r*n_c) clean samples of every source class c go to map[c]."""
    target = build_asym_map(asym_map, num_classes, rng, superclass)
    return _flip_exact_per_class(labels, target, rate, rng)


@register_noise("pairflip")
def _noise_pairflip(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Pair flip (Han et al. 2018, Co-teaching): c -> (c + 1) mod K, exactly round(r*n_c) of
    every class, drawn from the clean labels."""
    target = (np.arange(num_classes, dtype=np.int64) + 1) % num_classes
    return _flip_exact_per_class(labels, target, rate, rng)


def _truncated_normal(mean: float, std: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Samples of N(mean, std^2) conditioned on (0, 1), by rejection."""
    out = np.empty(size)
    filled = 0
    while filled < size:
        draw = rng.normal(mean, std, size=2 * (size - filled) + 16)
        draw = draw[(draw > 0.0) & (draw < 1.0)][: size - filled]
        out[filled : filled + draw.shape[0]] = draw
        filled += draw.shape[0]
    return out


@register_noise("idn")
def _noise_idn(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
    """Instance-dependent noise, Xia et al. 2020 ("Part-dependent label noise"), the generation
    algorithm of their appendix / official ``get_instance_noisy_label``:

    1. q_i ~ N(r, 0.1^2) truncated to (0, 1);
    2. for each class y, W_y in R^{D x K} with i.i.d. N(0, 1) entries;
    3. s_i = x_i W_{y_i}; s_i[y_i] = -inf; p_i = q_i softmax(s_i); p_i[y_i] = 1 - q_i;
    4. noisy_i ~ Categorical(p_i).

    ``x_i`` is the flattened image as float; the official code feeds raw pixel values (0..255),
    which makes softmax(s_i) nearly one-hot. Scaling x only sharpens or flattens the choice of
    the wrong class; the flip probability q_i does not depend on it.
    """
    if features is None:
        raise UserError(
            "noise variant 'idn' needs per-sample features (the flattened training images) but "
            "none were given; pass features=train_images to inject_noise or pick another "
            "noise variant"
        )
    n = labels.shape[0]
    x = np.asarray(features)
    x = x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1)
    if x.shape[0] != n:
        raise UserError(
            f"idn features have {x.shape[0]} rows but there are {n} labels; pass one feature "
            "row (flattened image) per training sample"
        )
    if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)):
        raise UserError(f"idn features must be real numbers, got dtype {x.dtype}; pass images")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise UserError("idn features contain NaN or infinity; pass finite image values")
    q = _truncated_normal(rate, 0.1, n, rng)  # step 1
    u = rng.random(n)  # one uniform per sample for step 4
    noisy = labels.copy()
    chunk = max(1, 2**22 // x.shape[1])  # rows per matmul: ~32 MB of float64 scores input
    for c in range(num_classes):  # W_c is drawn for every class, in class order (determinism)
        w = rng.standard_normal((x.shape[1], num_classes))  # step 2
        idx = np.flatnonzero(labels == c)
        for start in range(0, idx.shape[0], chunk):
            part = idx[start : start + chunk]
            scores = x[part].astype(np.float64) @ w  # step 3
            scores[:, c] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            p = np.exp(scores)
            p *= (q[part] / p.sum(axis=1))[:, None]
            p[:, c] = 1.0 - q[part]
            cdf = np.cumsum(p, axis=1)  # step 4: inverse-CDF draw from p_i
            pick = (cdf <= (u[part] * cdf[:, -1])[:, None]).sum(axis=1)
            noisy[part] = np.minimum(pick, num_classes - 1)
    return noisy


def _make_human_variant(name: str) -> NoiseFn:
    def _human(labels, num_classes, rate, rng, *, asym_map, superclass, features):  # noqa: PLR0913
        raise UserError(
            f"noise variant {name!r} reads real human labels from the CIFAR-N file and cannot be "
            "drawn; call apply_noise with file=... (noise.file in the noise config)"
        )

    _human.__doc__ = f"CIFAR-N set {name!r} (read by apply_noise from the official file)."
    _human.human = True  # type: ignore[attr-defined]
    return _human


for _name in HUMAN_SETS:
    register_noise(_name)(_make_human_variant(_name))


# --------------------------------------------------------------------------------------------
# Public entry points


def _check_labels(labels: np.ndarray, num_classes: int, what: str = "clean labels") -> np.ndarray:
    return check_labels(labels, what, "check num_classes against the dataset", num_classes)


def inject_noise(  # noqa: PLR0913
    variant: str,
    clean_labels: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    *,
    asym_map: str | None = None,
    superclass: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Return int64 noisy labels for ``clean_labels`` under noise ``variant`` at nominal ``rate``.

    Dispatches through ``NOISE_VARIANTS`` (see the module docstring for each convention, REFERENCE
    section 4, and the BSD paper, Section 4.2.3). ``asym_map`` is used only by ``asym``,
    ``superclass`` only by the ``cifar100_superclass`` map, ``features`` ((N, ...) numbers) only
    by ``idn``; passing them to other variants is harmless. The input is never modified; the same
    inputs and ``seed`` give the same output (``np.random.default_rng(seed)``).
    """
    if variant not in NOISE_VARIANTS:
        raise UserError(
            f"unknown noise variant {variant!r}; set noise.variant to one of "
            f"{sorted(NOISE_VARIANTS)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise UserError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise UserError(f"noise rate must be a number in [0, 1), got {rate!r}") from None
    if not (0.0 <= rate < 1.0):
        raise UserError(f"noise rate must be in [0, 1), got {rate}; set noise.rate, e.g. 0.2")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"noise seed must be a non-negative integer, got {seed!r}; set noise.seed")
    labels = _check_labels(clean_labels, int(num_classes))
    if rate == 0.0:
        return labels
    rng = np.random.default_rng(seed)
    noisy = NOISE_VARIANTS[variant](
        labels,
        int(num_classes),
        rate,
        rng,
        asym_map=asym_map,
        superclass=superclass,
        features=features,
    )
    return np.ascontiguousarray(noisy, dtype=np.int64)


def label_hash(labels: np.ndarray) -> str:
    """SHA-256 hex digest of the labels as little-endian int64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical T[i, j] = #(clean = i, noisy = j) / #(clean = i); rows of absent classes are 0."""
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (np.asarray(clean), np.asarray(noisy)), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


@dataclass
class NoiseRecord:
    """What every run records about its label noise (REFERENCE.md section 4, last item)."""

    variant: str
    asym_map: str | None
    nominal_rate: float
    realised_rate: float  # fraction of labels != clean
    seed: int
    sha256: str  # of the noisy labels, little-endian int64
    transition: list[list[float]]  # T[i][j] = P(noisy = j | clean = i), empirical
    num_classes: int
    label_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def make_noise_record(  # noqa: PLR0913
    clean_labels: np.ndarray,
    noisy_labels: np.ndarray,
    num_classes: int,
    *,
    variant: str,
    nominal_rate: float,
    seed: int,
    asym_map: str | None = None,
    label_file: str | os.PathLike[str] | None = None,
) -> NoiseRecord:
    """Summarise a noisy-label vector against the clean one."""
    clean = np.asarray(clean_labels)
    noisy = np.asarray(noisy_labels)
    if clean.shape != noisy.shape:
        raise UserError(
            f"clean labels {clean.shape} and noisy labels {noisy.shape} differ in shape; "
            "record the noise of the same training set"
        )
    return NoiseRecord(
        variant=variant,
        asym_map=asym_map,
        nominal_rate=float(nominal_rate),
        realised_rate=float(np.mean(clean != noisy)) if clean.size else 0.0,
        seed=int(seed),
        sha256=label_hash(noisy),
        transition=transition_matrix(clean, noisy, num_classes).tolist(),
        num_classes=int(num_classes),
        label_file=None if label_file is None else str(label_file),
    )


def save_labels(path: str | os.PathLike[str], labels: np.ndarray) -> Path:
    """Write labels as an int64 ``.npy`` file atomically (temp file + ``os.replace``)."""
    path = Path(path)
    array = np.ascontiguousarray(labels, dtype="<i8")
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))
    return path


def _looks_like_text(path: Path) -> bool:
    """Whether the first KiB of ``path`` decodes as UTF-8 text without NUL bytes."""
    with open(path, "rb") as f:
        head = f.read(1024)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def load_labels(path: str | os.PathLike[str], num_samples: int, num_classes: int) -> np.ndarray:
    """Read a label file written by :func:`save_labels` (config key ``noise.label_file``) and
    check it fits the training set: N entries, integers in [0, K)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(
            f"noise label file {str(path)!r} is a directory, not a file; point noise.label_file "
            "at the .npy file or set it to null to generate noise"
        )
    if not path.is_file():
        raise UserError(
            f"noise label file {str(path)!r} does not exist; fix noise.label_file or set it to "
            "null to generate noise"
        )
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise UserError(
            f"noise label file {str(path)!r} cannot be read ({exc.strerror}); fix its "
            "permissions or set noise.label_file to null"
        ) from None
    if not magic.startswith((b"\x93NUMPY", b"PK\x03\x04")):  # .npy, or .npz (refused below)
        kind = "a text file" if _looks_like_text(path) else "not a .npy file"
        raise UserError(
            f"noise label file {str(path)!r} is {kind} (no .npy header); save the labels with "
            "numpy.save (int64 vector, one class index per training image) or set "
            "noise.label_file to null"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(
            f"noise label file {str(path)!r} is not a readable .npy array ({exc}); regenerate it "
            "or set noise.label_file to null"
        ) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise UserError(
            f"noise label file {str(path)!r} is an archive, not a single .npy array; save one "
            "label vector with save_labels"
        )
    if arr.ndim != 1 or arr.shape[0] != num_samples:
        raise UserError(
            f"noise label file {str(path)!r} holds shape {arr.shape} but the training set has "
            f"{num_samples} samples; use the label file saved for this dataset and split"
        )
    return _check_labels(arr, num_classes, what=f"labels in {str(path)!r}")


def apply_noise(  # noqa: PLR0913
    clean_labels: np.ndarray,
    num_classes: int,
    *,
    variant: str,
    rate: float,
    seed: int,
    asym_map: str | None = None,
    label_file: str | os.PathLike[str] | None = None,
    superclass: np.ndarray | None = None,
    features: np.ndarray | None = None,
    file: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> tuple[np.ndarray, NoiseRecord]:
    """The run's one call: noisy labels and their record, from the ``noise`` config group.

    With ``label_file`` set, the labels are read from it (reproducing exactly the noise that
    produced the file) instead of being generated; the record then names the file.

    A CIFAR-N variant (``cifar10n_*``, ``cifar100n_*``) reads its label set from the official
    file ``file`` (``noise.file``), fetched first when missing if ``download`` is true, and
    verified against ``clean_labels`` (:func:`noisybench.data.cifarn.read_human_labels`); its
    record names the file in ``label_file`` and holds the realised rate, the empirical
    transition matrix and the labels' sha256 like any other variant.
    """
    if variant in HUMAN_SETS and label_file is None:
        if file is None:
            raise UserError(
                f"noise variant {variant!r} needs the CIFAR-N label file; set noise.file to the "
                f"path of {HUMAN_SETS[variant].file}"
            )
        clean = _check_labels(clean_labels, num_classes)
        noisy = read_human_labels(variant, file, clean, num_classes, download=download)
        label_file = file
    elif label_file is not None:
        clean = _check_labels(clean_labels, num_classes)
        noisy = load_labels(label_file, clean.shape[0], num_classes)
    else:
        clean = clean_labels
        noisy = inject_noise(
            variant,
            clean_labels,
            num_classes,
            rate,
            seed,
            asym_map=asym_map,
            superclass=superclass,
            features=features,
        )
    uses_map = getattr(NOISE_VARIANTS.get(variant), "uses_asym_map", False)
    record = make_noise_record(
        clean,
        noisy,
        num_classes,
        variant=variant,
        nominal_rate=rate,
        seed=seed,
        asym_map=asym_map if uses_map else None,
        label_file=label_file,
    )
    return noisy, record
