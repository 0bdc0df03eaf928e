"""Soft-target losses shared by the distillation methods (BSD, BSD+, DLB, KD, PS-KD, LS), and the
sharpening and uniform-prior penalty shared by the semi-supervised ones (DivideMix, OT-Filter,
CSOT, DULC).

``soft_cross_entropy(logits, t) = mean_i -sum_k t_ik log softmax(logits_i)_k`` and
``kl_to_target(logits, t) = mean_i KL(t_i || softmax(logits_i))`` differ by the target's
entropy, a constant with respect to the logits, so their gradients are identical (BSD paper,
Eq. 12 writes the KL form; Algorithm 1 the cross-entropy form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_from_log",
    "kl_to_target",
    "sharpen",
    "soft_cross_entropy",
    "soft_cross_entropy_per_sample",
    "uniform_prior_penalty",
]


def soft_cross_entropy_per_sample(logits: Tensor, target: Tensor) -> Tensor:
    """``-sum_k target_k log softmax(logits)_k`` per row, computed in float32, shape ``(B,)``."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k target_k * log softmax(logits)_k``.

    Same gradient with respect to the logits as ``KL(target || softmax(logits))``.
    """
    return soft_cross_entropy_per_sample(logits, target).mean()


def kl_to_target(logits: Tensor, target: Tensor) -> Tensor:
    """Batch mean of ``KL(target || softmax(logits))`` (0 log 0 = 0), in float32."""
    t = target.float()
    return (torch.xlogy(t, t).sum(dim=-1) + soft_cross_entropy_per_sample(logits, t)).mean()


def kl_from_log(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``KL(p || q) = sum_k p_k (log p_k - log q_k)`` from log-probabilities, ``(B,)``
    (BSD+ Eq. 11 in either direction; log space keeps mixed targets exact)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Row-wise ``p_k^(1/T) / sum_j p_j^(1/T)``: MixMatch's sharpening (DivideMix Eq. 4, DULC
    Eq. 4; the guessed and refined targets of OT-Filter and CSOT). ``T < 1`` sharpens."""
    pt = probs.pow(1.0 / temperature)
    return pt / pt.sum(dim=1, keepdim=True)


def uniform_prior_penalty(probs: Tensor) -> Tensor:
    """``sum_k pi_k log(pi_k / mean_rows p_k)`` with the uniform prior ``pi_k = 1/K``: the
    regulariser of DivideMix's Eq. 9 (also in the codes of CSOT and UNICON) that keeps the
    mean prediction of a batch from collapsing onto few classes; ``probs`` ``(B, K)``."""
    k = probs.shape[1]
    prior = torch.full((k,), 1.0 / k, device=probs.device, dtype=probs.dtype)
    return (prior * torch.log(prior / probs.mean(dim=0))).sum()
