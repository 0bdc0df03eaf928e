"""Bayesian Self-Distillation (BSD), Adelöw, Gamba & Maki, Section 3 and Appendix A.1.

Every training sample ``i`` carries a Dirichlet belief ``Dir(alpha_i)`` over its latent
class distribution. It starts from the *given* (possibly noisy) label (Eq. 2):
``alpha0_ij = c`` for the labelled class and ``eps`` otherwise. After each mini-batch the
model's own detached prediction ``yhat_i`` of that step is added as fractional evidence,
with the old evidence discounted by ``gamma``: ``alpha_i <- gamma * alpha_i + yhat_i``
(Eq. 4 with discounting). The network is trained towards the posterior predictive
``y_i = alpha_i / A_i`` with ``A_i = sum_j alpha_ij``, optionally sharpened (Eq. 12).

Storage follows the paper: the normalised target ``y`` (N, K) and the count ``A`` (N,)
instead of ``alpha``, updated by Eq. 5::

    w = gamma * A / (gamma * A + 1);   y <- w * y + (1 - w) * yhat;   A <- gamma * A + 1

Decisions the paper leaves open (each one is tested in ``tests/test_bsd.py``):

* **Order (Algorithm 1).** ``training_step`` computes the loss against ``y^{t-1}`` (the
  stored targets, untouched by this step); ``after_step``, which the engine calls after
  the optimizer step, applies Eq. 5 with the softmax of that same forward pass.
* **Loss scale.** Algorithm 1 and Eq. 12 write ``1 / (|B| k)``. ``loss_scale="mean"``
  (default) averages the per-sample soft cross-entropy ``-sum_k t_k log p_k`` over the
  batch, exactly the scale of ``F.cross_entropy``: with ``c -> inf`` BSD then has the same
  gradients as cross-entropy (Section 3.3), and learning rates tuned for cross-entropy
  apply unchanged (this matters for SGD; Adam is nearly scale-invariant).
  ``loss_scale="paper"`` additionally divides by ``k`` (the number of classes), as written.
  The soft cross-entropy and ``KL(target || p)`` differ by the target's entropy, a constant,
  so their gradients are identical; we return the cross-entropy.
* **Sharpening (Eq. 12).** ``t = y^(1/tau) / ||y^(1/tau)||_1``, computed in float32 from
  the stored row after renormalising it (``tau = 1`` is then the identity). Only the loss
  target is sharpened; the stored ``y`` and Eq. 5 are not.
* **Precision.** The update runs in float32 and the result is written back in
  ``store_dtype``. With ``float16`` the stored rows are renormalised when read, so that
  rounding does not accumulate (an fp16 row of a one-hot-like target cannot move its
  largest entry by less than ~2.4e-4, which would otherwise leave the row summing to
  slightly more than 1). ``A`` is always float32: the paper's 2N-byte float16 ``A`` stalls
  short of its fixed point ``1 / (1 - gamma)`` once ``(1 - gamma) * |A - A*|`` falls under
  half a float16 spacing (e.g. gamma = 0.99: ``A`` stays near 103 instead of 100), and it
  costs only 2N extra bytes next to the 2NK of ``y``. Memory: ``NK * bytes(store_dtype) + 4N``.
* **Repeated indices in one batch** (only possible with a sampler that draws with
  replacement, or a method that appends earlier samples): the result equals applying
  Eq. 5 once per occurrence, in batch order, i.e. ``alpha <- gamma^m alpha +
  sum_r gamma^(m-1-r) yhat_r``. It is computed without host synchronisation and every
  duplicate writes a bit-identical row, so the write is deterministic. The cost is
  O(B log B + B K) (a stable sort of the batch's indices groups the occurrences of a sample;
  no B x B matrix), so the exact path is also the fast one for the loader's unique indices.

**ImageNet size** (N = 1.28M, K = 1000): the store is one float16 ``(N, K)`` tensor (2.4 GiB)
plus ``A``, built in place (:func:`noisybench.stores.label_rows`); the epoch-end
diagnostics and :meth:`BSD.soft_target_rows` work in row chunks, so no ``(N, K)`` float32
temporary is made (``benchmarks/bench_bsd_store.py`` measures it).

**CutOut / CutMix on half the batch** (Section 4.2.4, Table 5; ``mix_half``, tested in
``tests/test_bsd_mixhalf.py``): "the augmentations are applied to half of the images in
each mini-batch, while the remaining half is used for distillation". With ``mix_half`` set,
a batch of ``B`` weak-view images is split by position: the first ``B - B // 2`` samples
(the distillation half) are used as in plain BSD; the last ``B // 2`` (the augmented half;
batches come from a random permutation, so this is a random half) are augmented on the
device with :mod:`noisybench.augment`:

* ``"cutmix"``: one ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``, one box and one permutation
  ``perm`` *of the augmented half* (an image receives a patch from another augmented image,
  or from itself when ``perm`` fixes it), applied to every batch (no extra probability: the
  half split already leaves half the batch unmixed). The loss target of augmented sample
  ``i`` is the mix of the (sharpened) soft targets, ``lam * t_i + (1 - lam) * t_perm(i)``,
  with ``lam`` the box-corrected kept area: CutMix "combines soft targets rather than one-hot
  labels".
* ``"cutout"``: one square per image of side ``round(cutout_size * H)`` (0.5: 16 pixels on
  32x32, DeVries & Taylor's CIFAR-10 setting) at a uniform centre, clipped to the image,
  set to 0 in the *normalised* space, i.e. the dataset mean colour (the reference code
  multiplies the normalised tensor by a zero mask). The target is the sample's own ``t_i``.

One forward pass over the whole batch (distillation half + augmented half, so BatchNorm
sees both); the loss is the batch mean over all ``B`` per-sample soft cross-entropies.
The Eq. 5 update uses ONLY the distillation half's predictions and touches only its
samples (``StepOutput.state["update_idx"]``); the augmented samples' ``y`` and ``A`` stay
as they were. This halves the update frequency, which the paper compensates for with
gamma = 0.9 and c = 500 (``experiment=table5_cutmix`` / ``table5_cutout``). The draws are
returned in ``StepOutput.state`` (CutMix: ``mix_perm`` as batch positions, ``mix_lam``,
``mix_mask`` the (H, W) box; CutOut: ``mix_mask`` (B // 2, H, W), ``cutout_cy``,
``cutout_cx``; both: ``loss_target``) for diagnostics and tests.
``mix_half=None`` (default) is plain BSD, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisybench.augment import cutmix, cutout, mix_targets
from noisybench.errors import UserError
from noisybench.losses import soft_cross_entropy_per_sample
from noisybench.method import Batch, Method, MethodContext, StepOutput
from noisybench.stores import DEFAULT_CHUNK_ROWS, SampleStore, label_rows, resolve_dtype

__all__ = ["BSD", "dirichlet_prior", "discounted_update", "sharpen"]

STORE_DTYPES = ("float16", "float32")
LOSS_SCALES = ("mean", "paper")
MIX_HALF = (None, "cutmix", "cutout")
_ENTROPY_CHUNK_ROWS = DEFAULT_CHUNK_ROWS


def dirichlet_prior(
    labels: Tensor, num_classes: int, c: float, eps: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Eq. 2 in normalised form: ``y0_ij = alpha0_ij / A0`` and ``A0 = c + (K - 1) eps``.

    Returns ``(targets (N, K) in dtype, counts (N,) float32)`` on ``labels.device``.
    """
    count0 = c + (num_classes - 1) * eps
    targets = label_rows(labels, num_classes, c / count0, eps / count0, dtype)
    counts = torch.full((labels.shape[0],), count0, dtype=torch.float32, device=labels.device)
    return targets, counts


def sharpen(targets: Tensor, tau: float) -> Tensor:
    """Eq. 12: ``t^(1/tau) / ||t^(1/tau)||_1`` per row, in float32.

    Rows are renormalised first, so ``tau = 1`` returns the (renormalised) input. The row
    maximum is divided out before the power so that small ``tau`` cannot underflow.
    """
    t = targets.float()
    if tau == 1.0:
        return t / t.sum(dim=-1, keepdim=True)
    t = (t / t.amax(dim=-1, keepdim=True)).pow(1.0 / tau)
    return t / t.sum(dim=-1, keepdim=True)


def discounted_update(
    targets: Tensor, counts: Tensor, probs: Tensor, idx: Tensor, gamma: float
) -> tuple[Tensor, Tensor]:
    """Eq. 5 for the rows of one batch, in float32.

    Args:
        targets: ``(B, K)`` current targets ``y^{t-1}`` of the batch's samples (rows sum to 1).
        counts: ``(B,)`` current counts ``A^{t-1}``.
        probs: ``(B, K)`` detached predictions ``yhat^t``.
        idx: ``(B,)`` dataset indices; rows with equal ``idx`` describe the same sample.
        gamma: discount factor in ``[0, 1]``.

    Returns:
        ``(targets, counts)`` after the update. For a sample that occurs ``m`` times, every
        one of its rows holds the result of ``m`` sequential Eq. 5 updates in batch order:
        ``A' = gamma^m A + sum_r gamma^(m-1-r)`` and
        ``y' = (gamma^m A y + sum_r gamma^(m-1-r) yhat_r) / A'``. With ``m = 1`` this is
        exactly ``w y + (1 - w) yhat``, ``A' = gamma A + 1`` with ``w = gamma A / (gamma A + 1)``.
    """
    y = targets.float()
    a = counts.float()
    p = probs.float()
    batch = idx.shape[0]
    dev = y.device
    positions = torch.arange(batch, device=dev)
    # Group the occurrences of each sample: a stable sort keeps batch order inside a group.
    order = torch.sort(idx, stable=True).indices
    sorted_idx = idx[order]
    starts = torch.ones(batch, dtype=torch.bool, device=dev)
    starts[1:] = sorted_idx[1:] != sorted_idx[:-1]
    group_sorted = torch.cumsum(starts.long(), dim=0) - 1  # group id, < batch
    group = torch.empty_like(group_sorted).scatter_(0, order, group_sorted)  # per batch row
    first_pos = torch.full((batch,), batch, dtype=torch.long, device=dev)
    first_pos.scatter_reduce_(0, group_sorted, positions, reduce="amin")
    mult = torch.zeros(batch, dtype=torch.long, device=dev).index_add_(
        0, group, torch.ones_like(group)
    )[group]  # occurrences of this row's sample
    # Rank of this row among its sample's occurrences, in batch order.
    rank_sorted = positions - first_pos[group_sorted]
    earlier = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
    # Weight of observation b in its sample's final evidence: gamma^(m-1-rank) (0^0 = 1).
    obs_weight = torch.pow(float(gamma), (mult - 1 - earlier).float())
    evidence = torch.zeros_like(p).index_add_(0, group, obs_weight[:, None] * p)[group]
    weight_sum = torch.zeros_like(obs_weight).index_add_(0, group, obs_weight)[group]
    decay = torch.pow(float(gamma), mult.float())
    new_a = decay * a + weight_sum
    keep = decay * a / new_a  # w of Eq. 5
    new_y = keep[:, None] * y + evidence / new_a[:, None]
    # Every occurrence of a sample read the same old (y, A) and gets the same group sums,
    # so duplicates are bit-identical.
    return new_y, new_a


class BSD(Method):
    """Bayesian Self-Distillation (Algorithm 1), one weakly augmented view per sample.

    Args:
        gamma: discount factor of old evidence (Eq. 5), in ``[0, 1]``.
        c: prior evidence for the given label (Eq. 2), > 0.
        eps: prior evidence for every other class (Eq. 2), >= 0.
        tau: sharpening temperature of the loss target (Eq. 12), > 0; 1 = no sharpening.
        store_dtype: ``"float16"`` (the paper's memory budget) or ``"float32"`` for ``y``.
        loss_scale: ``"mean"`` (batch mean of the soft cross-entropy, the scale of
            ``F.cross_entropy``) or ``"paper"`` (additionally divided by the number of
            classes, the ``1 / (|B| k)`` of Algorithm 1).
        mix_half: ``None`` (plain BSD), ``"cutmix"`` or ``"cutout"``: augment the second half
            of each batch and update targets only from the first (Section 4.2.4; see the
            module docstring).
        cutmix_alpha: Beta concentration of CutMix's ``lam`` (> 0; 1 = uniform).
        cutout_size: CutOut square side as a fraction of the image side, in ``(0, 1]``.

    Buffers (in ``state_dict``, created by :meth:`setup`): ``targets`` (N, K) in
    ``store_dtype`` and ``counts`` (N,) float32.
    """

    views = ("weak",)

    def __init__(  # noqa: PLR0913
        self,
        gamma: float = 0.95,
        c: float = 1000.0,
        eps: float = 0.0,
        tau: float = 1.0,
        store_dtype: str = "float16",
        loss_scale: str = "mean",
        mix_half: str | None = None,
        cutmix_alpha: float = 1.0,
        cutout_size: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise UserError(f"BSD gamma must be in [0, 1], got {gamma}; use e.g. 0.95.")
        if not c > 0.0:
            raise UserError(f"BSD prior strength c must be > 0, got {c}; use e.g. 1000.")
        if not eps >= 0.0:
            raise UserError(f"BSD eps must be >= 0, got {eps}; use 0 or a small value.")
        if not tau > 0.0:
            raise UserError(f"BSD sharpening tau must be > 0, got {tau}; use 1 or e.g. 0.8.")
        resolve_dtype(store_dtype, STORE_DTYPES)
        if loss_scale not in LOSS_SCALES:
            raise UserError(f"BSD loss_scale must be one of {LOSS_SCALES}, got {loss_scale!r}.")
        if mix_half not in MIX_HALF:
            raise UserError(
                f"BSD mix_half must be null, 'cutmix' or 'cutout', got {mix_half!r}; "
                "use null for plain BSD."
            )
        if not cutmix_alpha > 0.0:
            raise UserError(f"BSD cutmix_alpha must be > 0, got {cutmix_alpha}; use 1.0.")
        if not 0.0 < cutout_size <= 1.0:
            raise UserError(
                f"BSD cutout_size must be a fraction of the image side in (0, 1], got "
                f"{cutout_size}; use 0.5 (16 pixels on 32x32 images)."
            )
        self.gamma = float(gamma)
        self.c = float(c)
        self.eps = float(eps)
        self.tau = float(tau)
        self.store_dtype = store_dtype
        self.loss_scale = loss_scale
        self.mix_half = mix_half
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutout_size = float(cutout_size)

    # ----------------------------------------------------------------- state
    def setup(self, ctx: MethodContext) -> None:
        """Eq. 2 prior from the given (noisy) labels; buffers ``targets`` and ``counts``."""
        super().setup(ctx)
        labels = ctx.noisy_labels.to(ctx.device)
        if labels.numel() != ctx.num_samples:
            raise UserError(
                f"BSD got {labels.numel()} noisy labels for {ctx.num_samples} samples; "
                "pass one label per training sample."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= ctx.num_classes):
            raise UserError(
                f"BSD needs labels in [0, {ctx.num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]; check the dataset's num_classes."
            )
        targets, counts = dirichlet_prior(
            labels, ctx.num_classes, self.c, self.eps, resolve_dtype(self.store_dtype, STORE_DTYPES)
        )
        self.target_store = SampleStore(self, "targets", targets, renormalise=True)
        self.count_store = SampleStore(self, "counts", counts)

    def soft_targets(self) -> Tensor:
        """The current targets ``y`` (N, K), float32, rows renormalised (not sharpened).

        ``(N, K)`` float32: at ImageNet size use :meth:`soft_target_rows` in chunks
        (:func:`noisybench.metrics.label_recovery_chunked` does).
        """
        return self.target_store.read()

    def soft_target_rows(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of :meth:`soft_targets`, float32."""
        y = self.targets[start:stop].float()
        return y / y.sum(dim=-1, keepdim=True)

    # ------------------------------------------------------------------ loss
    def batch_targets(self, idx: Tensor) -> Tensor:
        """Sharpened previous targets ``y^{t-1}`` of the batch (Eq. 12), float32 ``(B, K)``."""
        return sharpen(self.target_store.read(idx), self.tau)

    def scale(self, num_classes: int) -> float:
        """Constant factor on the loss: 1 for ``"mean"``, ``1 / k`` for ``"paper"``."""
        return 1.0 / num_classes if self.loss_scale == "paper" else 1.0

    def bsd_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft cross-entropy between ``target`` and ``softmax(logits)`` (Eq. 12), scaled."""
        per_sample = soft_cross_entropy_per_sample(logits, target)
        return per_sample.mean() * self.scale(logits.shape[-1])

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """One forward of the weak view; loss against the sharpened ``y^{t-1}``."""
        if self.mix_half is not None:
            return self.mix_half_step(model, batch)
        logits = model(batch.views["weak"])
        target = self.batch_targets(batch.idx)
        loss = self.bsd_loss(logits, target)
        probs = torch.softmax(logits.detach().float(), dim=-1)
        return StepOutput(
            loss=loss,
            logits=logits,
            extras={"bsd_target_max": target.amax(dim=-1).mean()},
            state={"probs": probs},
        )

    def mix_half_step(self, model: nn.Module, batch: Batch) -> StepOutput:
        """Section 4.2.4: CutMix / CutOut on the last ``B // 2`` samples, distillation on the
        rest; the Eq. 5 evidence is the distillation half's prediction only."""
        images = batch.views["weak"]
        size = images.shape[0]
        keep = size - size // 2  # distillation half: positions [0, keep)
        target = self.batch_targets(batch.idx)
        state: dict[str, Tensor] = {}
        extras: dict[str, Tensor] = {}
        if keep < size:
            aug_images, aug_target = images[keep:], target[keep:]
            if self.mix_half == "cutmix":
                mixed = cutmix(aug_images, alpha=self.cutmix_alpha, prob=1.0)
                aug_images = mixed.images
                aug_target = mix_targets(aug_target, mixed.perm, mixed.lam)
                state["mix_mask"] = mixed.mask
                state["mix_perm"] = mixed.perm + keep
                state["mix_lam"] = mixed.lam
                extras["cutmix_lam"] = mixed.lam
            else:
                cut = cutout(aug_images, self.cutout_size)
                aug_images = cut.images
                state["mix_mask"] = cut.mask
                state["cutout_cy"] = cut.cy
                state["cutout_cx"] = cut.cx
            images = torch.cat([images[:keep], aug_images])
            target = torch.cat([target[:keep], aug_target])
        elif self.mix_half == "cutmix":  # a one-sample batch: nothing to mix, lam = 1
            extras["cutmix_lam"] = torch.ones((), device=images.device)
        logits = model(images)
        loss = self.bsd_loss(logits, target)
        probs = torch.softmax(logits[:keep].detach().float(), dim=-1)
        extras["bsd_target_max"] = target.amax(dim=-1).mean()
        state.update(probs=probs, update_idx=batch.idx[:keep], loss_target=target.detach())
        return StepOutput(loss=loss, logits=logits, extras=extras, state=state)

    # ---------------------------------------------------------------- update
    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        """Eq. 5 for the batch's samples with the prediction of this step's forward pass
        (with ``mix_half``: only the distillation half, ``out.state["update_idx"]``)."""
        idx = out.state.get("update_idx", batch.idx)
        y = self.target_store.read(idx)
        new_y, new_a = discounted_update(y, self.counts[idx], out.state["probs"], idx, self.gamma)
        self.target_store.write(idx, new_y)
        self.count_store.write(idx, new_a)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        """``mean_A``, ``target_entropy`` (mean entropy of ``y``, nats), ``target_max`` (mean
        largest entry of ``y``) and ``store_mib`` (memory of ``y`` and ``A``)."""
        n = self.targets.shape[0]
        entropy = torch.zeros((), device=self.targets.device)
        top = torch.zeros((), device=self.targets.device)
        for _, y in self.target_store.chunks(_ENTROPY_CHUNK_ROWS):
            entropy += -torch.xlogy(y, y).sum()
            top += y.amax(dim=-1).sum()
        nbytes = (
            self.targets.numel() * self.targets.element_size()
            + self.counts.numel() * self.counts.element_size()
        )
        return {
            "mean_A": self.counts.mean(),
            "target_entropy": entropy / max(n, 1),
            "target_max": top / max(n, 1),
            "store_mib": torch.tensor(nbytes / 2**20),
        }
