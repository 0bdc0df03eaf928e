"""Early-Learning Regularization (ELR).

Reference: Liu, Niles-Weed, Razavian & Fernandez-Granda, "Early-Learning Regularization
Prevents Memorization of Noisy Labels", NeurIPS 2020; authors' code: github.com/shengliu66/ELR
(``ELR/model/loss.py``, ``elr_loss``; configs ``config_cifar10.json`` / ``config_cifar100.json``).

Objective (paper Eq. 6-7, as the code computes it), per mini-batch of indices ``B``:

* ``p_i = clamp(softmax(f(x_i)), 1e-4, 1 - 1e-4)`` (the code clamps before everything);
* target update first (temporal ensembling of the predictions, Eq. 7):
  ``t_i <- beta * t_i + (1 - beta) * p_i / sum_k p_ik`` with ``p`` detached, ``t`` a
  registered ``(N, K)`` buffer starting at 0;
* ``L = CE(f(x), y) + lambda * mean_{i in B} log(1 - <t_i, p_i>)``; the gradient flows
  through ``p_i`` only (zero where the clamp is active, as in the code).

Defaults (code's CIFAR-10 config): ``beta = 0.7``, ``lambda = 3``; CIFAR-100: ``beta = 0.9``,
``lambda = 7`` (``method.beta=0.9 method.lam=7``). The paper's algorithm updates the target
with the predictions of the current step, as the code (update before the loss); the code
updates the target in ``forward``, i.e. before the optimizer step, which is what is done here
(the update is in :meth:`training_step`, on detached probabilities, so it is identical).

ELR+ (two networks, each with a weight-averaged copy whose predictions form the other's
target, plus mixup) is not implemented here. It would fit the contract: the second network
from ``MethodContext.build_model`` trained through ``extra_modules``, the weight-averaged
copies as non-trained submodules updated in ``after_step``, mixup inside ``training_step``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput

__all__ = ["EarlyLearningRegularization", "elr_loss"]


def elr_loss(
    logits: Tensor, target: Tensor, soft_target: Tensor, lam: float, clamp: float = 1e-4
) -> Tensor:
    """``CE(logits, target) + lam * mean log(1 - <soft_target, clamp(softmax(logits))>)``."""
    p = torch.softmax(logits.float(), dim=-1).clamp(clamp, 1.0 - clamp)
    reg = torch.log(1.0 - (soft_target * p).sum(dim=-1)).mean()
    return F.cross_entropy(logits.float(), target) + lam * reg


class EarlyLearningRegularization(Method):
    """ELR: cross-entropy plus ``lam * log(1 - <t, p>)`` with a per-sample EMA target ``t``.

    Args:
        beta: EMA momentum of the targets (code: 0.7 CIFAR-10, 0.9 CIFAR-100).
        lam: weight of the regulariser (code: 3 CIFAR-10, 7 CIFAR-100).
        clamp: predictions are clamped to ``[clamp, 1 - clamp]`` (code: 1e-4).
    """

    views = ("weak",)

    def __init__(self, beta: float = 0.7, lam: float = 3.0, clamp: float = 1e-4) -> None:
        super().__init__()
        if not 0.0 <= float(beta) < 1.0:
            raise UserError(f"method.beta={beta} must be in [0, 1); the code uses 0.7 or 0.9")
        if float(lam) < 0:
            raise UserError(f"method.lam={lam} must be >= 0; the code uses 3 or 7")
        if not 0.0 <= float(clamp) < 0.5:
            raise UserError(f"method.clamp={clamp} must be in [0, 0.5); the code uses 1e-4")
        self.beta, self.lam, self.clamp = float(beta), float(lam), float(clamp)
        self.target: Tensor

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.register_buffer(
            "target", torch.zeros(ctx.num_samples, ctx.num_classes, device=ctx.device)
        )

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        with torch.no_grad():  # Eq. 7, before the loss (as the code's forward)
            p = torch.softmax(logits.float(), dim=-1).clamp(self.clamp, 1.0 - self.clamp)
            t = self.target[batch.idx]
            self.target[batch.idx] = self.beta * t + (1 - self.beta) * p / p.sum(1, keepdim=True)
        loss = elr_loss(logits, batch.target, self.target[batch.idx], self.lam, self.clamp)
        return StepOutput(loss=loss, logits=logits)

    def soft_targets(self) -> Tensor:
        """The EMA targets ``t`` (rows of samples not yet seen are 0)."""
        return self.target
