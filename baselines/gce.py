"""Generalized Cross Entropy (GCE) and its truncated variant.

Reference: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
with Noisy Labels", NeurIPS 2018. The paper's authors published no code; the reference used
here is the *unofficial* implementation github.com/AlanChou/Truncated-Loss (its README says so;
``TruncatedLoss`` in ``TruncatedLoss.py``, pruning schedule in ``main.py``), which averages the
loss instead of summing it and selects the checkpoint it prunes with on the *test* accuracy
(its README: "I used the model from the best test accuracy epoch to conduct the pruning
step"), so its numbers are not the paper's protocol.

GCE, Eq. 6 of the paper (the negative Box-Cox transform of the predicted probability of the
given label): ``L_q(f(x), y) = (1 - f_y(x)^q) / q``, with ``q in (0, 1]``; ``q -> 0`` is
cross-entropy and ``q = 1`` is MAE (up to a constant). Its gradient is
``f_y^q * (-d log f_y)`` (Eq. 7): cross-entropy's gradient weighted by ``f_y^q``.
The paper's and the unofficial code's default: ``q = 0.7``.

Truncated L_q (Eq. 9-12, optional, ``truncated=true``): per-sample weights ``w_i in {0, 1}``
(a registered buffer, all 1 at start) and the loss
``mean_i w_i * (L_q(f(x_i), y_i) - L_q(k))`` with ``L_q(k) = (1 - k^q) / q`` (the code's form:
the constant does not change the gradient). Every ``prune_every`` epochs from epoch
``start_prune`` on (1-based, as the code: ``(epoch+1) >= 40 and (epoch+1) % 10 == 0``), before
that epoch's training, the weights are recomputed over the training set:
``w_i = 1 if L_q(k) > L_q(f(x_i), y_i)`` (i.e. ``f_{y_i}(x_i) > k``) else ``0`` (the code's
``update_weight``); ``k = 0.5``.

Deviations from the code: the pruning pass uses the current model on the plain
(un-augmented) view through :meth:`Method.on_epoch_start`; the code first reloads the best
checkpoint so far (chosen on the *test* accuracy) and evaluates the training loader with its
training augmentation. Nothing here selects on the test set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput

__all__ = ["GeneralizedCrossEntropy", "gce_loss"]


def gce_loss(logits: Tensor, target: Tensor, q: float) -> Tensor:
    """Per-sample ``(1 - p_y^q) / q`` with ``p = softmax(logits)`` (Zhang & Sabuncu, Eq. 6)."""
    p_y = torch.softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    return (1.0 - p_y.pow(q)) / q


class GeneralizedCrossEntropy(Method):
    """GCE (``L_q``) on the weak view; the truncated ``L_q`` with pruning when asked.

    Args:
        q: the Box-Cox exponent (paper and code: 0.7).
        truncated: use the truncated loss with per-sample pruning weights.
        k: truncation threshold on ``f_y`` (paper and code: 0.5).
        start_prune: first 1-based epoch at which the weights are recomputed (the unofficial
            code: 40 on CIFAR-10, 80 on CIFAR-100; the config's ``${authors:start_prune}``);
            ``None`` only without truncation, where it is unused.
        prune_every: recompute every this many epochs (code: 10).
    """

    views = ("weak",)

    def __init__(
        self,
        q: float = 0.7,
        truncated: bool = False,
        k: float = 0.5,
        start_prune: int | None = 40,
        prune_every: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 < float(q) <= 1.0:
            raise UserError(f"method.q={q} must be in (0, 1]; the paper uses q=0.7")
        if not 0.0 < float(k) < 1.0:
            raise UserError(f"method.k={k} must be in (0, 1); the paper uses k=0.5")
        if start_prune is None:
            if truncated:
                raise UserError(
                    "method.truncated=true needs method.start_prune (the unofficial code: 40 on "
                    "CIFAR-10, 80 on CIFAR-100); set it explicitly"
                )
            start_prune = 1  # unused without truncation
        if int(start_prune) < 1 or int(prune_every) < 1:
            raise UserError(
                f"method.start_prune={start_prune} and method.prune_every={prune_every} must be "
                "positive epoch counts; the code uses 40 and 10"
            )
        self.q = float(q)
        self.truncated = bool(truncated)
        self.k = float(k)
        self.start_prune = int(start_prune)
        self.prune_every = int(prune_every)
        self.noisy: Tensor
        self.weight: Tensor

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.register_buffer("noisy", ctx.noisy_labels.clone(), persistent=False)
        self.register_buffer("weight", torch.ones(ctx.num_samples, device=ctx.device))

    def lqk(self) -> float:
        """``L_q(k) = (1 - k^q) / q``."""
        return (1.0 - self.k**self.q) / self.q

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        loss = gce_loss(logits, batch.target, self.q)
        extras: dict[str, Tensor] = {}
        if self.truncated:
            w = self.weight[batch.idx]
            loss = (loss - self.lqk()) * w
            extras["kept"] = w.mean()
        return StepOutput(loss=loss.mean(), logits=logits, extras=extras)

    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """Recompute the pruning weights (Truncated L_q, the code's ``update_weight``)."""
        one_based = epoch + 1
        if not self.truncated or one_based < self.start_prune or one_based % self.prune_every:
            return
        lq = gce_loss(evaluate_train(model), self.noisy, self.q)
        self.weight.copy_((lq < self.lqk()).float())
