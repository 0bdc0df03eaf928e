"""Metrics against independent computations: a plain-Python ECE, hand-counted diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from noisybench import metrics


def ece_by_loops(probs: list[list[float]], labels: list[int], n_bins: int = 15) -> float:
    """Guo et al. (2017), Eq. 3, written out with Python loops and explicit bin edges."""
    n = len(labels)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, p in enumerate(probs) if lo < max(p) <= hi]
        if not members:
            continue
        acc = sum(probs[i].index(max(probs[i])) == labels[i] for i in members) / len(members)
        conf = sum(max(probs[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def test_ece_matches_loop_implementation() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (500,), generator=gen)
    probs = logits.softmax(-1)
    expected = ece_by_loops(probs.tolist(), labels.tolist())
    got = float(metrics.expected_calibration_error(probs, labels))
    assert got == pytest.approx(expected, abs=1e-6)


def test_ece_hand_case() -> None:
    # Two samples at confidence 0.9 (one right, one wrong) share a bin: |0.5 - 0.9| = 0.4.
    # One sample at confidence 0.6, right: |1 - 0.6| = 0.4. ECE = 2/3*0.4 + 1/3*0.4 = 0.4.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1])
    assert float(metrics.expected_calibration_error(probs, labels)) == pytest.approx(0.4)


def test_classification_metrics_nll_and_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    out = metrics.classification_metrics(logits, labels)
    nll = (
        -math.log(math.exp(2) / (math.exp(2) + 1))
        - math.log(1 / (1 + math.e))
        - math.log(math.exp(3) / (math.exp(3) + 1))
    ) / 3
    assert float(out["acc"]) == pytest.approx(2 / 3)
    assert float(out["err"]) == pytest.approx(1 / 3)
    assert float(out["nll"]) == pytest.approx(nll, rel=1e-6)


def test_memorisation_counts() -> None:
    clean = torch.tensor([0, 1, 2, 3, 0, 1])
    given = torch.tensor([1, 1, 0, 3, 2, 1])  # samples 0, 2, 4 are noisy
    pred = torch.tensor([1, 1, 2, 0, 0, 1])  # noisy: 0 fits given, 2 and 4 fit the truth
    out = metrics.memorisation(pred, given, clean)
    assert float(out["fit_given"]) == pytest.approx(1 / 3)
    assert float(out["fit_true"]) == pytest.approx(2 / 3)
    assert float(out["clean_fit"]) == pytest.approx(2 / 3)  # samples 1, 5 right; 3 wrong


def test_memorisation_without_noise_is_nan() -> None:
    labels = torch.tensor([0, 1])
    out = metrics.memorisation(labels, labels, labels)
    assert math.isnan(float(out["fit_given"]))


def test_label_recovery_detector() -> None:
    clean = torch.tensor([0, 1, 2, 0])
    given = torch.tensor([1, 1, 0, 0])  # samples 0 and 2 are noisy
    targets = torch.tensor(
        [
            [0.7, 0.3, 0.0],  # noisy, recovered (argmax 0 = clean), flagged
            [0.1, 0.9, 0.0],  # clean, not flagged
            [0.6, 0.0, 0.4],  # noisy, still on the given label 0, not flagged
            [0.2, 0.5, 0.3],  # clean, wrongly flagged
        ]
    )
    out = metrics.label_recovery(targets, given, clean)
    assert float(out["recovered"]) == pytest.approx(0.5)
    assert float(out["still_given"]) == pytest.approx(0.5)
    assert float(out["detect_precision"]) == pytest.approx(0.5)  # flagged {0, 3}, noisy {0}
    assert float(out["detect_recall"]) == pytest.approx(0.5)  # noisy {0, 2}, flagged {0}
    rows = [[0.7, 0.3], [0.1, 0.9], [0.6, 0.4], [0.2, 0.5, 0.3]]
    entropy = sum(-sum(p * math.log(p) for p in row) for row in rows) / 4
    assert float(out["entropy"]) == pytest.approx(entropy, rel=1e-5)


def test_label_recovery_chunked_equals_whole_matrix() -> None:
    """Chunked recovery (ImageNet size) equals label_recovery on the whole (N, K) matrix,
    for a method with soft_target_rows and one with only soft_targets."""
    from noisybench.metrics import label_recovery, label_recovery_chunked

    gen = torch.Generator().manual_seed(3)
    targets = torch.softmax(3 * torch.randn(37, 6, generator=gen), dim=-1)
    clean = torch.randint(0, 6, (37,), generator=gen)
    given = torch.where(torch.rand(37, generator=gen) < 0.4, (clean + 1) % 6, clean)

    class Rows:
        def soft_target_rows(self, a: int, b: int) -> torch.Tensor:
            return targets[a:b]

    class Whole:
        def soft_targets(self) -> torch.Tensor:
            return targets

    want = label_recovery(targets, given, clean)
    for method in (Rows(), Whole()):
        got = label_recovery_chunked(method, given, clean, chunk_rows=5)
        assert got is not None and got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], equal_nan=True)
