"""Named augmentation views, applied batch-wise on the training device.

A method declares the views it needs as keys (``Method.views``); the data layer builds one
module per key with :func:`build_views` and the loader applies every module to the same uint8
batch, so each key is an independent random draw. A key is ``<kind>`` or ``<kind>_<tag>``;
the kind (the part before the first underscore) selects a factory in :data:`VIEW_KINDS`:

``plain``
    Normalisation only: ``(x / 255 - mean) / std``.
``weak``
    The "basic augmentations" of the BSD paper (Appendix A.1) and the weak set of BSD+:
    a random crop of the image zero-padded by ``crop_padding`` pixels on each side, then a
    horizontal flip with probability 1/2 if ``hflip``.
``strong``
    The strong set of BSD+ (Appendix A.1, Eq. 11): the weak augmentation, then AutoAugment
    (Cubuk et al. 2019, CIFAR-10 policy), then Random Erasing (Zhong et al. 2020). CutMix,
    also part of that set, mixes targets and is therefore applied by the BSD+ method itself.

Design decisions (each is a deliberate departure from a per-image, PIL-based pipeline):

* Crop and flip are written here as single batched gathers instead of ``kornia``'s
  ``RandomCrop``: kornia's eager crop reads the crop boxes back to the host and crops per
  sample, while a gather is exact (integer shifts, no interpolation) and never syncs.
* AutoAugment is :class:`noisybench.data.autoaugment.BatchedAutoAugment`: one sub-policy per
  image, each operation's probability and signed magnitude per image, in one batched pass
  (kornia 0.9.0's ``AutoAugment`` is not the CIFAR-10 policy: see that module). Its magnitude
  ranges are torchvision's by default (``autoaugment_ranges: original`` selects the TF code's,
  ``lnl`` the noisy-label codebases' PIL ``CIFAR10Policy``).
  The former ``strong_chunk`` setting is gone (every image draws its own sub-policy).
* AutoAugment's colour operations need 3 channels. A 1-channel image (digits) is repeated to
  3 equal channels, augmented, and averaged back. Every operation of the policy maps an image
  with equal channels to one with equal channels (geometric ops, posterize, solarize,
  equalize, autocontrast, brightness, contrast, sharpness, invert act per channel alike;
  colour/saturation leaves a grey image grey), so this is the grey-scale policy exactly.
* Random Erasing runs on the normalised tensor with fill value 0, i.e. the erased box takes
  the dataset mean colour, as when erasing follows normalisation in the usual
  ``ToTensor -> Normalize -> RandomErasing`` order. Its probability is ``erasing_p`` (0.5).
  It is :class:`RandomErasing`, kornia's distribution (and random numbers) without kornia's
  copies of the box parameters to the host.

Resizing (``dataset.augment.resize``, default ``null`` = off): networks with a fixed input
size (ViT-B/16 fine-tuned at 224x224, BSD paper Section 4 / Appendix A.1) need the 32x32 or
64x64 images upsampled. With ``resize: R`` every view kind (``plain`` for evaluation too, and
kinds registered later) is wrapped in :class:`Resized`: the view's output is resized on the
device to ``R x R`` with bilinear interpolation (``align_corners=False``; anti-aliased only when
shrinking) as the view's LAST step, i.e. after the augmentation and after normalisation. The
augmentations therefore act at the native resolution (4-pixel crop padding, AutoAugment's
magnitudes and Random Erasing's areas keep their CIFAR meaning). Resizing after rather than
before normalisation gives the same result up to float rounding, because the per-channel
affine normalisation commutes with bilinear interpolation (its weights sum to 1), and avoids
interpolating uint8 images. Memory: a 224x224 float batch is 49x a 32x32 one; lower
``eval.batch_size`` accordingly.

Randomness comes only from torch's global generator of the device the batch is on, which the
engine saves and restores; no view reads a value back to the host
(``tests/test_engine_host_sync.py``).
Random views split into ``draw(x)`` (every random number of one call, in call order) and
``apply(x, drawn)`` (no draw), so that views with equal ``joint_key`` run in one pass over
copies of the batch (:func:`apply_jointly`) with exactly the output of one call each.
Views run under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.data.advice import auto_padding
from noisybench.data.autoaugment import RANGES, BatchedAutoAugment
from noisybench.errors import UserError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "VIEW_KINDS",
    "AugmentParams",
    "PlainView",
    "RandomErasing",
    "Resized",
    "StrongView",
    "ViewWrapper",
    "WeakView",
    "apply_jointly",
    "build_views",
    "crop_at",
    "crop_offsets",
    "flip_where",
    "input_stats",
    "joint_groups",
    "register_view_kind",
    "view_kind",
]


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of the views, read from ``dataset.augment`` in the config.

    Attributes:
        crop_padding: zero padding (pixels per side) before the random crop; 0 disables it;
            ``"auto"``: an eighth of the images' shorter side (CIFAR's 4 on 32x32; 1 on 8x8),
            resolved by :func:`build_views` (:func:`noisybench.data.advice.auto_padding`).
        hflip: random horizontal flip with probability 1/2 (off for digits, where a flip
            changes the meaning of the image).
        autoaugment_ranges: ``"torchvision"``, ``"original"`` or ``"lnl"`` ranges of the strong
            view's AutoAugment (see :mod:`noisybench.data.autoaugment`).
        erasing_p: probability of Random Erasing per image in the strong view.
        resize: ``None`` (keep the dataset's size) or the side in pixels that every view's
            output is resized to (bilinear, after augmentation and normalisation), e.g. 224
            for ViT-B/16.
    """

    crop_padding: int | str = 4
    hflip: bool = True
    autoaugment_ranges: str = "torchvision"
    erasing_p: float = 0.5
    resize: int | None = None

    @classmethod
    def from_mapping(cls, augment: Mapping | None) -> AugmentParams:
        """Validate a config mapping (unknown keys are an error, missing keys take defaults)."""
        augment = dict(augment or {})
        known = {f.name for f in fields(cls)}
        if "strong_chunk" in augment:
            raise UserError(
                "dataset.augment.strong_chunk was removed (AutoAugment now draws a sub-policy per "
                "image); delete the key"
            )
        unknown = sorted(set(augment) - known)
        if unknown:
            raise UserError(
                f"unknown dataset.augment key(s) {unknown}; the known keys are {sorted(known)}"
            )
        params = cls(**augment)
        if params.crop_padding == "auto":
            pass
        elif isinstance(params.crop_padding, str) or int(params.crop_padding) < 0:
            raise UserError(
                f"dataset.augment.crop_padding={params.crop_padding} is invalid; use 0 or more "
                "pixels, or auto (an eighth of the image side)"
            )
        if params.autoaugment_ranges not in RANGES:
            raise UserError(
                f"dataset.augment.autoaugment_ranges={params.autoaugment_ranges!r} is unknown; "
                f"use one of {list(RANGES)}"
            )
        if not 0.0 <= float(params.erasing_p) <= 1.0:
            raise UserError(
                f"dataset.augment.erasing_p={params.erasing_p} must be a probability in [0, 1]"
            )
        resize = params.resize
        if resize is not None and (
            isinstance(resize, bool) or not isinstance(resize, int) or resize < 1
        ):
            raise UserError(
                f"dataset.augment.resize={resize!r} must be null or a positive whole number of "
                "pixels, e.g. 224 for ViT-B/16"
            )
        return params


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def crop_offsets(
    batch: int, padded: tuple[int, int], size: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Random top and left offsets of a ``size`` window in each ``padded`` image, uniform over
    every window position as in the usual ``RandomCrop(size, padding)``, drawn from the
    generator of ``device``.

    Raises:
        UserError: the crop is larger than the padded image.
    """
    (ph, pw), (oh, ow) = padded, size
    if oh > ph or ow > pw:
        raise UserError(
            f"crop size {(oh, ow)} is larger than the padded image {(ph, pw)}; "
            "check the dataset's image size"
        )
    top = torch.randint(0, ph - oh + 1, (batch,), device=device)
    left = torch.randint(0, pw - ow + 1, (batch,), device=device)
    return top, left


def crop_at(x: Tensor, padding: int, top: Tensor, left: Tensor, size: tuple[int, int]) -> Tensor:
    """The ``size`` window at ``top``/``left`` of each image of ``x`` zero-padded by
    ``padding`` pixels per side: one gather for the whole batch (exact pixel copies, no
    interpolation, no host sync)."""
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    b, c, _, pw = padded.shape
    oh, ow = size
    dev = padded.device
    # Flat index of output pixel (y, x) of image i in its padded (ph * pw) plane.
    rows = top[:, None, None] + torch.arange(oh, device=dev)[None, :, None]
    cols = left[:, None, None] + torch.arange(ow, device=dev)[None, None, :]
    flat = (rows * pw + cols).view(b, 1, oh * ow).expand(b, c, oh * ow)
    return padded.flatten(2).gather(2, flat).view(b, c, oh, ow)


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """``x`` with the images where ``flip`` (a ``(B,)`` bool tensor) is true flipped
    left-right."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class RandomErasing(nn.Module):
    """Random Erasing (Zhong et al. 2020) of one box per image, batched, on the batch's device.

    Each image is erased with probability ``p``: a box of area ``U(scale) * H * W`` and aspect
    ratio (height / width) drawn with probability 1/2 from ``U(ratio[0], 1)`` and otherwise
    from ``U(1, ratio[1])``; side lengths ``round(sqrt(area * aspect))`` and
    ``round(sqrt(area / aspect))`` clamped to ``[1, H]`` / ``[1, W]``; its top-left corner
    ``floor(U(0, 1) * (W - w + 1))``, ``floor(U(0, 1) * (H - h + 1))``; filled with ``value``.
    This is the distribution of kornia 0.9.0's ``RandomErasing`` (torchvision's defaults for
    scale and ratio), drawn in the same order from torch's generator of the batch's device,
    so the output equals kornia's bit for bit (``tests/test_data_views_loader.py``). Written here
    because kornia's, moved to a GPU, draws its parameters there and copies them to the host
    (four blocking device-to-host copies per call, i.e. per strong view and step); this one
    reads nothing back."""

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float = 0.0,
    ) -> None:
        super().__init__()
        self.p = float(p)
        self.value = float(value)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("ratio", torch.tensor(ratio, dtype=torch.float32), persistent=False)

    @staticmethod
    def _uniform(n: int, low: Tensor, high: Tensor) -> Tensor:
        return low + torch.rand(n, device=low.device) * (high - low)

    def draw(self, batch: int, h: int, w: int, device: torch.device) -> dict[str, Tensor]:
        """The random boxes of ``batch`` images of ``h x w`` (kornia's draws, in its order):
        ``erase`` (bool), ``top``, ``left``, ``height``, ``width`` (float), each ``(B,)``."""
        if self.p in (0.0, 1.0):  # no draw, as kornia (the parameters are drawn regardless)
            erase = torch.full((batch,), self.p == 1.0, device=device)
        else:
            erase = torch.rand(batch, device=device) < self.p
        area = self._uniform(batch, self.scale[0], self.scale[1]) * (h * w)
        one = torch.ones((), device=device)
        below_one = self._uniform(batch, self.ratio[0], one)
        above_one = self._uniform(batch, one, self.ratio[1])
        pick = torch.rand(batch, device=device).round().bool()
        aspect = torch.where(pick, below_one, above_one)
        height = torch.round((area * aspect) ** 0.5).clamp(1.0, h)
        width = torch.round((area / aspect) ** 0.5).clamp(1.0, w)
        left = (torch.rand(batch, device=device) * (w - width + 1)).floor()
        top = (torch.rand(batch, device=device) * (h - height + 1)).floor()
        return {"erase": erase, "top": top, "left": left, "height": height, "width": width}

    def apply(self, x: Tensor, box: dict[str, Tensor]) -> Tensor:
        """``x`` with the drawn boxes filled with ``value`` (draws nothing)."""
        _, _, h, w = x.shape
        dev = x.device
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        top, left = box["top"].view(-1, 1, 1), box["left"].view(-1, 1, 1)
        inside = (rows >= top) & (rows < top + box["height"].view(-1, 1, 1))
        inside = inside & (cols >= left) & (cols < left + box["width"].view(-1, 1, 1))
        inside = inside & box["erase"].view(-1, 1, 1)
        fill = torch.full((), self.value, dtype=x.dtype, device=dev)
        return torch.where(inside.unsqueeze(1), fill, x)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.apply(x, self.draw(b, h, w, x.device))


class _Normalize(nn.Module):
    """``(x / 255 - mean) / std`` for a uint8 batch, or ``(x - mean) / std`` for a [0, 1] float."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise UserError(
                f"dataset mean {tuple(mean)} and std {tuple(std)} must have one entry per channel"
            )
        if min(float(s) for s in std) <= 0:
            raise UserError(f"dataset std {tuple(std)} must be positive")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std


class PlainView(nn.Module):
    """Normalisation only (evaluation-style view)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = _Normalize(mean, std)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x)


class WeakView(nn.Module):
    """Random crop with zero padding + optional horizontal flip, then normalisation.

    The BSD paper's "basic augmentations (random cropping and horizontal flipping)"
    (Appendix A.1) and BSD+'s weak set (4-pixel padding on CIFAR).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int],
        crop_padding: int,
        hflip: bool,
    ) -> None:
        super().__init__()
        self.normalize = _Normalize(mean, std)
        self.image_size = image_size
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        # views with equal keys give the same output for the same draws (apply_jointly)
        self.joint_key: tuple = (type(self).__name__, tuple(mean), tuple(std), image_size,
                                 self.crop_padding, self.hflip)  # fmt: skip

    def draw(self, x: Tensor) -> dict[str, Tensor]:
        """Every random number of one call on the batch ``x``, in the order :meth:`forward`
        draws them (crop offsets, flips)."""
        b, _, h, w = x.shape
        p = self.crop_padding
        drawn: dict[str, Tensor] = {}
        if p > 0 or tuple(self.image_size) != (h, w):
            padded = (h + 2 * p, w + 2 * p)
            drawn["top"], drawn["left"] = crop_offsets(b, padded, self.image_size, x.device)
        if self.hflip:
            drawn["flip"] = torch.rand(b, device=x.device) < 0.5
        return drawn

    def augment_uint8(self, x: Tensor, drawn: dict[str, Tensor] | None = None) -> Tensor:
        """The geometric part on the raw batch (dtype preserved), with ``drawn`` numbers (or
        new draws)."""
        drawn = self.draw(x) if drawn is None else drawn
        if "top" in drawn:
            top, left, size = drawn["top"], drawn["left"], tuple(self.image_size)
            x = crop_at(x, self.crop_padding, top, left, size)
        if "flip" in drawn:
            x = flip_where(x, drawn["flip"])
        return x

    def apply(self, x: Tensor, drawn: dict[str, Tensor]) -> Tensor:
        """The view of ``x`` with drawn random numbers (draws nothing)."""
        return self.normalize(self.augment_uint8(x, drawn))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.apply(x, self.draw(x))


class StrongView(WeakView):
    """Weak augmentation + AutoAugment (CIFAR-10 policy, per image) + Random Erasing.

    BSD+'s strong set (Appendix A.1, Eq. 11) without CutMix, which the method applies.
    After each call, ``self.autoaugment.last_policy`` holds the sub-policy index drawn for
    each image (a device tensor; a diagnostic for the tests and the benchmark).
    """

    def __init__(  # noqa: PLR0913
        self,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int],
        crop_padding: int,
        hflip: bool,
        erasing_p: float,
        autoaugment_ranges: str = "torchvision",
        policy: tuple | None = None,
    ) -> None:
        super().__init__(mean, std, image_size, crop_padding, hflip)
        channels = len(mean)
        if channels not in (1, 3):
            raise UserError(
                f"the strong view supports 1- or 3-channel images, got {channels} channels; "
                "use the weak or plain view for this dataset"
            )
        self.autoaugment = (
            BatchedAutoAugment(autoaugment_ranges)
            if policy is None
            else BatchedAutoAugment(autoaugment_ranges, policy)
        )
        self.erasing = RandomErasing(p=float(erasing_p))
        self.joint_key = (*self.joint_key, float(erasing_p), self.autoaugment.signature())

    def draw(self, x: Tensor) -> dict[str, Tensor]:
        """Crop and flip (as the weak view), then AutoAugment's sub-policies, operations'
        application and signs, then the erased boxes: the order :meth:`forward` draws in."""
        drawn = super().draw(x)
        b, (h, w) = x.shape[0], self.image_size
        policy, drawn["op"], drawn["mag"], drawn["aa_apply"] = self.autoaugment.sample(
            b, h, w, x.device
        )
        self.autoaugment.last_policy = policy
        box = self.erasing.draw(b, h, w, x.device)
        drawn.update({f"erase_{k}": v for k, v in box.items()})
        return drawn

    def apply(self, x: Tensor, drawn: dict[str, Tensor]) -> Tensor:
        x = self.augment_uint8(x, drawn)
        # AutoAugment works on 0..255 values (uint8 arithmetic); a float input is in [0, 1]
        x = x.float() if x.dtype == torch.uint8 else (x.float() * 255.0).round_()
        grey = x.shape[1] == 1
        if grey:  # to 3 equal channels and back (see the module's docstring)
            x = x.expand(-1, 3, -1, -1)
        x = self.autoaugment.apply_drawn(x, drawn["op"], drawn["mag"], drawn["aa_apply"])
        x = x.div_(255.0)
        if grey:
            x = x.mean(dim=1, keepdim=True)
        x = self.normalize(x.clamp_(0.0, 1.0))
        box = {k.removeprefix("erase_"): v for k, v in drawn.items() if k.startswith("erase_")}
        return self.erasing.apply(x, box)


def joint_groups(views: Mapping[str, Callable[[Tensor], Tensor]]) -> list[list[str]]:
    """The keys of ``views`` in order, consecutive keys whose modules have the same
    ``joint_key`` (same kind and settings, e.g. BSD+'s ``strong_1``, ``strong_2``) grouped."""
    groups: list[list[str]] = []
    previous = None
    for key, view in views.items():
        joint = getattr(view, "joint_key", None)
        if groups and joint is not None and joint == previous:
            groups[-1].append(key)
        else:
            groups.append([key])
        previous = joint
    return groups


@torch.no_grad()
def apply_jointly(views: Sequence[nn.Module], x: Tensor) -> list[Tensor]:
    """The outputs of ``views`` (modules with equal ``joint_key``) on the batch ``x``.

    Each view draws its own random numbers, one view after the other, in the order a call
    of each would; the augmentation then runs once over ``len(views)`` copies of ``x`` with
    the drawn numbers side by side. The outputs equal those of calling the views one after
    the other (every operation is per image; ``tests/test_data_views_loader.py``), with one set
    of operators instead of one per view: BSD+'s two strong views issue about 380 operators
    fewer per batch (``benchmarks/bench_ops.py``), host work that bounds a GPU step.
    """
    drawn = [view.draw(x) for view in views]
    if len(views) == 1:
        return [views[0].apply(x, drawn[0])]
    joint = {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]}
    copies = x.repeat(len(views), *([1] * (x.dim() - 1)))
    return list(views[0].apply(copies, joint).split(x.shape[0]))


class ViewWrapper(nn.Module):
    """A view followed by a fixed, draw-free step :meth:`post` (resizing, memory layout).
    ``draw``/``apply`` go through to the wrapped view, so wrapped views are applied
    jointly as well (:func:`apply_jointly`)."""

    def __init__(self, view: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.view = view
        inner = getattr(view, "joint_key", None)
        self.joint_key = None if inner is None else (type(self).__name__, *self.settings(), inner)

    def settings(self) -> tuple:
        return ()

    def post(self, out: Tensor) -> Tensor:
        raise NotImplementedError

    def draw(self, x: Tensor) -> dict[str, Tensor]:
        return self.view.draw(x)  # type: ignore[union-attr]

    def apply(self, x: Tensor, drawn: dict[str, Tensor]) -> Tensor:
        return self.post(self.view.apply(x, drawn))  # type: ignore[union-attr]

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.view(x))


class Resized(ViewWrapper):
    """Wraps a view and resizes its output to ``size x size`` (bilinear, ``align_corners=False``,
    anti-aliased only when shrinking an axis), on the device, as the view's last step."""

    def __init__(self, view: nn.Module, size: int) -> None:
        self.size = int(size)
        super().__init__(view)

    def settings(self) -> tuple:
        return (self.size,)

    @torch.no_grad()
    def post(self, out: Tensor) -> Tensor:
        if tuple(out.shape[-2:]) == (self.size, self.size):
            return out
        shrink = out.shape[-2] > self.size or out.shape[-1] > self.size
        return F.interpolate(
            out.float(),
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
            antialias=shrink,
        )


ViewFactory = Callable[
    [AugmentParams, Sequence[float], Sequence[float], tuple[int, int]], nn.Module
]

VIEW_KINDS: dict[str, ViewFactory] = {}
"""Registry of view kinds: kind name -> ``factory(params, mean, std, image_size) -> module``."""


def register_view_kind(name: str) -> Callable[[ViewFactory], ViewFactory]:
    """Decorator adding a view kind to :data:`VIEW_KINDS` (names may not contain ``_``)."""
    if "_" in name or not name:
        raise ValueError(f"view kind {name!r} must be a non-empty name without underscores")

    def deco(factory: ViewFactory) -> ViewFactory:
        VIEW_KINDS[name] = factory
        return factory

    return deco


@register_view_kind("plain")
def _plain(params: AugmentParams, mean, std, image_size) -> nn.Module:
    return PlainView(mean, std)


@register_view_kind("weak")
def _weak(params: AugmentParams, mean, std, image_size) -> nn.Module:
    return WeakView(mean, std, image_size, params.crop_padding, params.hflip)


@register_view_kind("strong")
def _strong(params: AugmentParams, mean, std, image_size) -> nn.Module:
    return StrongView(
        mean,
        std,
        image_size,
        params.crop_padding,
        params.hflip,
        params.erasing_p,
        params.autoaugment_ranges,
    )


def view_kind(key: str) -> str:
    """The kind of a view key: the part before the first underscore."""
    return key.split("_", 1)[0]


def build_views(
    keys: Sequence[str],
    augment: Mapping | None,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | Sequence[int],
) -> dict[str, nn.Module]:
    """Build one independent view module per key, in the order given.

    Args:
        keys: the method's ``views`` (e.g. ``("weak", "strong_1", "strong_2")``).
        augment: ``dataset.augment`` from the config (see :class:`AugmentParams`).
        mean, std: per-channel normalisation constants in [0, 1] units (``ImageData``).
        image_size: ``(H, W)`` (or one int) of the dataset's images; crops produce this size.

    Returns:
        ``{key: module}``; each module maps a uint8 ``(B, C, H, W)`` batch on any device to a
        normalised float32 batch on that device (``(B, C, R, R)`` with ``augment.resize: R``,
        the module then being a :class:`Resized` around the kind's view). Move the modules
        with the images (``DeviceLoader`` does).
    """
    if isinstance(keys, str):
        keys = (keys,)
    keys = tuple(keys)
    if not keys:
        raise UserError("the method declares no views; give it at least one, e.g. ('weak',)")
    if len(set(keys)) != len(keys):
        raise UserError(f"view keys {list(keys)} repeat a key; give each view its own tag")
    params = AugmentParams.from_mapping(augment)
    size = _pair(image_size)
    if params.crop_padding == "auto":
        params = replace(params, crop_padding=auto_padding(size))
    views: dict[str, nn.Module] = {}
    for key in keys:
        kind = view_kind(str(key))
        if kind not in VIEW_KINDS:
            raise UserError(
                f"unknown view kind {kind!r} in view key {key!r}; the kinds are "
                f"{sorted(VIEW_KINDS)} (a key is <kind> or <kind>_<tag>)"
            )
        view = VIEW_KINDS[kind](params, mean, std, size)
        if params.resize is not None:
            view = Resized(view, params.resize)
        views[str(key)] = view
    return views


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet-1k channel statistics, the normalisation torchvision's pretrained weights expect."""
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
"""The [-1, 1] scaling of Google's Inception checkpoints (and their PyTorch ports)."""


def input_stats(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the views must normalise with for ``model``.

    A model that declares ``input_stats = "imagenet"`` (an ImageNet-pretrained ViT-B/16, see
    :mod:`noisybench.models.vit`) gets ImageNet's statistics; every other model the dataset's
    ``mean`` and ``std``; ``"inception"`` (Inception-ResNet-v2 with its ported ImageNet
    weights, :mod:`noisybench.models.inception_resnet_v2`) mean = std = 0.5. Call it where the
    views are built:
    ``build_views(keys, augment, *input_stats(model, data.mean, data.std), size)``.
    """
    kind = getattr(model, "input_stats", "dataset")
    if kind in ("imagenet", "inception"):
        if len(mean) != 3:
            raise UserError(
                f"ImageNet normalisation needs 3-channel images, the dataset has {len(mean)}; "
                "set model.input_stats=dataset"
            )
        if kind == "inception":
            return INCEPTION_MEAN, INCEPTION_STD
        return IMAGENET_MEAN, IMAGENET_STD
    if kind != "dataset":
        raise UserError(
            f"model input_stats={kind!r} is unknown; use imagenet, inception or dataset"
        )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
