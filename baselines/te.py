"""Temporal Ensembling (TE) with the noisy labels as the supervised targets.

Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017, Section 2.2 and
Algorithm 2; the original Theano code (smlaine2/tempens, ``train.py``) is the reference.

Per sample ``i`` the method keeps the ensemble accumulator ``Z_i`` and, during an epoch, the
softmax prediction ``z_i`` of the training forward pass (augmented view, train mode). Once per
epoch, after the training pass (Algorithm 2, last lines):

    Z_i <- a * Z_i + (1 - a) * z_i                                   (Laine 2017, Alg. 2)
    z~_i <- Z_i / (1 - a^n_i)          (startup bias correction; n_i = number of updates of Z_i)

and the loss of a mini-batch ``B`` at epoch ``t`` (0-based) is

    -1/|B| sum_i log f(x_i)[y~_i]  +  w(t) * 1/(K |B|) sum_i ||f(x_i) - z~_i||^2
                                                                     (Laine 2017, Alg. 2)

i.e. cross-entropy on the noisy label plus ``w(t)`` times the squared error averaged over the
batch AND the classes. The unsupervised weight ramps up with a Gaussian curve

    w(t) = w_max * exp(-5 (1 - t / T_r)^2) for t < T_r,  w_max afterwards,  and w(0) = 0,

exactly as the original code: its ``rampup`` gives ``exp(-5) > 0`` at epoch 0, and the training
loop then forces the weight to 0 for the first epoch (there are no ensemble targets yet).

Choices and their sources:

* ``alpha = 0.6`` (``a``) and ``rampup_epochs = 100`` are the BSD paper's (Appendix A.1; 45 on
  ImageNet; the original code uses 80).
* ``w_max = 300``: the BSD paper does not give it. The original code scales ``w_max`` by the
  labelled fraction ``M / N``; with noisy labels every sample is labelled, so the factor is 1.
  Its label-corruption setting (SVHN) uses ``w_max = 300`` below 50 % corruption and ``3000``
  from 50 % on, so the default is 300; set ``w_max: 3000`` for >= 50 % noise.
* Samples that are not seen in an epoch (e.g. a dropped last batch) keep their ``Z_i``; the bias
  correction counts each sample's own updates ``n_i``. When every sample is seen every epoch,
  ``n_i = t + 1`` for all ``i``, which is the original's ``1 - a^(t+1)``. (The original's
  default mode would shrink an unseen sample's ``Z_i`` towards 0.) Samples without any update yet
  are left out of the consistency term (they contribute 0 to the sum; the mean still divides by
  ``K |B|``), and :meth:`soft_targets` reports them as uniform.
* The original also ramps the learning rate and anneals Adam's ``beta1`` over the last 50
  epochs; here the engine owns the optimizer: see ``conf/method_optim/te.yaml``, applied
  automatically for ``method=te``.

All state lives in registered buffers, so a checkpoint taken mid-epoch resumes exactly.
"""

from __future__ import annotations

import math

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
    resolve_dtype,
)

__all__ = ["TemporalEnsembling", "rampup_weight"]


def rampup_weight(epoch: int, w_max: float, rampup_epochs: int) -> float:
    """``w(t)`` of Laine & Aila (2017): 0 at epoch 0, ``w_max exp(-5 (1 - t/T_r)^2)`` for
    ``t < T_r`` and ``w_max`` afterwards (``epoch`` is 0-based)."""
    if epoch <= 0:
        return 0.0
    if epoch >= rampup_epochs:
        return float(w_max)
    p = 1.0 - epoch / rampup_epochs
    return float(w_max) * math.exp(-5.0 * p * p)


class TemporalEnsembling(Method):
    """Cross-entropy on the noisy labels plus a ramped-up squared-error consistency term towards
    the bias-corrected per-sample ensemble of past training predictions.

    Args:
        alpha: ensemble momentum ``a`` in ``[0, 1)`` (BSD paper: 0.6).
        w_max: maximum consistency weight (default 300; see the module docstring).
        rampup_epochs: ``T_r``, epochs of the Gaussian ramp-up (BSD paper: 100; 45 on ImageNet).
        store_dtype: dtype of the two ``(N, K)`` stores: "float32" (default), "float16" or
            "bfloat16" (halves the memory, e.g. for ImageNet).
        drop_last: drop each epoch's last, smaller batch, as the original's
            ``iterate_minibatches_augment_tempens`` does (``experiment=ref_te``); a dropped
            sample keeps its ``Z_i`` (see the module docstring).
    """

    views = ("weak",)

    ensemble: Tensor
    epoch_pred: Tensor
    seen: Tensor
    updates: Tensor

    def __init__(
        self,
        alpha: float = 0.6,
        w_max: float = 300.0,
        rampup_epochs: int = 100,
        store_dtype: str = "float32",
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        alpha, w_max = float(alpha), float(w_max)
        if not 0.0 <= alpha < 1.0:
            raise UserError(
                f"method.alpha={alpha} must be in [0, 1) (the ensemble momentum); use 0.6."
            )
        if not (w_max >= 0 and math.isfinite(w_max)):
            raise UserError(f"method.w_max={w_max} must be a finite number >= 0; use e.g. 300.")
        if int(rampup_epochs) != rampup_epochs or rampup_epochs < 0:
            raise UserError(
                f"method.rampup_epochs={rampup_epochs} must be a whole number >= 0; use e.g. 100."
            )
        resolve_dtype(store_dtype)
        self.alpha = alpha
        self.w_max = w_max
        self.rampup_epochs = int(rampup_epochs)
        self.store_dtype = store_dtype
        self.drop_last = bool(drop_last)

    def setup(self, ctx: MethodContext) -> None:
        """Allocate ``Z`` (``ensemble``), this epoch's predictions (``epoch_pred``), the
        seen-this-epoch mask and the per-sample update counts ``n_i``, all zero."""
        super().setup(ctx)
        n, k, dev = ctx.num_samples, ctx.num_classes, ctx.device
        dtype = resolve_dtype(self.store_dtype)
        self.ensemble_store = SampleStore(
            self, "ensemble", torch.zeros(n, k, dtype=dtype, device=dev)
        )
        self.epoch_store = SampleStore(
            self, "epoch_pred", torch.zeros(n, k, dtype=dtype, device=dev)
        )
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool, device=dev))
        self.register_buffer("updates", torch.zeros(n, dtype=torch.long, device=dev))

    def unsup_weight(self, epoch: int) -> float:
        """The consistency weight ``w(t)`` used during ``epoch`` (0-based)."""
        return rampup_weight(epoch, self.w_max, self.rampup_epochs)

    def _targets(self, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bias-corrected targets ``Z / (1 - a^n)`` (float32) and the mask ``n > 0``."""
        z = self.ensemble if idx is None else self.ensemble[idx]
        n = self.updates if idx is None else self.updates[idx]
        has = n > 0
        # 1 - a^n, with a harmless 1 where n == 0 (those rows are masked / replaced).
        denom = torch.where(has, 1.0 - torch.pow(self.alpha, n.float()), 1.0)
        return z.float() / denom.unsqueeze(1), has

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        logits32 = logits.float()
        prob = F.softmax(logits32, dim=-1)
        ce = F.cross_entropy(logits32, batch.target)
        target, has = self._targets(batch.idx)
        sq = (prob - target).square() * has.unsqueeze(1)
        consistency = sq.sum() / sq.numel()  # mean over batch AND classes
        loss = ce + self.unsup_weight(epoch) * consistency
        return StepOutput(
            loss=loss,
            logits=logits,
            extras={"ce": ce.detach(), "consistency": consistency.detach()},
            state={"prob": prob.detach()},
        )

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        """Gather this epoch's training predictions ``z_i`` (Alg. 2: "accumulate")."""
        self.epoch_store.write(batch.idx, out.state["prob"])
        self.seen[batch.idx] = True

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        """``Z <- a Z + (1 - a) z`` for the samples seen this epoch, then reset the epoch store."""
        seen = self.seen.unsqueeze(1)
        new = self.alpha * self.ensemble.float() + (1.0 - self.alpha) * self.epoch_pred.float()
        self.ensemble.copy_(torch.where(seen, new, self.ensemble.float()))
        self.updates += self.seen.long()
        logs = {
            "unsup_weight": torch.tensor(self.unsup_weight(epoch)),
            "seen_fraction": self.seen.float().mean(),
        }
        self.seen.zero_()
        self.epoch_store.fill_(0.0)
        return logs

    def soft_targets(self) -> Tensor:
        """The bias-corrected ensemble targets ``(N, K)``; uniform for never-updated samples."""
        target, has = self._targets()
        uniform = torch.full_like(target, 1.0 / target.shape[1])
        return torch.where(has.unsqueeze(1), target, uniform)
