"""Calibration: ECE, SCE, ACE, NLL, Brier, reliability diagrams, and temperature scaling.

Definitions (``p`` the softmax probabilities ``(N, K)``, ``y`` the labels, ``R`` bins):

* ECE (Naeini et al. 2015; Guo et al. 2017): top-label confidence in ``R`` equal-width bins
  ``((b-1)/R, b/R]``, ``sum_b |B_b|/N |acc(B_b) - conf(B_b)|``; exactly
  :func:`noisybench.metrics.expected_calibration_error` (15 bins).
* SCE, static calibration error (Nixon et al. 2019, "Measuring Calibration in Deep Learning",
  Sec. 3; the class-wise ECE of the BSD paper's Table 7): every class ``k`` binned on its own
  probability ``p_k`` in the same equal-width bins,
  ``1/K sum_k sum_b |B_bk|/N |acc(b,k) - conf(b,k)|`` with ``acc(b,k)`` the share of bin
  ``B_bk`` labelled ``k`` and ``conf(b,k)`` the mean ``p_k`` in it.
* ACE, adaptive calibration error as the BSD paper's Table 7 reports it (the numbers it copies
  from Hebbalaguppe et al. 2024 use the MDCA/focal-loss code's "adaptive ECE", whose values
  are close to ECE there): the top-label confidence sorted and split into ``R`` bins of equal
  mass (bin ``r`` holds sorted positions ``floor(rN/R) .. floor((r+1)N/R) - 1``), weighted by
  ``|B_r|/N`` like ECE.
* ``ace_classwise``: ACE exactly as Nixon et al. 2019 define it: for every class, ``p_k`` of
  all ``N`` samples sorted and split into ``R`` equal-mass ranges,
  ``1/(KR) sum_k sum_r |acc(r,k) - conf(r,k)|`` (unweighted). Reported beside ``ace`` because
  the two definitions differ by about a factor of K.
* NLL: mean ``-log p_y``. Brier: mean ``sum_k (p_k - 1[y=k])^2`` (summed over classes, not
  divided by K).
* Reliability diagram: per equal-width bin, the mean confidence, the accuracy and the count
  (empty bins: confidence and accuracy NaN, count 0).

Temperature scaling (Guo et al. 2017, Sec. 4.2): one scalar ``T > 0`` that minimises the NLL
of ``softmax(z / T)`` on a held-out split, found with L-BFGS on ``log T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from noisybench.errors import UserError
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict
from noisybench.metrics import expected_calibration_error

__all__ = [
    "CalibrationSuite",
    "TemperatureScalingSuite",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "classwise_adaptive_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "static_calibration_error",
]


def _equal_width_bin(p: Tensor, n_bins: int) -> Tensor:
    """Index of the equal-width bin ``((b-1)/R, b/R]`` of each probability (0 goes to bin 0)."""
    return (torch.ceil(p.float() * n_bins).long() - 1).clamp(0, n_bins - 1)


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (Guo et al. 2017,
    Fig. 1; the BSD paper's Figure 4). Empty bins have NaN confidence and accuracy."""
    confidence, prediction = probs.float().max(dim=-1)
    correct = (prediction == labels).float()
    bins = _equal_width_bin(confidence, n_bins)
    zeros = torch.zeros(n_bins, device=probs.device)
    count = zeros.index_add(0, bins, torch.ones_like(confidence))
    conf = zeros.index_add(0, bins, confidence)
    acc = zeros.index_add(0, bins, correct)
    nonempty = count > 0
    nan = torch.full_like(count, float("nan"))
    return {
        "confidence": torch.where(nonempty, conf / count.clamp(min=1), nan),
        "accuracy": torch.where(nonempty, acc / count.clamp(min=1), nan),
        "count": count,
    }


def static_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """SCE (Nixon et al. 2019): class-wise ECE with ``n_bins`` equal-width bins, averaged
    over the K classes (each class's bins weighted by their share of all N samples)."""
    n, k = probs.shape
    p = probs.float()
    onehot = F.one_hot(labels, k).float()
    index = (_equal_width_bin(p, n_bins) * k + torch.arange(k, device=p.device)).reshape(-1)
    gap = torch.zeros(n_bins * k, device=p.device).index_add_(0, index, (onehot - p).reshape(-1))
    return gap.abs().sum() / (n * k)


def _equal_mass_bins(n: int, n_bins: int, device: torch.device) -> Tensor:
    """Bin of each sorted position: bin r holds positions floor(rN/R) .. floor((r+1)N/R)-1."""
    bounds = torch.div(
        torch.arange(1, n_bins + 1, device=device) * n, n_bins, rounding_mode="floor"
    )
    return torch.searchsorted(bounds, torch.arange(n, device=device), right=True)


def adaptive_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """ACE as the BSD paper's Table 7 reports it: top-label confidence in ``n_bins``
    equal-mass bins, each bin's ``|acc - conf|`` weighted by its share of the samples."""
    confidence, prediction = probs.float().max(dim=-1)
    correct = (prediction == labels).float()
    order = torch.sort(confidence, stable=True).indices
    bins = _equal_mass_bins(confidence.numel(), n_bins, probs.device)
    gap = torch.zeros(n_bins, device=probs.device).index_add_(
        0, bins, correct[order] - confidence[order]
    )
    return gap.abs().sum() / labels.numel()


def classwise_adaptive_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """ACE as Nixon et al. 2019 define it: per class, the N probabilities of that class in
    ``n_bins`` equal-mass ranges; the unweighted mean of ``|acc(r,k) - conf(r,k)|``."""
    n, k = probs.shape
    p = probs.float()
    sorted_p, order = torch.sort(p, dim=0, stable=True)
    hit = (labels[order] == torch.arange(k, device=p.device)).float()  # (N, K), sorted per class
    bins = _equal_mass_bins(n, n_bins, p.device)
    index = (bins[:, None] * k + torch.arange(k, device=p.device)).reshape(-1)
    gap = torch.zeros(n_bins * k, device=p.device).index_add_(
        0, index, (hit - sorted_p).reshape(-1)
    )
    count = torch.zeros(n_bins, device=p.device).index_add_(0, bins, torch.ones(n, device=p.device))
    per_bin = gap.reshape(n_bins, k).abs() / count.clamp(min=1)[:, None]
    nonempty = (count > 0).float()
    return (per_bin * nonempty[:, None]).sum() / (nonempty.sum() * k)


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    """Mean over samples of ``sum_k (p_k - 1[y = k])^2`` (Brier 1950, multi-class form)."""
    onehot = F.one_hot(labels, probs.shape[-1]).float()
    return ((probs.float() - onehot) ** 2).sum(dim=-1).mean()


def calibration_metrics(logits: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Accuracy, ECE, SCE, ACE (Table 7's and Nixon's), NLL and Brier of a set of logits."""
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    return {
        "acc": (logits.argmax(-1) == labels).float().mean(),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "sce": static_calibration_error(probs, labels, n_bins),
        "ace": adaptive_calibration_error(probs, labels, n_bins),
        "ace_classwise": classwise_adaptive_calibration_error(probs, labels, n_bins),
        "nll": F.cross_entropy(logits, labels),
        "brier": brier_score(probs, labels),
    }


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): ``argmin_T NLL(softmax(logits / T), labels)``,
    by L-BFGS (strong-Wolfe line search) on ``log T`` from ``T = 1``."""
    logits = logits.detach().float()
    log_t = torch.zeros((), device=logits.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def _check_bins(n_bins: int, suite: str) -> int:
    if int(n_bins) < 1:
        raise UserError(f"eval suite {suite}: n_bins={n_bins} must be at least 1")
    return int(n_bins)


class CalibrationSuite(EvalSuite):
    """ECE, SCE, ACE, NLL, Brier and reliability-diagram data on the test set (the BSD
    paper's Table 2, Table 7 and Figure 4).

    Keys: ``calibration/{acc,ece,sce,ace,ace_classwise,nll,brier}`` (floats, fractions not
    percent) and ``calibration/reliability/{confidence,accuracy,count}`` (lists of ``n_bins``).
    """

    name = "calibration"

    def __init__(self, every: int = 0, n_bins: int = 15) -> None:
        super().__init__(every)
        self.n_bins = _check_bins(n_bins, self.name)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        logits = predict(ctx.test_images)
        labels = ctx.test_labels.to(logits.device)
        out: Metrics = {
            f"{self.name}/{k}": float(v)
            for k, v in calibration_metrics(logits, labels, self.n_bins).items()
        }
        rel = reliability_bins(logits.softmax(-1), labels, self.n_bins)
        for key, value in rel.items():
            out[f"{self.name}/reliability/{key}"] = [float(x) for x in value.cpu()]
        return out


class TemperatureScalingSuite(EvalSuite):
    """Post-hoc temperature scaling (Guo et al. 2017) of any run.

    The clean test set is split in two, seeded by ``split_seed``: ``T`` is fitted on the
    ``fit_fraction`` part (L-BFGS on NLL), and the calibration metrics are reported on the
    other part before (``_raw``) and after (``_ts``) dividing the logits by ``T``, so the
    numbers after scaling never see the samples ``T`` was fitted on. (The noisy validation
    split is not used: its labels are noisy, and a T fitted to noisy labels is too large.)

    Keys: ``temperature/T``, ``temperature/{acc,ece,sce,ace,ace_classwise,nll,brier}_{raw,ts}``,
    ``temperature/n_fit``, ``temperature/n_eval``.
    """

    name = "temperature"

    def __init__(
        self, every: int = 0, fit_fraction: float = 0.5, split_seed: int = 0, n_bins: int = 15
    ) -> None:
        super().__init__(every)
        if not 0.0 < float(fit_fraction) < 1.0:
            raise UserError(
                f"eval suite temperature: fit_fraction={fit_fraction} must be in (0, 1), e.g. 0.5"
            )
        self.fit_fraction = float(fit_fraction)
        self.split_seed = int(split_seed)
        self.n_bins = _check_bins(n_bins, self.name)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        logits = predict(ctx.test_images)
        labels = ctx.test_labels.to(logits.device)
        m = labels.numel()
        n_fit = round(self.fit_fraction * m)
        if not 0 < n_fit < m:
            raise UserError(
                f"eval suite temperature: fit_fraction={self.fit_fraction} leaves an empty half "
                f"of the {m} test images; choose a fraction nearer 0.5"
            )
        gen = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(m, generator=gen).to(logits.device)
        fit, held = perm[:n_fit], perm[n_fit:]
        t = fit_temperature(logits[fit], labels[fit])
        out: Metrics = {f"{self.name}/T": t, f"{self.name}/n_fit": float(n_fit)}
        out[f"{self.name}/n_eval"] = float(m - n_fit)
        raw = calibration_metrics(logits[held], labels[held], self.n_bins)
        scaled = calibration_metrics(logits[held] / t, labels[held], self.n_bins)
        for key in raw:
            out[f"{self.name}/{key}_raw"] = float(raw[key])
            out[f"{self.name}/{key}_ts"] = float(scaled[key])
        return out
