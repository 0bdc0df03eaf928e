"""Progressive Self-Knowledge Distillation (PS-KD).

Kim, Ji, Yoon & Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets",
ICCV 2021 (arXiv:2006.12000); reference code lgcnsai/PS-KD-Pytorch (``main.py``,
``loss/pskd_loss.py``), read for the details below.

The model is its own teacher: the target of sample ``i`` in epoch ``t`` mixes the given label
with the model's prediction for that sample from the previous epoch (the paper's PS-KD
target with its linear schedule for ``alpha_t``; Fig. 1 of the paper)::

    alpha_t      = alpha_T * (t + 1) / E          t = 0 .. E-1 (0-based epoch), E = epochs
    target_i^t   = (1 - alpha_t) * onehot(y~_i) + alpha_t * p_i^{t-1}
    loss         = mean_i  -sum_k target_ik^t * log softmax(f(x_i))_k

``p_i^{t-1}`` is the detached softmax of sample ``i``'s *training* forward pass in the
previous epoch (same augmentation pipeline, model in train mode), stored in an ``(N, K)``
buffer and initialised to the one-hot given label, so the target of the first epoch is the
one-hot label whatever ``alpha_0``.

Choices, checked against the reference code:

- Epochs are 0-based and ``alpha_t`` uses ``epoch + 1``: the first epoch has
  ``alpha_T / E`` (irrelevant, the store is still one-hot), the last epoch ``alpha_T``.
- One ``(N, K)`` store, as in the reference code and as the BSD paper's memory count assumes
  (Section 5: PS-KD stores as much as BSD). Each step *reads* the targets of its samples in
  :meth:`training_step` and *overwrites* them with the new predictions in
  :meth:`after_step`. Because every sample appears once per epoch, a read always sees the
  previous epoch's prediction, exactly the reference code's semantic, without a second
  buffer. (A loader that showed a sample twice in one epoch would make the second visit
  see the first visit's prediction, as the reference code would too.)
- Samples never visited in an epoch keep their previous stored prediction (the reference
  code starts from zeros and writes the one-hot label on first visit; starting from the
  one-hot label is the same for every visited sample and well defined for the others).
- ``store_dtype`` float32 by default (the reference code's precision); float16 halves the
  memory to the ``2NK`` bytes counted in the BSD paper.

Hyperparameters (BSD paper, Appendix A.1): ``alpha_T = 0.8`` (0.3 on ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import (
    Batch,
    Method,
    MethodContext,
    SampleStore,
    StepOutput,
    label_rows,
    resolve_dtype,
    soft_cross_entropy,
)

__all__ = ["PSKD"]


class PSKD(Method):
    """PS-KD (Kim et al. 2021): soft cross-entropy against
    ``(1 - alpha_t) * onehot + alpha_t * (last epoch's prediction)``.

    Args:
        alpha_T: final mixing weight ``alpha_T`` (BSD paper: 0.8; ImageNet 0.3).
        store_dtype: dtype of the ``(N, K)`` prediction store: "float32" (reference code)
            or "float16" / "bfloat16" (half the memory).
    """

    views = ("weak",)

    def __init__(self, alpha_T: float = 0.8, store_dtype: str = "float32") -> None:
        super().__init__()
        if not 0.0 <= alpha_T <= 1.0:
            raise UserError(f"method.alpha_T={alpha_T} is outside [0, 1]; use e.g. 0.8")
        resolve_dtype(store_dtype)
        self.alpha_T = float(alpha_T)
        self.store_dtype = store_dtype
        self.epochs = 1
        self.register_buffer("predictions", torch.zeros(0, 0), persistent=True)
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long), persistent=False)
        # Last epoch that trained (-1: none); soft_targets() reports the next epoch's target.
        self.register_buffer("last_epoch", torch.full((), -1, dtype=torch.long))

    def setup(self, ctx: MethodContext) -> None:
        """Allocate the ``(N, K)`` store, initialised to the one-hot given labels."""
        super().setup(ctx)
        self.epochs = int(ctx.epochs)
        labels = ctx.noisy_labels.to(device=ctx.device, dtype=torch.long)
        self.labels = labels
        # One-hot start built in place in the store's dtype (no int64 (N, K) one-hot).
        start = label_rows(labels, ctx.num_classes, 1.0, 0.0, resolve_dtype(self.store_dtype))
        self.store = SampleStore(self, "predictions", start)
        self.last_epoch = torch.full((), -1, dtype=torch.long, device=ctx.device)

    def alpha(self, epoch: int) -> float:
        """``alpha_t = alpha_T * (epoch + 1) / E``, ``epoch`` 0-based, capped at
        ``alpha_T`` (reached in the last epoch ``E - 1``)."""
        return min(self.alpha_T, self.alpha_T * (epoch + 1) / self.epochs)

    def _targets(self, idx: Tensor, labels: Tensor, alpha: float) -> Tensor:
        onehot = F.one_hot(labels, self.num_classes).float()
        return (1.0 - alpha) * onehot + alpha * self.store.read(idx)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """Soft cross-entropy of the weak view against the progressive target."""
        logits = model(batch.views["weak"])
        alpha = self.alpha(epoch)
        targets = self._targets(batch.idx, batch.target, alpha)
        loss = soft_cross_entropy(logits, targets)
        probs = F.softmax(logits.detach().float(), dim=-1)
        return StepOutput(
            loss=loss,
            logits=logits,
            extras={"alpha_t": torch.full((), alpha, device=logits.device)},
            state={"probs": probs},
        )

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        """Store this step's detached predictions; the next epoch distils from them."""
        self.store.write(batch.idx, out.state["probs"])
        self.last_epoch.fill_(epoch)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        return {"alpha_t": torch.tensor(self.alpha(epoch))}

    def soft_targets(self) -> Tensor | None:
        """Targets the next epoch will train on: ``(1 - alpha_{t+1}) onehot + alpha_{t+1} p^t``
        with ``t`` the last epoch that trained (independent of ``on_epoch_end``, which the
        engine calls after this)."""
        alpha = self.alpha(int(self.last_epoch) + 1)
        idx = torch.arange(self.labels.shape[0], device=self.labels.device)
        return self._targets(idx, self.labels, alpha)
