"""Tests for noisybench.data.noise against numbers worked out independently.

Expected rates and transition matrices come from the definitions in REFERENCE.md section 4
(written out again here by hand), tolerances from the binomial spread of the random part.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from noisybench.data import noise as nz
from noisybench.data.noise import (
    ASYM_MAPS,
    NOISE_VARIANTS,
    NoiseRecord,
    apply_noise,
    inject_noise,
    label_hash,
    load_labels,
    make_noise_record,
    register_noise,
    save_labels,
)
from noisybench.errors import UserError

CONF_NOISE = Path(__file__).resolve().parents[1] / "conf" / "noise"

# CIFAR-10 class indices: 0 airplane 1 automobile 2 bird 3 cat 4 deer 5 dog 6 frog 7 horse
# 8 ship 9 truck. Tanaka 2018: truck->automobile, bird->airplane, deer->horse, cat<->dog.
TANAKA = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
PATRINI_DIGITS = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


def rhu(x: float) -> int:
    """round half up."""
    return math.floor(x + 0.5)


def counts_matrix(clean, noisy, k):
    """Joint counts C[i, j] = #(clean = i, noisy = j), by a plain loop."""
    c = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(clean.tolist(), noisy.tolist(), strict=True):
        c[a, b] += 1
    return c


def map_transition(mapping: dict[int, int], k: int, r: float) -> np.ndarray:
    t = np.eye(k)
    for s, d in mapping.items():
        t[s, s] = 1 - r
        t[s, d] = r
    return t


def binom_tol(p: float, n: int, z: float = 5.0) -> float:
    """z standard deviations of a binomial proportion."""
    return z * math.sqrt(p * (1 - p) / n)


def truncnorm_mean(mu: float, sigma: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """Mean of N(mu, sigma^2) truncated to (lo, hi)."""
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    return mu + sigma * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.target.astype(np.int64), d.data


@pytest.fixture(scope="module")
def balanced10():
    return np.repeat(np.arange(10), 1000)


@pytest.fixture(scope="module")
def cifar10_like():
    # 50,000 balanced labels in a shuffled order, like CIFAR-10's training set.
    return np.random.default_rng(123).permutation(np.repeat(np.arange(10), 5000))


# ------------------------------------------------------------------ symmetric variants


def test_none_and_zero_rate_return_clean(digits):
    y, _ = digits
    assert np.array_equal(inject_noise("none", y, 10, 0.5, 0), y)
    for v in ("sym_incl", "sym_excl", "sym_balanced", "pairflip"):
        assert np.array_equal(inject_noise(v, y, 10, 0.0, 0), y)


def test_sym_incl_rate_is_r_times_one_minus_one_over_k(balanced10, digits):
    # sym80, K=10: round(0.8 N) samples redrawn uniformly over all 10 classes, each stays with
    # probability 1/10, so the wrong count is Binomial(0.8 N, 0.9): 72% realised.
    for y, r in ((balanced10, 0.8), (digits[0], 0.5), (digits[0], 0.2)):
        n = y.shape[0]
        m = rhu(r * n)
        noisy = inject_noise("sym_incl", y, 10, r, seed=1)
        wrong = int((noisy != y).sum())
        assert wrong <= m
        assert abs(wrong - 0.9 * m) <= 5 * math.sqrt(m * 0.9 * 0.1)
    noisy = inject_noise("sym_incl", balanced10, 10, 0.8, seed=1)
    assert abs((noisy != balanced10).mean() - 0.72) < 0.015


def test_sym_incl_redraws_include_true_class():
    # K=2, r=0.9: include-true-class keeps half the chosen labels, so ~0.45 change, while an
    # exclude-true-class draw would change ~0.9.
    y = np.repeat(np.arange(2), 10000)
    noisy = inject_noise("sym_incl", y, 2, 0.9, seed=0)
    m = rhu(0.9 * y.shape[0])  # 18000 redrawn, each wrong with probability 1/2
    assert abs(int((noisy != y).sum()) - m / 2) <= 5 * math.sqrt(m * 0.25)


def test_sym_excl_transition_is_uniform_off_diagonal(balanced10, digits):
    r, k = 0.5, 10
    y = np.repeat(np.arange(k), 2000)
    noisy = inject_noise("sym_excl", y, k, r, seed=2)
    assert abs((noisy != y).mean() - r) < binom_tol(r, y.shape[0])
    t = counts_matrix(y, noisy, k) / 2000
    off = r / (k - 1)
    for i in range(k):
        assert abs(t[i, i] - (1 - r)) < binom_tol(1 - r, 2000)
        for j in range(k):
            if j != i:
                assert abs(t[i, j] - off) < binom_tol(off, 2000)
    yd = digits[0]
    noisy = inject_noise("sym_excl", yd, k, 0.8, seed=2)
    assert abs((noisy != yd).mean() - 0.8) < binom_tol(0.8, yd.shape[0])


def test_sym_balanced_exact_per_class_counts(digits):
    y = digits[0]
    for r in (0.2, 0.4, 0.8):
        noisy = inject_noise("sym_balanced", y, 10, r, seed=3)
        expected_total = 0
        for c in range(10):
            n_c = int((y == c).sum())
            changed = int(((y == c) & (noisy != y)).sum())
            assert changed == rhu(r * n_c)
            expected_total += rhu(r * n_c)
        assert (noisy != y).sum() == expected_total
        assert abs((noisy != y).mean() - r) < 10 / y.shape[0]


def test_sym_balanced_targets_uniform_over_other_classes():
    k, r, n_c = 10, 0.5, 4000
    y = np.repeat(np.arange(k), n_c)
    noisy = inject_noise("sym_balanced", y, k, r, seed=4)
    cm = counts_matrix(y, noisy, k)
    moved = rhu(r * n_c)
    p = 1 / (k - 1)
    for i in range(k):
        assert cm[i, i] == n_c - moved
        for j in range(k):
            if j != i:
                assert abs(cm[i, j] / moved - p) < binom_tol(p, moved)


# ------------------------------------------------------------------ asymmetric variants


@pytest.mark.parametrize("r", [0.1, 0.2, 0.3, 0.4])
def test_asym_cifar10_exact_matrix_on_balanced(cifar10_like, r):
    y = cifar10_like
    noisy = inject_noise("asym", y, 10, r, seed=5, asym_map="cifar10_tanaka")
    t = counts_matrix(y, noisy, 10) / 5000
    np.testing.assert_allclose(t, map_transition(TANAKA, 10, r), atol=1e-12)
    assert (noisy != y).mean() == pytest.approx(r * 5 / 10, abs=1e-12)


def test_asym_cat_dog_no_double_flip():
    # Unequal class sizes: cats and dogs are both sources and both targets. Every clean cat is
    # drawn once, from the clean labels: exactly n_cat - round(r n_cat) cats stay cats.
    rng = np.random.default_rng(7)
    sizes = rng.integers(300, 900, size=10)
    y = rng.permutation(np.repeat(np.arange(10), sizes))
    r = 0.45
    noisy = inject_noise("asym", y, 10, r, seed=8, asym_map="cifar10_tanaka")
    cm = counts_matrix(y, noisy, 10)
    for c in range(10):
        n_c = int(sizes[c])
        if c in TANAKA:
            assert cm[c, c] == n_c - rhu(r * n_c)
            assert cm[c, TANAKA[c]] == rhu(r * n_c)
        else:
            assert cm[c, c] == n_c
    assert (noisy != y).sum() == sum(rhu(r * int(sizes[c])) for c in TANAKA)


@pytest.mark.parametrize("r", [0.2, 0.4])
def test_asym_digits_patrini(digits, r):
    y = digits[0]
    noisy = inject_noise("asym", y, 10, r, seed=9, asym_map="digits")
    cm = counts_matrix(y, noisy, 10)
    total = 0
    for c in range(10):
        n_c = int((y == c).sum())
        if c in PATRINI_DIGITS:
            k = rhu(r * n_c)
            assert cm[c, PATRINI_DIGITS[c]] == k and cm[c, c] == n_c - k
            total += k
        else:
            assert cm[c, c] == n_c
    assert (noisy != y).sum() == total
    # 2 -> 7 and 7 -> 1: a flipped 2 stays 7 (never moved on to 1).
    assert cm[2, 1] == 0


def test_pairflip_next_class(digits):
    y = digits[0]
    r = 0.45
    noisy = inject_noise("pairflip", y, 10, r, seed=10)
    cm = counts_matrix(y, noisy, 10)
    for c in range(10):
        n_c = int((y == c).sum())
        assert cm[c, (c + 1) % 10] == rhu(r * n_c)
        assert cm[c, c] == n_c - rhu(r * n_c)
    assert abs((noisy != y).mean() - r) < 10 / y.shape[0]


def test_counts_round_half_up():
    # r * n_c = 0.25 * 10 = 2.5 exactly: the documented convention rounds halves up, to 3
    # (Python's round() would give 2).
    y = np.repeat(np.arange(10), 10)
    for variant, kw in (("sym_balanced", {}), ("pairflip", {}), ("asym", {"asym_map": "digits"})):
        noisy = inject_noise(variant, y, 10, 0.25, seed=0, **kw)
        changed = [int(((y == c) & (noisy != y)).sum()) for c in range(10)]
        sources = range(10) if variant != "asym" else sorted(PATRINI_DIGITS)
        assert all(changed[c] == 3 for c in sources)
    noisy = inject_noise("sym_incl", np.zeros(10, dtype=np.int64), 2, 0.25, seed=0)
    assert (noisy != 0).sum() <= 3


def _c100(n_c=50):
    return np.random.default_rng(11).permutation(np.repeat(np.arange(100), n_c))


def test_cifar100_block_next():
    y, r = _c100(), 0.4
    noisy = inject_noise("asym", y, 100, r, seed=12, asym_map="cifar100_block_next")
    mapping = {c: 5 * (c // 5) + (c % 5 + 1) % 5 for c in range(100)}
    assert mapping[4] == 0 and mapping[99] == 95 and mapping[12] == 13
    t = counts_matrix(y, noisy, 100) / 50
    np.testing.assert_allclose(t, map_transition(mapping, 100, r), atol=1e-12)
    assert (noisy != y).mean() == pytest.approx(r)


def test_cifar100_block_pair_one_swap_per_block():
    y, r = _c100(), 0.4
    pairs_by_seed = []
    for seed in (13, 14):
        noisy = inject_noise("asym", y, 100, r, seed=seed, asym_map="cifar100_block_pair")
        cm = counts_matrix(y, noisy, 100)
        pairs = []
        for b in range(20):
            block = range(5 * b, 5 * b + 5)
            sources = [c for c in block if cm[c, c] != 50]
            assert len(sources) == 2
            a, bb = sources
            assert cm[a, bb] == 20 and cm[bb, a] == 20  # round(0.4 * 50), swapped
            assert cm[a, a] == 30 and cm[bb, bb] == 30
            pairs.append((a, bb))
        assert (noisy != y).mean() == pytest.approx(r * 2 / 5)
        pairs_by_seed.append(pairs)
    assert pairs_by_seed[0] != pairs_by_seed[1]


def test_cifar100_true_superclass():
    y, r = _c100(), 0.4
    # 19 groups of 5 in a shuffled assignment plus one class made a singleton (group 20) and one
    # group of 4: fine classes are not contiguous, as in real CIFAR-100.
    sc = np.random.default_rng(15).permutation(np.repeat(np.arange(20), 5))
    sc[int(np.flatnonzero(sc == 0)[0])] = 20
    mapping = {}
    for c in range(100):
        members = sorted(f for f in range(100) if sc[f] == sc[c])
        nxt = members[(members.index(c) + 1) % len(members)]
        if nxt != c:
            mapping[c] = nxt
    assert len(mapping) == 99
    noisy = inject_noise("asym", y, 100, r, seed=16, asym_map="cifar100_superclass", superclass=sc)
    t = counts_matrix(y, noisy, 100) / 50
    np.testing.assert_allclose(t, map_transition(mapping, 100, r), atol=1e-12)


# ------------------------------------------------------------------ instance-dependent


def test_idn_zero_features_uniform_wrong_class():
    # x = 0 gives equal scores, so the wrong class is uniform over the other K-1 and the flip
    # probability is the truncated-normal mean of q.
    k, n_c, r = 10, 2000, 0.4
    y = np.repeat(np.arange(k), n_c)
    noisy = inject_noise("idn", y, k, r, seed=17, features=np.zeros((y.shape[0], 3)))
    m = truncnorm_mean(r, 0.1)
    assert abs((noisy != y).mean() - m) < binom_tol(m, y.shape[0])
    t = counts_matrix(y, noisy, k) / n_c
    for i in range(k):
        for j in range(k):
            p = 1 - m if i == j else m / (k - 1)
            assert abs(t[i, j] - p) < binom_tol(p, n_c)


def test_idn_flip_rate_is_truncated_not_clipped():
    # r = 0.05: truncation to (0, 1) gives E[q] = 0.1009, clipping at 0 would give 0.0698.
    y = np.repeat(np.arange(10), 3000)
    noisy = inject_noise("idn", y, 10, 0.05, seed=18, features=np.zeros((y.shape[0], 1)))
    m = truncnorm_mean(0.05, 0.1)
    assert m == pytest.approx(0.1009, abs=5e-4)
    assert abs((noisy != y).mean() - m) < binom_tol(m, y.shape[0])


def test_idn_wrong_class_follows_projection():
    # All samples of a class share one large feature vector: the softmax over x W_y is then
    # (nearly) one-hot, so every flipped sample of that class lands in the same wrong class.
    k, n_c = 10, 300
    y = np.repeat(np.arange(k), n_c)
    protos = np.random.default_rng(19).uniform(0, 255, size=(k, 64))
    noisy = inject_noise("idn", y, k, 0.4, seed=20, features=protos[y])
    for c in range(k):
        wrong = noisy[(y == c) & (noisy != y)]
        assert wrong.size > 60
        assert np.unique(wrong).size == 1


def test_idn_on_digits_images(digits):
    y, x = digits
    noisy = inject_noise("idn", y, 10, 0.4, seed=21, features=x.reshape(-1, 8, 8))
    assert abs((noisy != y).mean() - 0.4) < binom_tol(0.4, y.shape[0])


# ------------------------------------------------------------------ determinism, purity


CASES = [
    ("sym_incl", {}),
    ("sym_excl", {}),
    ("sym_balanced", {}),
    ("asym", {"asym_map": "digits"}),
    ("pairflip", {}),
    ("idn", {"features": "x"}),
]


@pytest.mark.parametrize(("variant", "kw"), CASES)
def test_deterministic_and_pure(digits, variant, kw):
    y, x = digits
    kw = {k: (x if v == "x" else v) for k, v in kw.items()}
    y32 = y.astype(np.int32)
    y32.flags.writeable = False
    before = y32.copy()
    a = inject_noise(variant, y32, 10, 0.4, seed=5, **kw)
    b = inject_noise(variant, y32, 10, 0.4, seed=5, **kw)
    c = inject_noise(variant, y32, 10, 0.4, seed=6, **kw)
    assert a.dtype == np.int64 and a.shape == y.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(y32, before)
    assert a.min() >= 0 and a.max() < 10


def test_block_pair_map_is_seeded():
    y = _c100()
    a = inject_noise("asym", y, 100, 0.3, seed=1, asym_map="cifar100_block_pair")
    b = inject_noise("asym", y, 100, 0.3, seed=1, asym_map="cifar100_block_pair")
    assert np.array_equal(a, b)


# ------------------------------------------------------------------ record, hash, files


def test_label_hash_matches_hashlib():
    labels = np.array([3, 0, 9, 1, 1, 7], dtype=np.int32)
    expected = hashlib.sha256(struct.pack("<6q", 3, 0, 9, 1, 1, 7)).hexdigest()
    assert label_hash(labels) == expected
    assert label_hash(labels.astype(">i8")) == expected  # byte order of the input is irrelevant


def test_noise_record_fields():
    clean = np.array([0, 0, 0, 0, 1, 1, 3, 3])
    noisy = np.array([0, 1, 1, 3, 1, 0, 3, 3])
    rec = make_noise_record(clean, noisy, 4, variant="sym_excl", nominal_rate=0.5, seed=7)
    assert isinstance(rec, NoiseRecord)
    assert rec.realised_rate == pytest.approx(4 / 8)
    assert rec.transition == [
        [0.25, 0.5, 0.0, 0.25],
        [0.5, 0.5, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # class 2 absent
        [0.0, 0.0, 0.0, 1.0],
    ]
    d = json.loads(json.dumps(rec.to_dict()))
    assert d["sha256"] == hashlib.sha256(struct.pack("<8q", *noisy.tolist())).hexdigest()
    assert d["seed"] == 7 and d["num_classes"] == 4 and d["label_file"] is None
    assert d["variant"] == "sym_excl" and d["asym_map"] is None and d["nominal_rate"] == 0.5


def test_save_load_round_trip_and_reproduce(tmp_path, digits):
    y = digits[0]
    noisy, rec = apply_noise(
        y, 10, variant="asym", rate=0.3, seed=4, asym_map="digits", features=digits[1]
    )
    assert rec.asym_map == "digits" and rec.label_file is None
    path = save_labels(tmp_path / "sub" / "noisy_labels.npy", noisy)
    assert sorted(p.name for p in path.parent.iterdir()) == ["noisy_labels.npy"]  # no temp left
    loaded = load_labels(path, y.shape[0], 10)
    assert loaded.dtype == np.int64 and np.array_equal(loaded, noisy)
    again, rec2 = apply_noise(
        y, 10, variant="asym", rate=0.3, seed=999, asym_map="digits", label_file=str(path)
    )
    assert np.array_equal(again, noisy)
    assert rec2.sha256 == rec.sha256 and rec2.realised_rate == rec.realised_rate
    assert rec2.label_file == str(path)
    # non-asym variants do not record the dataset's default map
    _, rec3 = apply_noise(y, 10, variant="sym_incl", rate=0.2, seed=0, asym_map="digits")
    assert rec3.asym_map is None and rec3.variant == "sym_incl"


def test_save_overwrites_atomically(tmp_path):
    p = tmp_path / "l.npy"
    save_labels(p, np.zeros(5, dtype=np.int64))
    save_labels(p, np.arange(5))
    assert np.array_equal(np.load(p, allow_pickle=False), np.arange(5))
    assert [q.name for q in tmp_path.iterdir()] == ["l.npy"]


# ------------------------------------------------------------------ errors


def _raises(match, fn, *a, **kw):
    with pytest.raises(UserError, match=match) as info:
        fn(*a, **kw)
    assert "\n" not in str(info.value)


def test_errors_inject(digits):
    y, x = digits
    _raises(r"unknown noise variant 'symm'.*sym_incl", inject_noise, "symm", y, 10, 0.2, 0)
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        _raises(r"rate must be in \[0, 1\)", inject_noise, "sym_incl", y, 10, bad, 0)
    _raises(r"needs a class map.*noise.asym_map", inject_noise, "asym", y, 10, 0.2, 0)
    for bad_seed in (None, -1, 1.5, "3"):
        _raises(r"noise seed must be", inject_noise, "sym_incl", y, 10, 0.2, bad_seed)
    _raises(
        r"unknown asymmetric map 'cifar10'.*cifar10_tanaka",
        inject_noise,
        "asym",
        y,
        10,
        0.2,
        0,
        asym_map="cifar10",
    )
    y5 = y % 5
    _raises(
        r"references class 9 .* 5 classes",
        inject_noise,
        "asym",
        y5,
        5,
        0.2,
        0,
        asym_map="cifar10_tanaka",
    )
    y100 = _c100()
    _raises(
        r"defined for 10-class",
        inject_noise,
        "asym",
        y100,
        100,
        0.2,
        0,
        asym_map="cifar10_tanaka",
    )
    _raises(
        r"needs the fine->coarse superclass",
        inject_noise,
        "asym",
        y100,
        100,
        0.2,
        0,
        asym_map="cifar100_superclass",
    )
    _raises(r"blocks of 5", inject_noise, "asym", y % 7, 7, 0.2, 0, asym_map="cifar100_block_next")
    _raises(r"'idn' needs per-sample features", inject_noise, "idn", y, 10, 0.2, 0)
    _raises(r"1797 labels", inject_noise, "idn", y, 10, 0.2, 0, features=x[:100])
    x_nan = x.copy()
    x_nan[3, 5] = np.nan
    _raises(r"NaN or infinity", inject_noise, "idn", y, 10, 0.2, 0, features=x_nan)
    _raises(r"must lie in \[0, 10\)", inject_noise, "sym_incl", y + 1, 10, 0.2, 0)
    _raises(r"must lie in \[0, 10\)", inject_noise, "sym_incl", y - 1, 10, 0.2, 0)
    _raises(r"must be integers", inject_noise, "sym_incl", y.astype(float), 10, 0.2, 0)
    _raises(r"1-D", inject_noise, "sym_incl", np.eye(10, dtype=np.int64), 10, 0.2, 0)


def test_errors_load(tmp_path):
    _raises(r"does not exist", load_labels, tmp_path / "missing.npy", 10, 10)
    bad = tmp_path / "corrupt.npy"
    bad.write_bytes(b"not a numpy file at all")
    _raises(r"is a text file \(no \.npy header\)", load_labels, bad, 10, 10)
    bad.write_bytes(b"\x00\xff\x10 binary junk")
    _raises(r"is not a \.npy file \(no \.npy header\)", load_labels, bad, 10, 10)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([1, "a", None], dtype=object), allow_pickle=True)
    _raises(r"not a readable \.npy", load_labels, obj, 3, 10)
    ok = save_labels(tmp_path / "ok.npy", np.arange(10))
    _raises(r"shape \(10,\) but the training set has 12", load_labels, ok, 12, 10)
    flt = tmp_path / "f.npy"
    np.save(flt, np.arange(10, dtype=np.float64))
    _raises(r"must be integers", load_labels, flt, 10, 10)
    _raises(r"must lie in \[0, 5\)", load_labels, ok, 10, 5)


# ------------------------------------------------------------------ registry and configs


def test_registry_extension(digits):
    @register_noise("_test_all_zero")
    class _Zero(nz.Noise):
        def draw(self, data, rate, rng):
            return np.zeros_like(data.labels)

    try:
        assert _Zero.variant == "_test_all_zero"  # the registered name, recorded
        out = inject_noise("_test_all_zero", digits[0], 10, 0.1, 0)
        assert not out.any()
        with pytest.raises(ValueError, match="registered twice"):
            register_noise("_test_all_zero")(_Zero)
    finally:
        del NOISE_VARIANTS["_test_all_zero"]
    expected = {"none", "sym_incl", "sym_excl", "sym_balanced", "asym", "pairflip", "idn"}
    expected |= {f"cifar10n_{s}" for s in ("aggre", "random1", "random2", "random3", "worse")}
    expected |= {"cifar100n_noisy", "cifar100n_noisy_coarse"}  # real human noise (CIFAR-N)
    assert set(NOISE_VARIANTS) == expected
    assert set(ASYM_MAPS) == {
        "cifar10_tanaka",
        "digits",
        "cifar100_block_next",
        "cifar100_block_pair",
        "cifar100_superclass",
    }
    assert nz.NOISE_VARIANTS is NOISE_VARIANTS


def test_noise_configs():
    files = sorted(CONF_NOISE.glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"none", "sym20", "sym50", "sym80", "asym10", "asym20", "asym30", "asym40"} <= names
    for f in files:
        cfg = OmegaConf.load(f)
        # shared keys, then _target_ and the variant's own parameters (nothing else)
        keys = {"name", "variant", "rate", "setting", "seed", "label_file", "_target_"}
        cls = NOISE_VARIANTS[cfg.variant]
        assert cfg._target_ == f"noisybench.data.noise.{cls.__name__}"
        if cfg.get("setting") == "real":  # CIFAR-N: the set, the official file, fetch or not
            keys |= {"label_set", "file", "download"}
            assert OmegaConf.to_container(cfg)["label_set"] == "${.variant}"
        if cfg.variant == "asym":
            keys |= {"asym_map"}
        assert keys <= set(cfg.keys()) <= keys | {"preset_rate"}
        assert cfg.name == f.stem
        assert 0.0 <= cfg.rate < 1.0
        assert cfg.get("asym_map") is None or cfg.asym_map in ASYM_MAPS
        assert cfg.label_file is None
        assert OmegaConf.to_container(cfg)["seed"] == "${seed}"
        resolved = OmegaConf.merge({"seed": 31}, {"noise": cfg})
        assert resolved.noise.seed == 31
        m = re.search(r"(\d+)", f.stem)
        if (
            m and cfg.get("setting") != "real"
        ):  # the number in the name is the nominal rate in percent
            assert cfg.rate == pytest.approx(int(m.group(1)) / 100)
    for n in ("sym20", "sym50", "sym80"):  # the paper's "reassigning a percentage of labels"
        assert OmegaConf.load(CONF_NOISE / f"{n}.yaml").variant == "sym_incl"
    for n in ("asym10", "asym20", "asym30", "asym40"):
        cfg = OmegaConf.load(CONF_NOISE / f"{n}.yaml")
        assert cfg.variant == "asym" and cfg.asym_map is None  # dataset default map


# ------------------------------------------------------------------ variants by _target_

_PLUGIN = '''
import numpy as np

from noisybench.data.noise import Noise, NoiseData


class EveryKth(Noise):
    """Moves every ``every``-th training sample to the next class (its own parameter)."""

    variant = "every_kth"

    def __init__(self, every: int) -> None:
        self.every = int(every)

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        noisy = data.labels.copy()
        noisy[:: self.every] = (noisy[:: self.every] + 1) % data.num_classes
        return noisy
'''

_PLUGIN_YAML = """name: every5
variant: every_kth
rate: 0.2
setting: sym
seed: ${seed}
label_file: null
_target_: my_noise.EveryKth
every: 5
"""


def _plugin(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "plug"
    (code / "my_noise").mkdir(parents=True)
    (code / "my_noise" / "__init__.py").write_text(_PLUGIN)
    conf = tmp_path / "conf"
    (conf / "noise").mkdir(parents=True)
    (conf / "noise" / "every5.yaml").write_text(_PLUGIN_YAML)
    return code, conf


@pytest.mark.cli
def test_noise_variant_from_outside_the_package_trains(cli, tmp_path: Path) -> None:
    """A variant written outside noisybench (module on PYTHONPATH, YAML on Hydra's search path,
    code allowed with allow_targets) draws the labels of a one-epoch run, with a parameter of
    its own that no shipped signature knows."""
    from conftest import error_line

    from noisybench.data.digits import load_digits as read_digits

    code, conf = _plugin(tmp_path)
    args = ("noise=every5", f"hydra.searchpath=[file://{conf}]", "epochs=1")
    refused = cli(*args, f"out_dir={tmp_path / 'refused'}", pythonpath=[code])
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "allow_targets" in error_line(refused.stderr)
    assert not (tmp_path / "refused").exists()

    runs = tmp_path / "runs"
    proc = cli(*args, "allow_targets=[my_noise.]", f"out_dir={runs}", pythonpath=[code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = runs.rglob("result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "finished" and len(result["history"]) == 1
    assert "every5" in result_file.parts
    # The labels, worked out here: every 5th clean training label moved up by one class.
    clean = read_digits().train_labels.numpy().astype(np.int64)
    want = clean.copy()
    want[::5] = (want[::5] + 1) % 10
    record = result["noise"]
    assert record["sha256"] == hashlib.sha256(struct.pack(f"<{want.size}q", *want)).hexdigest()
    assert record["variant"] == "every_kth" and record["nominal_rate"] == 0.2
    assert record["realised_rate"] == pytest.approx(math.ceil(clean.size / 5) / clean.size)
    assert record["asym_map"] is None and record["label_file"] is None
    assert result["config"]["noise"]["every"] == 5


def _composed(*overrides: str):
    from noisybench.config import compose

    return compose(["experiment=quickstart", *overrides])


def test_noise_target_and_variant_must_agree(tmp_path: Path) -> None:
    """``noise.variant`` names what the record, the report and the presets read; the class
    that draws must be that variant's (refused before anything runs), and a variant's own
    parameter reaches only its class."""
    from noisybench.build import noise_variant
    from noisybench.config import check_config

    cfg = _composed("noise=sym50", "noise.variant=sym_excl")
    with pytest.raises(UserError, match=r"drawn by noisybench\.data\.noise\.SymExcl"):
        check_config(cfg)
    cfg = _composed("noise=sym50", "noise.variant=sym_excl", "noise._target_=" + "x.Y")
    with pytest.raises(UserError, match=r"allow_targets"):
        check_config(cfg)
    # the asymmetric map is Asym's parameter alone
    asym = noise_variant(_composed("noise=asym40", "noise.asym_map=digits").noise)
    assert isinstance(asym, nz.Asym) and asym.asym_map == "digits"
    assert "asym_map" not in _composed("noise=sym50").noise
    with pytest.raises(UserError, match=r"\+noise\.asym_map=\.\.\. adds a key"):
        _composed("noise=sym50", "+noise.asym_map=digits")


def test_noise_plugin_class_checked_when_built(tmp_path: Path, monkeypatch) -> None:
    """A plug-in target that builds no Noise, or another variant than noise.variant: one line."""
    from noisybench import safety
    from noisybench.build import noise_variant

    code, _ = _plugin(tmp_path)
    monkeypatch.syspath_prepend(str(code))
    safety.allow(["my_noise."])
    try:
        base = {"name": "x", "rate": 0.2, "seed": 0, "label_file": None}
        node = OmegaConf.create({**base, "variant": "other", "_target_": "my_noise.EveryKth"})
        node.every = 3
        with pytest.raises(UserError, match=r"draws 'every_kth'.*noise.variant=every_kth"):
            noise_variant(node)
        node = OmegaConf.create({**base, "variant": "x", "_target_": "my_noise.NoiseData"})
        node.labels, node.num_classes = [0, 1], 2
        with pytest.raises(UserError, match=r"not a noise variant"):
            noise_variant(node)
        node = OmegaConf.create({**base, "variant": "every_kth", "_target_": "my_noise.EveryKth"})
        node.every = 4
        noise = noise_variant(node)
        y = np.arange(10) % 3
        noisy, rec = nz.noisy_labels(noise, nz.noise_data(y, 3), rate=0.2, seed=0)
        assert noisy.tolist() == [1, 1, 2, 0, 2, 2, 0, 1, 0, 0]
        assert rec.variant == "every_kth"
    finally:
        safety.reset()


def test_example_plugin_variant_matches_its_matrix(monkeypatch) -> None:
    """examples/plugin's ToClass: T = (1 - r) I + r e_0 on the rows c != 0, row 0 clean."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "plugin"))
    from my_methods.noise import ToClass

    y = np.repeat(np.arange(10), 2000)
    noisy, rec = nz.noisy_labels(ToClass(target=0), nz.noise_data(y, 10), rate=0.3, seed=1)
    t = np.array(rec.transition)
    assert t[0, 0] == 1.0
    for c in range(1, 10):  # binomial spread of 2000 draws: sd 0.0102; 5 sd
        assert t[c, 0] == pytest.approx(0.3, abs=0.052) and t[c, c] == pytest.approx(1 - t[c, 0])
    assert rec.realised_rate == pytest.approx(0.3 * 9 / 10, abs=0.02)
    assert rec.variant == "to_class" and not np.shares_memory(noisy, y)
    with pytest.raises(UserError, match=r"noise.target=10 is not a class"):
        nz.noisy_labels(ToClass(target=10), nz.noise_data(y, 10), rate=0.3, seed=1)


def test_runs_made_before_target_configs_keep_their_identity() -> None:
    """A run directory saved with the old noise layout (every variant had asym_map, none had
    _target_) is the same experiment as today's config: resume and the report's grouping
    still match it. A real difference (another map) still counts."""
    from noisybench.config import config_differences, resolved

    old_sym = {"name": "sym50", "variant": "sym_incl", "rate": 0.5, "setting": "sym"}
    old_sym |= {"seed": 0, "asym_map": None, "label_file": None}
    new_sym = resolved(_composed("noise=sym50", "seed=0").noise)
    assert "_target_" in new_sym and "asym_map" not in new_sym
    assert config_differences({"noise": old_sym}, {"noise": new_sym}) == []
    old_asym = {**old_sym, "name": "asym40", "variant": "asym", "rate": 0.4, "setting": "asym"}
    new_asym = resolved(_composed("noise=asym40", "seed=0").noise)
    assert config_differences({"noise": old_asym}, {"noise": new_asym}) == []
    assert config_differences({"noise": {**old_asym, "asym_map": "digits"}}, {"noise": new_asym})


def test_a_saved_config_without_target_still_builds_its_variant(digits) -> None:
    """``rebuild`` of a run saved before noise configs had a ``_target_`` names its variant
    by ``variant`` alone; it draws the same labels as today's config of that variant."""
    from noisybench.build import noise_variant

    y = digits[0]
    old = OmegaConf.create({"name": "asym40", "variant": "asym", "rate": 0.4, "seed": 3})
    old.asym_map, old.label_file = "digits", None
    new = _composed("noise=asym40", "noise.asym_map=digits", "noise.seed=3").noise
    a, b = noise_variant(old), noise_variant(new)
    assert type(a) is type(b) is nz.Asym
    data = nz.noise_data(y, 10)
    assert np.array_equal(a.labels(data, 0.4, 3), b.labels(data, 0.4, 3))
    old_sym = OmegaConf.create({"name": "sym50", "variant": "sym_incl", "rate": 0.5, "seed": 3})
    old_sym.asym_map, old_sym.label_file = None, None  # every old file had the map key
    assert type(noise_variant(old_sym)) is nz.SymIncl
