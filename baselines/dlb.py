"""Self-Distillation from the Last mini-Batch (DLB).

Shen, Xu, Yang, Li & Guo, "Self-Distillation from the Last Mini-Batch for Consistency
Regularization", CVPR 2022 (arXiv:2203.16172); reference code Meta-knowledge-Lab/DLB
(``dlb.py``, ``my_dataloader.py``), read for the details below.

Every sample is seen in two consecutive steps: fresh in step ``s`` and again, with a new
random augmentation, in step ``s + 1``, where the logits it got in step ``s`` (detached) are a
soft target for it (the paper's objective, as the reference code computes it)::

    L = CE(all samples of the step)
        + alpha * T^2 * mean_{i carried} KL( softmax(z_i^{s} / T) || softmax(z_i^{s+1} / T) )

``z^{s}`` are the previous step's logits (no gradient), ``z^{s+1}`` the current ones.

How the reference code builds a step, and how noisybench reproduces it:

- The reference loader draws ``B`` fresh images per step (``--batch_size 64``), each with two
  independent augmentations; step ``s + 1`` uses its ``B`` fresh images (first
  augmentation) and the *whole* previous batch (second augmentation), so a step has ``2B``
  images: the "doubled mini-batch size" of the BSD paper (Appendix A.1), which trains DLB for
  100 epochs instead of 200 to compensate. In noisybench the loader does the repeating:
  ``carry_previous = 1.0`` asks it to prepend all ``B`` fresh samples of the previous batch,
  freshly augmented; ``Batch.carried`` says how many leading samples are repeats. (A fraction
  below 1 repeats only the last part of the previous batch.)
- Forward passes: the reference code runs TWO passes per step, first the fresh batch, then
  the previous batch, so BatchNorm normalises each half with its own batch statistics and
  updates its running statistics twice per step. That is the default here
  (``joint_forward=False``). ``joint_forward=True`` forwards carried + fresh in one pass
  (one set of batch statistics over ``2B`` images, one running-statistics update; slightly
  faster); it is not the reference's behaviour. Without BatchNorm both give the same loss.
- Cross-entropy: mean over all ``carried + fresh`` samples of the step (reference:
  ``cross_entropy(cat(out_pre, out), cat(pre_label, label))``).
- KL: ``batchmean`` over the carried samples, times ``T^2``; teacher side detached.
- The stored logits are those of the previous step's *fresh* samples (reference:
  ``pre_out = out``), kept with their dataset indices. Carried samples are matched to the
  store by index (so the order the loader uses does not matter); a carried sample without a
  match contributes no KL term, and ``train/dlb_unmatched`` (carried samples per step
  without a stored teacher; 0 when the loader works) makes that visible.
- Epoch boundaries: the reference code passes ``pre_data, pre_out`` from the last step of an
  epoch to the first step of the next; the store here likewise survives ``on_epoch_end`` and
  checkpoints, so the first batch of an epoch is distilled whenever the loader carries
  samples into it. With ``Batch.carried == 0`` the step is plain cross-entropy.
- Store: two registered buffers, ``prev_logits`` ``(B, K)`` float32 and ``prev_idx`` ``(B,)``.
  The BSD paper counts ``2BK`` bytes (float16); float32 costs ``4BK`` bytes, a few hundred
  kilobytes at most, and keeps the teacher exact. The buffers are resized on
  ``load_state_dict`` to the saved batch size.

Hyperparameters (BSD paper, Appendix A.1, following Shen et al.): ``T = 3``, ``alpha = 1.0``,
100 epochs (half the epochs of the other methods, since every sample is forwarded twice).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput, kl_from_log

__all__ = ["DLB"]


def _kl_rows(teacher_logits: Tensor, student_logits: Tensor, T: float) -> Tensor:
    """Per-row ``KL(softmax(teacher/T) || softmax(student/T))``."""
    log_p = F.log_softmax(teacher_logits.float() / T, dim=-1)
    log_q = F.log_softmax(student_logits.float() / T, dim=-1)
    return kl_from_log(log_p, log_q)


class DLB(Method):
    """DLB (Shen et al. 2022): CE on every sample plus ``alpha * T^2 * KL`` between the
    previous step's detached logits and the current logits of the repeated samples.

    Args:
        T: distillation temperature (paper: 3).
        alpha: weight of the distillation term (paper: 1.0).
        joint_forward: one forward over carried + fresh samples instead of the reference
            code's two passes (fresh, then carried); see the module docstring.
    """

    views = ("weak",)
    carry_previous: ClassVar[float] = 1.0

    def __init__(self, T: float = 3.0, alpha: float = 1.0, joint_forward: bool = False) -> None:
        super().__init__()
        if not 0 < T < math.inf:  # NaN fails this test too
            raise UserError(f"method.T={T} must be a positive finite number; use e.g. 3")
        if not 0 <= alpha < math.inf:
            raise UserError(f"method.alpha={alpha} must be non-negative; use e.g. 1.0")
        self.T = float(T)
        self.alpha = float(alpha)
        self.joint_forward = bool(joint_forward)
        self.register_buffer("prev_logits", torch.zeros(0, 0))
        self.register_buffer("prev_idx", torch.zeros(0, dtype=torch.long))

    def setup(self, ctx: MethodContext) -> None:
        """Start with an empty store: the very first step has nothing to distil from."""
        super().setup(ctx)
        self.prev_logits = torch.zeros(0, ctx.num_classes, device=ctx.device)
        self.prev_idx = torch.zeros(0, dtype=torch.long, device=ctx.device)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """Forward fresh then carried samples (two passes, or one with ``joint_forward``);
        CE on all, KL on the carried ones. ``logits`` keep the batch order (carried first)."""
        x = batch.views["weak"]
        c = int(batch.carried)
        if self.joint_forward or c == 0 or c == x.shape[0]:
            logits = model(x)
        else:
            fresh_logits = model(x[c:])
            carried_logits = model(x[:c])
            logits = torch.cat([carried_logits, fresh_logits])
        ce = F.cross_entropy(logits.float(), batch.target)
        kl = logits.new_zeros((), dtype=torch.float32)
        unmatched = logits.new_zeros((), dtype=torch.float32)
        if c > 0:
            same = batch.idx[:c, None] == self.prev_idx[None, :]  # (c, P), P may be 0
            found = same.any(dim=1)
            if self.prev_idx.shape[0] > 0:
                row = same.int().argmax(dim=1)
                teacher = self.prev_logits[row]  # a buffer: never part of the graph
            else:
                teacher = logits[:c].detach()  # nothing stored yet: masked out below
            per_sample = _kl_rows(teacher, logits[:c], self.T) * found
            kl = per_sample.sum() / found.sum().clamp(min=1)
            unmatched = (~found).sum().float()
        loss = ce + self.alpha * self.T**2 * kl
        return StepOutput(
            loss=loss,
            logits=logits,
            extras={"ce": ce.detach(), "kl": kl.detach(), "dlb_unmatched": unmatched},
            state={"fresh_logits": logits[c:].detach().float(), "fresh_idx": batch.idx[c:]},
        )

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        """Keep this step's fresh logits (detached) as the next step's teacher."""
        self.prev_logits = out.state["fresh_logits"].clone()
        self.prev_idx = out.state["fresh_idx"].clone()

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The store's first dimension is the last batch's size: resize before copying.
        for name in ("prev_logits", "prev_idx"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                current = getattr(self, name)
                setattr(self, name, current.new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
