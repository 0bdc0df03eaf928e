"""BSD+ : BSD plus a consistency term between strong and weak views (Appendix A.1, Eq. 11).

Loss per batch::

    L = L_BSD(weak view; sharpened y^{t-1})                      (Eq. 12, as in BSD)
      + lambda_c / m * sum_{j=1..m} KL_j(strong view j, weak prediction yhat)   (Eq. 11)

The BSD part, the Dirichlet target store and the Eq. 5 update are inherited unchanged
from :class:`noisybench.methods.bsd.BSD`; the Eq. 5 evidence is the weak-view prediction
``yhat`` of this step. Decisions the paper leaves open (tested in ``tests/test_bsdplus.py``):

* **KL direction and detach.** Eq. 11 writes ``KL(f(T_j(x)), yhat)`` without saying which
  side is the target. Default (``kl_direction="target_to_strong"``, ``detach_weak=True``):
  the semi-supervised convention of UDA / FixMatch, the weak prediction is a fixed target
  for the strong view, ``KL(stopgrad(yhat) || p_strong)``; the consistency term then moves
  only the strong-view predictions towards the weak one and never pulls the weak view
  (whose prediction is also BSD's evidence) towards the strong one.
  ``kl_direction="strong_to_target"`` gives ``KL(p_strong || yhat)`` (Eq. 11 read
  literally); ``detach_weak=False`` lets the term's gradient reach the weak view too.
* **Strong views.** The data layer's ``strong_<j>`` views (AutoAugment + Random Erasing,
  an independent draw per view) are CutMixed here (Yun et al., 2019; one Beta(alpha, alpha)
  box and permutation per view and batch, applied with probability ``cutmix_prob``; see
  :mod:`noisybench.augment`). The target of a CutMixed view is the weak prediction mixed
  the same way, ``lam * yhat_i + (1 - lam) * yhat_perm(i)``, with ``lam`` the box-corrected
  area. The paper gives neither probability nor alpha; defaults are Yun et al.'s CIFAR
  setting (alpha = 1, prob = 0.5).
* **Loss scale.** ``loss_scale`` multiplies the whole loss (both terms), so ``lambda_c``
  keeps the paper's meaning (the ratio of the two terms) whichever scale is chosen. Each
  KL is averaged over the batch.
* **One forward pass (``joint_forward=True``, default)** over ``cat(weak, strong_1..m)``.
  With BatchNorm in train mode, the batch statistics of that pass are computed over weak
  *and* strong images, so the weak logits (used by the BSD term, as the KL target and as
  the Eq. 5 evidence) are normalised with statistics of a batch that is ``m / (m + 1)``
  strong images; the running statistics used at evaluation are a moving average of the
  same mixed batches. We keep the evidence from the joint pass: it is the same ``yhat`` in
  all three places, as Algorithm 1 and Eq. 11 use one symbol ``yhat^t``, and its
  normalisation matches the running statistics the model is evaluated with. A weak-only
  second pass for the evidence would cost an extra forward and would itself update the BN
  running statistics. ``joint_forward=False`` runs two passes, weak alone then all strong
  views together, so each sees its own BN statistics (the weak-only evidence of plain BSD)
  at about the same compute; the running statistics then get two updates per step, the
  last from the strong batch. For models without BatchNorm both modes give the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.augment import CutMixOutput, cutmix, mix_log_targets
from noisybench.errors import UserError
from noisybench.losses import kl_from_log
from noisybench.method import Batch, StepOutput
from noisybench.methods.bsd import BSD

__all__ = ["BSDPlus", "consistency_kl"]

KL_DIRECTIONS = ("target_to_strong", "strong_to_target")


def consistency_kl(
    weak_logits: Tensor,
    strong_logits: list[Tensor],
    perms: list[Tensor],
    lams: list[Tensor],
    kl_direction: str = "target_to_strong",
    detach_weak: bool = True,
) -> Tensor:
    """``1/m sum_j mean_i KL_j`` of Eq. 11, without ``lambda_c`` and without loss scaling.

    Args:
        weak_logits: ``(B, K)`` logits of the weak view (``yhat = softmax``).
        strong_logits: ``m`` tensors ``(B, K)``, logits of the (CutMixed) strong views.
        perms, lams: per strong view, the CutMix permutation and kept-area ratio; the target
            of view ``j`` is ``lam_j * yhat + (1 - lam_j) * yhat[perm_j]``.
        kl_direction: ``"target_to_strong"``: ``KL(target || p_strong)``;
            ``"strong_to_target"``: ``KL(p_strong || target)``.
        detach_weak: stop the gradient through the target (the weak prediction).
    """
    log_weak = F.log_softmax(weak_logits.float(), dim=-1)
    if detach_weak:
        log_weak = log_weak.detach()
    total = weak_logits.new_zeros((), dtype=torch.float32)
    for logits, perm, lam in zip(strong_logits, perms, lams, strict=True):
        log_t = mix_log_targets(log_weak, perm, lam)
        log_q = F.log_softmax(logits.float(), dim=-1)
        if kl_direction == "target_to_strong":
            kl = kl_from_log(log_t, log_q)
        else:
            kl = kl_from_log(log_q, log_t)
        total = total + kl.mean()
    return total / len(strong_logits)


class BSDPlus(BSD):
    """BSD with a weak/strong consistency term (BSD+, Appendix A.1).

    Args:
        gamma, c, eps, tau, store_dtype, loss_scale: as in :class:`BSD` (the paper's BSD+
            values: gamma 0.95, c 1000, eps 0, tau 0.8).
        lambda_c: weight of the consistency term (paper: 4 / 7 / 14 for 20 / 50 / 80 %
            symmetric noise, 2 for asymmetric), >= 0.
        num_strong: m, the number of strong views (paper: 2); views are
            ``("weak", "strong_1", ..., "strong_m")``.
        kl_direction: ``"target_to_strong"`` (default) or ``"strong_to_target"``.
        detach_weak: treat the weak prediction as a fixed target (default True).
        cutmix_prob: probability of CutMixing each strong view of a batch, in ``[0, 1]``.
        cutmix_alpha: Beta concentration of CutMix's ``lam``, > 0.
        joint_forward: one forward pass over all views (True) or a weak and a strong pass.
    """

    def __init__(  # noqa: PLR0913
        self,
        gamma: float = 0.95,
        c: float = 1000.0,
        eps: float = 0.0,
        tau: float = 0.8,
        lambda_c: float = 7.0,
        num_strong: int = 2,
        kl_direction: str = "target_to_strong",
        detach_weak: bool = True,
        cutmix_prob: float = 0.5,
        cutmix_alpha: float = 1.0,
        joint_forward: bool = True,
        store_dtype: str = "float16",
        loss_scale: str = "mean",
    ) -> None:
        super().__init__(
            gamma=gamma, c=c, eps=eps, tau=tau, store_dtype=store_dtype, loss_scale=loss_scale
        )
        if not lambda_c >= 0.0:
            raise UserError(f"BSD+ lambda_c must be >= 0, got {lambda_c}; use e.g. 7.")
        if isinstance(num_strong, bool) or int(num_strong) != num_strong or num_strong < 1:
            raise UserError(f"BSD+ num_strong must be an integer >= 1, got {num_strong}.")
        if kl_direction not in KL_DIRECTIONS:
            raise UserError(
                f"BSD+ kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}."
            )
        if not 0.0 <= cutmix_prob <= 1.0:
            raise UserError(f"BSD+ cutmix_prob must be in [0, 1], got {cutmix_prob}.")
        if not cutmix_alpha > 0.0:
            raise UserError(f"BSD+ cutmix_alpha must be > 0, got {cutmix_alpha}; use 1.0.")
        self.lambda_c = float(lambda_c)
        self.num_strong = int(num_strong)
        self.kl_direction = kl_direction
        self.detach_weak = bool(detach_weak)
        self.cutmix_prob = float(cutmix_prob)
        self.cutmix_alpha = float(cutmix_alpha)
        self.joint_forward = bool(joint_forward)
        self.strong_keys = tuple(f"strong_{j}" for j in range(1, self.num_strong + 1))
        self.views = ("weak", *self.strong_keys)

    def mix_strong(self, images: Tensor) -> CutMixOutput:
        """CutMix one strong view (identity with ``lam = 1`` when ``cutmix_prob == 0``)."""
        if self.cutmix_prob == 0.0:
            perm = torch.arange(images.shape[0], device=images.device)
            return CutMixOutput(images, perm, torch.ones((), device=images.device))
        return cutmix(images, alpha=self.cutmix_alpha, prob=self.cutmix_prob)

    def forward_views(
        self, model: nn.Module, weak: Tensor, strong: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits of the weak view and of each strong view (joint or two passes)."""
        batch = weak.shape[0]
        if self.joint_forward:
            logits = model(torch.cat([weak, *strong], dim=0))
            weak_logits, *strong_logits = logits.split(batch, dim=0)
        else:
            weak_logits = model(weak)
            strong_logits = list(model(torch.cat(strong, dim=0)).split(batch, dim=0))
        return weak_logits, list(strong_logits)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """BSD term on the weak view + ``lambda_c`` x consistency term (Eq. 11, 12)."""
        mixed = [self.mix_strong(batch.views[key]) for key in self.strong_keys]
        weak_logits, strong_logits = self.forward_views(
            model, batch.views["weak"], [mix.images for mix in mixed]
        )
        target = self.batch_targets(batch.idx)
        loss_bsd = self.bsd_loss(weak_logits, target)
        loss_cons = consistency_kl(
            weak_logits,
            strong_logits,
            [mix.perm for mix in mixed],
            [mix.lam for mix in mixed],
            kl_direction=self.kl_direction,
            detach_weak=self.detach_weak,
        ) * self.scale(weak_logits.shape[-1])
        loss = loss_bsd + self.lambda_c * loss_cons
        probs = torch.softmax(weak_logits.detach().float(), dim=-1)
        return StepOutput(
            loss=loss,
            logits=weak_logits,
            extras={
                "loss_bsd": loss_bsd.detach(),
                "loss_consistency": loss_cons.detach(),
                "cutmix_lam": torch.stack([mix.lam for mix in mixed]).mean(),
                "bsd_target_max": target.amax(dim=-1).mean(),
            },
            state={"probs": probs},
        )
