"""Soft bootstrapping: Reed, Lee, Anguelov, Szegedy, Erhan & Rabinovich, "Training Deep Neural
Networks on Noisy Labels with Bootstrapping", ICLR 2015 workshop (arXiv:1412.6596), Sec. 3.2.

The target mixes the given (noisy) one-hot label ``t`` with the model's own prediction ``q``:

    L_soft(q, t) = - sum_k [beta * t_k + (1 - beta) * q_k] * log q_k        (Reed et al., L_soft)

averaged over the batch; the paper uses ``beta = 0.95`` for soft bootstrapping. As the paper
notes, the ``(1 - beta) q`` part makes this cross-entropy plus ``(1 - beta)`` times the entropy
of ``q`` (minimum-entropy regularisation, Grandvalet & Bengio 2005), so by default the gradient
also flows through ``q`` in the target. ``detach=True`` treats ``q`` as a fixed pseudo-label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, StepOutput, soft_cross_entropy


def soft_bootstrapping_loss(logits: Tensor, labels: Tensor, beta: float, detach: bool) -> Tensor:
    """``L_soft`` of Reed et al. (Sec. 3.2), mean over the batch."""
    q = torch.softmax(logits.float(), dim=-1)
    q = q.detach() if detach else q
    target = beta * F.one_hot(labels, logits.shape[-1]).float() + (1.0 - beta) * q
    return soft_cross_entropy(logits, target)


class SoftBootstrapping(Method):
    """Soft bootstrapping on the weak view. ``beta = 1`` is plain cross-entropy."""

    views = ("weak",)

    def __init__(self, beta: float = 0.95, detach: bool = False) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"method.beta={beta} is outside [0, 1]; use e.g. 0.95")
        self.beta, self.detach = float(beta), bool(detach)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        loss = soft_bootstrapping_loss(logits, batch.target, self.beta, self.detach)
        return StepOutput(loss=loss, logits=logits)
