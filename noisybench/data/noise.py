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
  CIFAR-N file (:mod:`noisybench.data.cifarn`) by :class:`HumanNoise` (``noise.file``);
  nothing is drawn, so rate and seed only go into the record.

Each variant is a :class:`Noise` class whose own parameters are its constructor's (``asym_map``
of :class:`Asym`; ``label_set``, ``file``, ``download`` of :class:`HumanNoise`), built from
``conf/noise/NAME.yaml`` by its ``_target_`` (:func:`noisybench.build.noise_variant`), so a
variant can also live outside noisybench. Every variant draws from
``np.random.default_rng(seed)`` only, never mutates its input, and returns int64 labels. A
nominal rate of 0 returns the clean labels for every drawn variant.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from noisybench.data.cifarn import HUMAN_SETS, read_human_labels
from noisybench.data.labels_file import check_labels
from noisybench.errors import UserError
from noisybench.io import atomic_write

__all__ = [
    "ASYM_MAPS",
    "NOISE_VARIANTS",
    "Noise",
    "NoiseData",
    "NoiseRecord",
    "apply_noise",
    "build_asym_map",
    "inject_noise",
    "label_hash",
    "load_labels",
    "make_noise_record",
    "noise_by_name",
    "noise_data",
    "noisy_labels",
    "register_asym_map",
    "register_noise",
    "save_labels",
    "transition_matrix",
]


@dataclass(frozen=True)
class NoiseData:
    """What a noise variant draws from: the training set's clean labels (validated int64) and
    number of classes, and what the dataset provides besides (``superclass``: fine -> coarse
    class; ``features``: the (N, ...) training images, for ``idn``; ``asym_map``: the dataset's
    default class map, ``dataset.asym_map``). Every variant gets the same object and reads what
    it needs, so a variant's own parameters live on the variant, never in a shared signature."""

    labels: np.ndarray
    num_classes: int
    superclass: np.ndarray | None = None
    features: np.ndarray | None = None
    asym_map: str | None = None


class Noise:
    """A noise variant: built from its ``conf/noise/NAME.yaml`` (``_target_`` plus the variant's
    own parameters as constructor arguments, through :func:`noisybench.config.instantiate`),
    then asked for the noisy labels of a training set.

    A subclass implements :meth:`draw`; ``variant`` is the name the run records (the config's
    ``noise.variant`` must equal it). The nominal rate and the seed are the same for every
    variant (``noise.rate``, ``noise.seed``; the paper presets and the record read them), so
    they are arguments, not parameters.
    """

    variant: ClassVar[str] = ""
    uses_asym_map: ClassVar[bool] = False  # check_config validates the map of such variants

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        """The noisy labels at nominal ``rate`` (0 < rate < 1), drawn from ``rng`` only; never
        modifies ``data.labels``."""
        raise NotImplementedError

    def labels(self, data: NoiseData, rate: float, seed: int) -> np.ndarray:
        """Validated ``rate`` and ``seed``; the clean labels at rate 0, else :meth:`draw` from
        ``np.random.default_rng(seed)``, as contiguous int64."""
        rate = _check_rate(rate)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise UserError(
                f"noise seed must be a non-negative integer, got {seed!r}; set noise.seed"
            )
        if rate == 0.0:
            return data.labels
        noisy = self.draw(data, rate, np.random.default_rng(seed))
        return np.ascontiguousarray(noisy, dtype=np.int64)

    def map_name(self, data: NoiseData) -> str | None:
        """The class map the record names (None: the variant uses none)."""
        return None

    def source(self) -> str | None:
        """The file the labels were read from, for the record (None: drawn)."""
        return None


N = TypeVar("N", bound=Noise)

AsymMapFn = Callable[[int, np.random.Generator, "np.ndarray | None"], np.ndarray]

NOISE_VARIANTS: dict[str, type[Noise]] = {}
"""Variant name -> the :class:`Noise` class that draws it (the shipped ones; a variant from
outside noisybench needs no entry: its ``conf/noise`` file names its class by ``_target_``)."""

ASYM_MAPS: dict[str, AsymMapFn] = {}
"""Map name -> ``f(num_classes, rng, superclass) -> target`` (int64 (K,), target[c] == c means
class c is not a source class). Add one with ``@register_asym_map("name")``."""

# Which map each dataset uses by default (documentation for error messages; the dataset config
# supplies the actual default as ``dataset.asym_map``).
_DATASET_MAP_HINT = (
    "digits/MNIST: digits; CIFAR-10: cifar10_tanaka; CIFAR-100: cifar100_block_next, "
    "cifar100_block_pair or cifar100_superclass"
)


def register_noise(name: str) -> Callable[[type[N]], type[N]]:
    """Register a :class:`Noise` class under ``name`` in :data:`NOISE_VARIANTS`, so that the
    name-based helpers (:func:`inject_noise`, :func:`apply_noise`) and ``noise.variant`` find it.
    A class without a ``variant`` of its own takes ``name``."""

    def decorator(cls: type[N]) -> type[N]:
        if name in NOISE_VARIANTS:
            raise ValueError(f"noise variant {name!r} is registered twice")
        if not cls.__dict__.get("variant"):
            cls.variant = name
        NOISE_VARIANTS[name] = cls
        return cls

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
class NoNoise(Noise):
    """No noise: the clean labels."""

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        return data.labels.copy()


@register_noise("sym_incl")
class SymIncl(Noise):
    """Symmetric, include the true class (DivideMix/ELR): exactly round(r*N) samples, chosen
    without replacement, relabelled uniformly over all K classes. E[wrong] = r(1 - 1/K)."""

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
        noisy = labels.copy()
        k = _round_half_up(rate * labels.shape[0])
        idx = rng.choice(labels.shape[0], size=k, replace=False)
        noisy[idx] = rng.integers(0, num_classes, size=k)
        return noisy


@register_noise("sym_excl")
class SymExcl(Noise):
    """Symmetric, exclude the true class, per-sample draw: T = (1-r) I + r/(K-1) (1 - I)."""

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
        flip = rng.random(labels.shape[0]) < rate
        return np.where(flip, _random_other_class(labels, num_classes, rng), labels)


@register_noise("sym_balanced")
class SymBalanced(Noise):
    """Symmetric, exact and class-balanced (SCE): exactly round(r*n_c) samples of each class c
    move to one of the other K-1 classes, uniformly."""

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
        noisy = labels.copy()
        for c in range(num_classes):
            idx = np.flatnonzero(labels == c)
            k = _round_half_up(rate * idx.shape[0])
            if k:
                chosen = rng.choice(idx, size=k, replace=False)
                noisy[chosen] = _random_other_class(labels[chosen], num_classes, rng)
        return noisy


@register_noise("asym")
@dataclass
class Asym(Noise):
    """Class-dependent (Tanaka 2018 for CIFAR-10, Patrini 2017 for digits, ...): exactly
    round(r*n_c) clean samples of every source class c go to map[c]."""

    asym_map: str | None = None  # a name in ASYM_MAPS; None: the dataset's default map
    uses_asym_map: ClassVar[bool] = True

    def map_name(self, data: NoiseData) -> str | None:
        """The map in use: this variant's ``asym_map``, else the dataset's."""
        return self.asym_map or data.asym_map

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
        asym_map, superclass = self.map_name(data), data.superclass
        target = build_asym_map(asym_map, num_classes, rng, superclass)
        return _flip_exact_per_class(labels, target, rate, rng)


@register_noise("pairflip")
class PairFlip(Noise):
    """Pair flip (Han et al. 2018, Co-teaching): c -> (c + 1) mod K, exactly round(r*n_c) of
    every class, drawn from the clean labels."""

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
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
class InstanceDependent(Noise):
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

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        labels, num_classes = data.labels, data.num_classes
        features = data.features
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


@dataclass
class HumanNoise(Noise):
    """Real human annotations, CIFAR-N (Wei et al. 2022): ``label_set`` (``cifar10n_aggre``,
    ``cifar10n_random1..3``, ``cifar10n_worse``, ``cifar100n_noisy``, ``cifar100n_noisy_coarse``)
    read from the official file ``file`` (fetched first when missing if ``download``) and
    verified against the clean labels (:func:`noisybench.data.cifarn.read_human_labels`).
    Nothing is drawn: the rate (the published realised rate) and the seed only go into the
    record, and the record names ``file`` as its label file."""

    label_set: str
    file: str | os.PathLike[str] | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.label_set not in HUMAN_SETS:
            raise UserError(
                f"unknown CIFAR-N label set {self.label_set!r}; set noise.variant to one of "
                f"{sorted(HUMAN_SETS)}"
            )
        self.variant = self.label_set  # type: ignore[misc]  # the record's name

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        raise UserError(
            f"noise variant {self.label_set!r} reads real human labels from the CIFAR-N file and "
            "cannot be drawn; call apply_noise with file=... (noise.file in the noise config)"
        )

    def labels(self, data: NoiseData, rate: float, seed: int) -> np.ndarray:
        """The label set read from ``file`` (whatever the rate and seed)."""
        if self.file is None:
            raise UserError(
                f"noise variant {self.label_set!r} needs the CIFAR-N label file; set noise.file "
                f"to the path of {HUMAN_SETS[self.label_set].file}"
            )
        return read_human_labels(
            self.label_set, self.file, data.labels, data.num_classes, download=self.download
        )

    def source(self) -> str | None:
        """The official file, named in the record like a saved label file."""
        return None if self.file is None else str(self.file)


for _name in HUMAN_SETS:
    NOISE_VARIANTS[_name] = HumanNoise


# --------------------------------------------------------------------------------------------
# Public entry points

# The keys of a ``conf/noise`` file that every variant shares (read by the run, the record,
# the paper presets and the report); the remaining keys but ``_target_`` are the variant's own
# constructor arguments.
SHARED_KEYS: tuple[str, ...] = (
    "name",
    "variant",
    "rate",
    "seed",
    "setting",
    "preset_rate",
    "label_file",
)
_DATA_KEYS = ("superclass", "features")


def _check_labels(labels: np.ndarray, num_classes: int, what: str = "clean labels") -> np.ndarray:
    return check_labels(labels, what, "check num_classes against the dataset", num_classes)


def _check_rate(rate: Any) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise UserError(f"noise rate must be a number in [0, 1), got {rate!r}") from None
    if not (0.0 <= rate < 1.0):
        raise UserError(f"noise rate must be in [0, 1), got {rate}; set noise.rate, e.g. 0.2")
    return rate


def noise_data(clean_labels: np.ndarray, num_classes: int, **given: Any) -> NoiseData:
    """Validated :class:`NoiseData`: the labels checked against ``num_classes``; ``given`` may
    hold ``superclass``, ``features`` and ``asym_map`` (the dataset's default map)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise UserError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    labels = _check_labels(clean_labels, int(num_classes))
    return NoiseData(labels, int(num_classes), **given)


def noise_by_name(variant: str, options: dict[str, Any]) -> Noise:
    """The registered variant ``variant`` built from those of ``options`` its constructor
    takes (the name-based helpers below pass one set of options to every variant, as the
    pre-``_target_`` configs did: ``asym_map`` is ignored by all but ``asym``)."""
    if variant not in NOISE_VARIANTS:
        raise UserError(
            f"unknown noise variant {variant!r}; set noise.variant to one of "
            f"{sorted(NOISE_VARIANTS)}"
        )
    cls = NOISE_VARIANTS[variant]
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    if "label_set" in accepted:
        kwargs["label_set"] = variant
    return cls(**kwargs)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = {k: options.pop(k) for k in _DATA_KEYS if k in options}
    return data, options


def inject_noise(
    variant: str,
    clean_labels: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    **options: Any,
) -> np.ndarray:
    """Return int64 noisy labels for ``clean_labels`` under the registered noise ``variant`` at
    nominal ``rate``.

    Dispatches through ``NOISE_VARIANTS`` (see the module docstring for each convention,
    REFERENCE section 4, and the BSD paper, Section 4.2.3). ``options`` holds what the dataset
    provides (``superclass``, used only by the ``cifar100_superclass`` map; ``features``,
    (N, ...) numbers, only by ``idn``) and the variant's own parameters (``asym_map`` of
    ``asym``); passing them to other variants is harmless. The input is never modified; the
    same inputs and ``seed`` give the same output (``np.random.default_rng(seed)``).
    """
    data, params = _split(dict(options))
    noise = noise_by_name(variant, params)
    # Noise.labels, not noise.labels: drawn, never read (a CIFAR-N set cannot be drawn).
    return Noise.labels(noise, noise_data(clean_labels, num_classes, **data), rate, seed)


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


def noisy_labels(
    noise: Noise,
    data: NoiseData,
    *,
    rate: float,
    seed: int,
    label_file: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, NoiseRecord]:
    """The run's one call: the noisy labels of ``noise`` (built from the ``noise`` config
    group) and their record.

    With ``label_file`` set, the labels are read from it (reproducing exactly the noise that
    produced the file) instead of being generated; the record then names the file. A CIFAR-N
    variant reads its official file and names it the same way (:class:`HumanNoise`); every
    record holds the realised rate, the empirical transition matrix and the labels' sha256.
    """
    if label_file is not None:
        noisy = load_labels(label_file, data.labels.shape[0], data.num_classes)
    else:
        noisy = noise.labels(data, rate, seed)
    record = make_noise_record(
        data.labels,
        noisy,
        data.num_classes,
        variant=noise.variant,
        nominal_rate=rate,
        seed=seed,
        asym_map=noise.map_name(data),
        label_file=label_file if label_file is not None else noise.source(),
    )
    return noisy, record


def apply_noise(
    clean_labels: np.ndarray,
    num_classes: int,
    *,
    variant: str,
    rate: float,
    seed: int,
    **options: Any,
) -> tuple[np.ndarray, NoiseRecord]:
    """:func:`noisy_labels` of the registered ``variant``, by name (tests, scripts).

    ``options``: ``label_file`` (see :func:`noisy_labels`), what the dataset provides
    (``superclass``, ``features``) and the variant's own parameters (``asym_map`` of ``asym``,
    ``file`` and ``download`` of a CIFAR-N set); a variant ignores the parameters of others.
    """
    label_file = options.pop("label_file", None)
    given, params = _split(dict(options))
    noise = noise_by_name(variant, params)
    data = noise_data(clean_labels, num_classes, **given)
    return noisy_labels(noise, data, rate=rate, seed=seed, label_file=label_file)
