"""Symmetric Cross Entropy (SCE, called "SL" in the BSD paper's Table 4).

Wang, Ma, Chen, Luo, Yi, Bailey, "Symmetric Cross Entropy for Robust Learning with Noisy
Labels", ICCV 2019:

    l_sl = alpha * l_ce + beta * l_rce                                     (Wang 2019, Eq. 5)
    l_rce = -sum_k p(k|x) log q(k|x)                                       (Wang 2019, Eq. 4)

with ``q`` the one-hot (noisy) label and ``p`` the softmax prediction. ``log 0`` is replaced by a
negative constant ``A``, so that

    l_rce = -A * sum_{k != y} p(k|x)  ( = -A (1 - p(y|x)) when p sums to 1 ).  (Wang 2019, Eq. 7)

Choices (see /work/notes/baselines1_readme.md):

* ``A`` (``log_zero``): the paper writes ``A = -4``; both public code bases (the official Keras
  code, YisenWang/symmetric_cross_entropy_for_noisy_labels, and the PyTorch reproduction,
  HanxunH/SCELoss-Reproduce) clamp the one-hot label to ``[1e-4, 1]`` before the log, i.e.
  ``A = log(1e-4) = -9.2103``. The published numbers were produced with the code, so the default
  is ``log(1e-4)``; set ``log_zero: -4`` for the paper's value.
* As in both code bases, the prediction is clamped to ``[1e-7, 1]`` before the reverse term (the
  clamped vector is not renormalised), so an exactly-zero probability still costs ``-A * 1e-7``.
* The forward term is the ordinary cross-entropy computed from the logits (the reproduction's
  final version); the Keras code clamps ``p`` at ``1e-7`` there too, which only differs when
  ``p(y|x) < 1e-7``.
* ``alpha, beta = 0.1, 1.0`` for CIFAR-10 (official code) are the defaults; the official
  CIFAR-100 values are ``alpha, beta = 6.0, 0.1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, StepOutput

__all__ = ["LOG_1E_4", "SymmetricCrossEntropy", "reverse_cross_entropy"]

#: ``log(1e-4)``: the ``A`` that both public SCE code bases use.
LOG_1E_4 = math.log(1e-4)

#: Lower clamp of the predicted probabilities before the reverse term (both code bases).
PRED_CLAMP = 1e-7


def reverse_cross_entropy(logits: Tensor, target: Tensor, log_zero: float) -> Tensor:
    """Per-sample reverse cross-entropy ``-sum_k clamp(p_k, 1e-7, 1) * log q_k`` (Wang 2019,
    Eq. 4) with ``log q_k = 0`` for the label and ``log_zero`` (``A``) elsewhere, i.e.
    ``-A * sum_{k != y} clamp(p_k)``. Returns a ``(B,)`` tensor."""
    prob = F.softmax(logits.float(), dim=-1).clamp(min=PRED_CLAMP, max=1.0)
    log_q = torch.full_like(prob, log_zero)
    log_q.scatter_(1, target.unsqueeze(1), 0.0)
    return -(prob * log_q).sum(dim=-1)


class SymmetricCrossEntropy(Method):
    """``alpha * CE + beta * RCE`` on the weak view (Wang 2019, Eq. 5).

    Args:
        alpha: weight of the cross-entropy term (CIFAR-10: 0.1; CIFAR-100: 6.0).
        beta: weight of the reverse cross-entropy term (CIFAR-10: 1.0; CIFAR-100: 0.1).
        log_zero: ``A``, the value that replaces ``log 0`` in the reverse term; negative.
            Default ``log(1e-4) = -9.2103`` (public code); the paper's text uses ``-4``.
    """

    views = ("weak",)

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = LOG_1E_4) -> None:
        super().__init__()
        alpha, beta, log_zero = float(alpha), float(beta), float(log_zero)
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise UserError(
                f"method.alpha={alpha} and method.beta={beta} must be >= 0 and not both 0; "
                "use alpha=0.1, beta=1.0 (CIFAR-10) or alpha=6.0, beta=0.1 (CIFAR-100)."
            )
        if not log_zero < 0 or not math.isfinite(log_zero):
            raise UserError(
                f"method.log_zero={log_zero} must be a finite negative number (it replaces log 0); "
                "use -9.2103 (log 1e-4, public code) or -4 (the SCE paper)."
            )
        self.alpha = alpha
        self.beta = beta
        self.log_zero = log_zero

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        ce = F.cross_entropy(logits.float(), batch.target)
        rce = reverse_cross_entropy(logits, batch.target, self.log_zero).mean()
        loss = self.alpha * ce + self.beta * rce
        return StepOutput(loss=loss, logits=logits, extras={"ce": ce.detach(), "rce": rce.detach()})
