"""Evaluation metrics and the noisy-label diagnostics that only the engine can compute.

Every function takes tensors on any device and returns 0-dim tensors, so the engine can keep
them on the device and convert to Python numbers once per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "accuracy",
    "classification_metrics",
    "expected_calibration_error",
    "label_recovery",
    "memorisation",
    "target_entropy",
]


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose arg-max prediction equals the label."""
    return (logits.argmax(dim=-1) == labels).float().mean()


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Fraction of samples whose label is among the ``k`` highest logits (the top-5 accuracy
    of ImageNet and WebVision tables, e.g. DivideMix's Table 6)."""
    top = logits.topk(min(int(k), logits.shape[-1]), dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(dim=-1).float().mean()


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """ECE (Naeini et al. 2015; Guo et al. 2017) with ``n_bins`` equal-width confidence bins.

    ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` where bin b holds the samples whose top-class
    probability lies in ``((b-1)/n_bins, b/n_bins]``.
    """
    confidence, prediction = probs.max(dim=-1)
    correct = (prediction == labels).float()
    # Bin b covers (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur for a softmax.
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    conf_sum = torch.zeros(n_bins, device=probs.device).index_add_(0, bins, confidence.float())
    acc_sum = torch.zeros(n_bins, device=probs.device).index_add_(0, bins, correct)
    return (conf_sum - acc_sum).abs().sum() / labels.numel()


def classification_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Accuracy, error, ECE (15 bins) and NLL of a set of logits."""
    logits = logits.float()
    acc = accuracy(logits, labels)
    return {
        "acc": acc,
        "err": 1.0 - acc,
        "ece": expected_calibration_error(logits.softmax(dim=-1), labels, n_bins),
        "nll": F.cross_entropy(logits, labels),
    }


def _share(mask: Tensor, subset: Tensor) -> Tensor:
    """Fraction of ``subset`` where ``mask`` holds; NaN when the subset is empty."""
    n = subset.sum()
    return torch.where(n > 0, (mask & subset).sum() / n.clamp(min=1), torch.nan)


def memorisation(predictions: Tensor, given: Tensor, clean: Tensor) -> dict[str, Tensor]:
    """How the model's arg-max predictions on the training set relate to the labels.

    On the noisily-labelled samples (given != clean): ``fit_given`` is the share predicted as
    the given (wrong) label, i.e. memorised noise; ``fit_true`` the share predicted as the true
    label. On the correctly-labelled samples: ``clean_fit`` is the share predicted correctly.
    """
    noisy = given != clean
    return {
        "fit_given": _share(predictions == given, noisy),
        "fit_true": _share(predictions == clean, noisy),
        "clean_fit": _share(predictions == clean, ~noisy),
    }


def target_entropy(targets: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of per-sample target distributions ``(N, K)``."""
    t = targets.float()
    return -(t * torch.log(t.clamp(min=1e-12))).sum(dim=-1).mean()


def label_recovery(targets: Tensor, given: Tensor, clean: Tensor) -> dict[str, Tensor]:
    """How a method's per-sample soft targets relate to the clean labels.

    ``recovered``: on the noisily-labelled samples, the share whose target arg-max is the true
    label; ``still_given``: the share still on the given wrong label. The rule "target arg-max
    differs from the given label" used as a detector of noisy labels gets ``detect_precision``
    (flagged samples that are noisy) and ``detect_recall`` (noisy samples that are flagged).
    ``entropy`` is the mean target entropy over all samples.
    """
    top = targets.float().argmax(dim=-1)
    return {**_recovery_shares(top, given, clean), "entropy": target_entropy(targets)}


def _recovery_shares(top: Tensor, given: Tensor, clean: Tensor) -> dict[str, Tensor]:
    """The shares of :func:`label_recovery` from the targets' arg-max ``top`` ``(N,)``."""
    noisy = given != clean
    flagged = top != given
    return {
        "recovered": _share(top == clean, noisy),
        "still_given": _share(top == given, noisy),
        "detect_precision": _share(noisy, flagged),
        "detect_recall": _share(flagged, noisy),
    }


def label_recovery_chunked(
    method: object, given: Tensor, clean: Tensor, chunk_rows: int = 65536
) -> dict[str, Tensor] | None:
    """:func:`label_recovery` without an ``(N, K)`` float32 temporary (ImageNet size).

    Uses ``method.soft_target_rows(start, stop)`` (float32 rows ``[start, stop)``) when the
    method has it, else slices ``method.soft_targets()``; returns None when the method has no
    soft targets. Only the ``(N,)`` arg-max and per-row entropy are kept across chunks; the
    result equals :func:`label_recovery` on the whole matrix (the entropy up to summation order).
    """
    rows_of = getattr(method, "soft_target_rows", None)
    whole = None
    if rows_of is None:
        whole = method.soft_targets()  # type: ignore[attr-defined]
        if whole is None:
            return None
    n = int(given.shape[0])
    top = torch.empty(n, dtype=torch.long, device=given.device)
    entropy = torch.zeros((), dtype=torch.float32, device=given.device)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        t = (rows_of(start, stop) if whole is None else whole[start:stop]).float()
        top[start:stop] = t.argmax(dim=-1).to(given.device)
        entropy += -(t * torch.log(t.clamp(min=1e-12))).sum().to(given.device)
    return {**_recovery_shares(top, given, clean), "entropy": entropy / max(n, 1)}
