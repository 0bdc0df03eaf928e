"""Batch-level augmentations that mix samples, applied by a method on the device.

The data layer (``noisybench.data.views``) augments each image on its own; augmentations
that combine two images of a batch and must therefore also combine their targets live
here, because only the method knows the targets.

CutMix (Yun et al., 2019, "CutMix: Regularization Strategy to Train Strong Classifiers
with Localizable Features", Sec. 3.1): one mixing ratio ``lam ~ Beta(alpha, alpha)`` and
one random permutation per batch; a box of relative area ``1 - lam`` (side ratio
``sqrt(1 - lam)``), centred at a uniformly drawn pixel and clipped to the image, is
pasted from image ``perm[i]`` into image ``i``; ``lam`` is then corrected to the area that
was actually kept, ``1 - box_area / (H * W)``, and the targets are mixed as
``lam * t_i + (1 - lam) * t_perm[i]``.

CutOut (DeVries & Taylor, 2017, "Improved Regularization of Convolutional Neural Networks
with Cutout", Sec. 3): every image gets its own square mask, centred at a uniformly drawn
pixel and clipped to the image (so squares near the border are partly outside it), whose
pixels are set to ``fill``. The reference setup applies it after normalisation and multiplies
by a zero mask, so the default ``fill = 0`` is the dataset's mean colour when the images are
normalised (which is how methods receive their views). The targets are unchanged.

Everything is computed with tensor ops on the images' device; no value is copied to the
host, so a training step that uses it needs no device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from noisybench.errors import UserError

__all__ = [
    "CutMixOutput",
    "CutOutOutput",
    "apply_box",
    "cutmix",
    "cutmix_box",
    "cutout",
    "cutout_masks",
    "cutout_side",
    "mix_log_targets",
    "mix_targets",
]


@dataclass(frozen=True)
class CutMixOutput:
    """Result of :func:`cutmix`.

    Attributes:
        images: ``(B, C, H, W)`` mixed images.
        perm: ``(B,)`` long permutation: image ``i`` received a box from ``perm[i]``.
        lam: 0-dim float32 tensor, the fraction of each image's area that is still its own
            (1 when the batch was not mixed).
        mask: ``(H, W)`` bool, True inside the pasted box (all False when not mixed);
            ``None`` when the producer did not record it.
    """

    images: Tensor
    perm: Tensor
    lam: Tensor
    mask: Tensor | None = None


def cutmix_box(
    height: int, width: int, lam: Tensor, cy: Tensor, cx: Tensor
) -> tuple[Tensor, Tensor]:
    """The CutMix box for a target ratio ``lam`` centred at pixel ``(cy, cx)``.

    The box has side lengths ``floor(height * sqrt(1 - lam))`` and
    ``floor(width * sqrt(1 - lam))``, spans ``[c - floor(side / 2), c + ceil(side / 2))`` in
    each axis, and is clipped to the image.

    Args:
        height, width: image size.
        lam: 0-dim tensor in ``[0, 1]``, the requested fraction of the image to keep.
        cy, cx: 0-dim long tensors, the box centre (row, column).

    Returns:
        ``(mask, lam_true)``: a bool ``(height, width)`` mask, True inside the box, and the
        0-dim float32 fraction of pixels outside the box (the corrected ``lam``).
    """
    ratio = torch.sqrt((1.0 - lam.float()).clamp(min=0.0))
    side_h = torch.floor(height * ratio).long()
    side_w = torch.floor(width * ratio).long()
    y0 = (cy - side_h // 2).clamp(0, height)
    y1 = (cy - side_h // 2 + side_h).clamp(0, height)
    x0 = (cx - side_w // 2).clamp(0, width)
    x1 = (cx - side_w // 2 + side_w).clamp(0, width)
    rows = torch.arange(height, device=lam.device)
    cols = torch.arange(width, device=lam.device)
    in_rows = (rows >= y0) & (rows < y1)
    in_cols = (cols >= x0) & (cols < x1)
    mask = in_rows[:, None] & in_cols[None, :]
    lam_true = 1.0 - mask.float().mean()
    return mask, lam_true


def apply_box(images: Tensor, perm: Tensor, mask: Tensor) -> Tensor:
    """Paste the ``mask`` region of ``images[perm]`` into ``images`` (out of place)."""
    return torch.where(mask, images[perm], images)


def cutmix(images: Tensor, alpha: float = 1.0, prob: float = 1.0) -> CutMixOutput:
    """CutMix a batch (Yun et al., 2019): one ``lam ~ Beta(alpha, alpha)``, one permutation
    and one box for the whole batch, applied with probability ``prob``.

    Randomness comes from torch's default generator of the images' device, so seeding
    torch makes it reproducible. When the batch is not mixed (probability ``1 - prob``) the
    images are returned unchanged with ``lam = 1``; this choice is made on the device.

    Args:
        images: ``(B, C, H, W)`` float images.
        alpha: Beta concentration (> 0); 1 gives ``lam ~ Uniform(0, 1)``.
        prob: probability of mixing this batch, in ``[0, 1]``.
    """
    if images.dim() != 4:
        raise UserError(
            f"cutmix expects images of shape (B, C, H, W), got {tuple(images.shape)}; "
            "pass a batch of images."
        )
    if not alpha > 0:
        raise UserError(f"cutmix_alpha must be > 0, got {alpha}; use e.g. 1.0.")
    if not 0.0 <= prob <= 1.0:
        raise UserError(f"cutmix_prob must be in [0, 1], got {prob}; use e.g. 0.5.")
    batch, _, height, width = images.shape
    device = images.device
    conc = torch.full((2,), float(alpha), device=device)
    lam = torch.distributions.Beta(conc[0], conc[1], validate_args=False).sample()
    cy = torch.randint(0, height, (), device=device)
    cx = torch.randint(0, width, (), device=device)
    perm = torch.randperm(batch, device=device)
    mask, lam_true = cutmix_box(height, width, lam, cy, cx)
    apply = torch.rand((), device=device) < prob
    mask = mask & apply
    lam_true = torch.where(apply, lam_true, torch.ones_like(lam_true))
    return CutMixOutput(images=apply_box(images, perm, mask), perm=perm, lam=lam_true, mask=mask)


def mix_targets(targets: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """CutMix target of each mixed image: ``lam * t_i + (1 - lam) * t_perm[i]``.

    Args:
        targets: ``(B, K)`` per-image target distributions (e.g. weak-view predictions).
        perm, lam: from :func:`cutmix`.
    """
    lam = lam.to(targets.dtype)
    return lam * targets + (1.0 - lam) * targets[perm]


def mix_log_targets(log_targets: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Logarithm of :func:`mix_targets`, computed stably in log space from log-probabilities:
    ``log(lam * t_i + (1 - lam) * t_perm[i])``. Exact zeros of ``lam`` or ``1 - lam`` give
    ``-inf`` weights that drop out (and pass zero gradient)."""
    lam = lam.to(log_targets.dtype)
    return torch.logaddexp(torch.log(lam) + log_targets, torch.log1p(-lam) + log_targets[perm])


@dataclass(frozen=True)
class CutOutOutput:
    """Result of :func:`cutout`.

    Attributes:
        images: ``(B, C, H, W)`` images with their square filled.
        mask: ``(B, H, W)`` bool, True where a pixel was filled.
        cy, cx: ``(B,)`` long, the drawn centre (row, column) of each image's square.
    """

    images: Tensor
    mask: Tensor
    cy: Tensor
    cx: Tensor


def cutout_side(length: int, size: float) -> int:
    """Side in pixels of the CutOut square along an axis of ``length`` pixels:
    ``round(size * length)``, at least 1 (``size = 0.5`` gives 16 on 32x32 CIFAR, the
    CIFAR-10 setting of DeVries & Taylor, and 112 on 224x224)."""
    return max(1, round(float(size) * length))


def cutout_masks(
    height: int, width: int, cy: Tensor, cx: Tensor, side_h: int, side_w: int
) -> Tensor:
    """Bool ``(B, height, width)`` masks of the CutOut squares centred at ``(cy[b], cx[b])``.

    Each spans ``[c - floor(side / 2), c - floor(side / 2) + side)`` per axis, clipped to the
    image (for an even side: ``[c - side / 2, c + side / 2)``, as in DeVries & Taylor).
    """
    top = cy[:, None] - side_h // 2
    left = cx[:, None] - side_w // 2
    rows = torch.arange(height, device=cy.device)[None, :]
    cols = torch.arange(width, device=cx.device)[None, :]
    in_rows = (rows >= top) & (rows < top + side_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + side_w)  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutout(images: Tensor, size: float = 0.5, fill: float = 0.0) -> CutOutOutput:
    """CutOut a batch (DeVries & Taylor, 2017): one square per image at an independently
    drawn centre, filled with ``fill``; batched, no per-image loop, no host sync.

    Randomness comes from torch's default generator of the images' device.

    Args:
        images: ``(B, C, H, W)`` float images (normalised: ``fill = 0`` is the mean colour).
        size: side of the square as a fraction of the image side, in ``(0, 1]``; the side in
            pixels is :func:`cutout_side` per axis.
        fill: value written into the square (every channel).
    """
    if images.dim() != 4:
        raise UserError(
            f"cutout expects images of shape (B, C, H, W), got {tuple(images.shape)}; "
            "pass a batch of images."
        )
    if not 0.0 < float(size) <= 1.0:
        raise UserError(
            f"cutout_size must be a fraction of the image side in (0, 1], got {size}; "
            "use e.g. 0.5 (16 pixels on 32x32 CIFAR)."
        )
    batch, _, height, width = images.shape
    device = images.device
    cy = torch.randint(0, height, (batch,), device=device)
    cx = torch.randint(0, width, (batch,), device=device)
    mask = cutout_masks(height, width, cy, cx, cutout_side(height, size), cutout_side(width, size))
    out = images.masked_fill(mask[:, None], float(fill))
    return CutOutOutput(images=out, mask=mask, cy=cy, cx=cx)
