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
  ranges are torchvision's by default (``autoaugment_ranges: original`` selects the TF code's).
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
engine saves and restores; no view reads a value back to the host (``tests/test_sync_count.py``).
Views run under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.data.autoaugment import RANGES, BatchedAutoAugment
from noisybench.errors import UserError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIEW_KINDS",
    "AugmentParams",
    "PlainView",
    "RandomErasing",
    "Resized",
    "StrongView",
    "WeakView",
    "build_views",
    "input_stats",
    "random_crop",
    "random_hflip",
    "register_view_kind",
    "view_kind",
]


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of the views, read from ``dataset.augment`` in the config.

    Attributes:
        crop_padding: zero padding (pixels per side) before the random crop; 0 disables it.
        hflip: random horizontal flip with probability 1/2 (off for digits, where a flip
            changes the meaning of the image).
        autoaugment_ranges: ``"torchvision"`` or ``"original"`` magnitude ranges of the strong
            view's AutoAugment (see :mod:`noisybench.data.autoaugment`).
        erasing_p: probability of Random Erasing per image in the strong view.
        resize: ``None`` (keep the dataset's size) or the side in pixels that every view's
            output is resized to (bilinear, after augmentation and normalisation), e.g. 224
            for ViT-B/16.
    """

    crop_padding: int = 4
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
        if int(params.crop_padding) < 0:
            raise UserError(
                f"dataset.augment.crop_padding={params.crop_padding} is negative; use 0 or more"
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


def random_crop(x: Tensor, padding: int, size: tuple[int, int] | None = None) -> Tensor:
    """Random ``size`` crop of each image of ``x`` zero-padded by ``padding`` pixels per side.

    One gather for the whole batch (exact pixel copies, no interpolation, no host sync).
    Offsets are uniform over every window position of the padded image, as in the usual
    ``RandomCrop(size, padding)``.

    Args:
        x: ``(B, C, H, W)`` images of any dtype.
        padding: zero padding per side.
        size: output ``(h, w)``; default the input size.
    """
    b, c, h, w = x.shape
    oh, ow = size if size is not None else (h, w)
    if padding == 0 and (oh, ow) == (h, w):
        return x
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    ph, pw = padded.shape[-2:]
    if oh > ph or ow > pw:
        raise UserError(
            f"crop size {(oh, ow)} is larger than the padded image {(ph, pw)}; "
            "check the dataset's image size"
        )
    dev = x.device
    top = torch.randint(0, ph - oh + 1, (b,), device=dev)
    left = torch.randint(0, pw - ow + 1, (b,), device=dev)
    # Flat index of output pixel (y, x) of image i in its padded (ph * pw) plane.
    rows = top[:, None, None] + torch.arange(oh, device=dev)[None, :, None]
    cols = left[:, None, None] + torch.arange(ow, device=dev)[None, None, :]
    flat = (rows * pw + cols).view(b, 1, oh * ow).expand(b, c, oh * ow)
    return padded.flatten(2).gather(2, flat).view(b, c, oh, ow)


def random_hflip(x: Tensor, p: float = 0.5) -> Tensor:
    """Flip each image of ``x`` left-right independently with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device) < p
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
    so the output equals kornia's bit for bit (``tests/test_views_loader.py``). Written here
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

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        dev = x.device
        if self.p in (0.0, 1.0):  # no draw, as kornia (the parameters are drawn regardless)
            apply = torch.full((b,), self.p == 1.0, device=dev)
        else:
            apply = torch.rand(b, device=dev) < self.p
        area = self._uniform(b, self.scale[0], self.scale[1]) * (h * w)
        one = torch.ones((), device=dev)
        below_one = self._uniform(b, self.ratio[0], one)
        above_one = self._uniform(b, one, self.ratio[1])
        aspect = torch.where(torch.rand(b, device=dev).round().bool(), below_one, above_one)
        box_h = torch.round((area * aspect) ** 0.5).clamp(1.0, h)
        box_w = torch.round((area / aspect) ** 0.5).clamp(1.0, w)
        left = (torch.rand(b, device=dev) * (w - box_w + 1)).floor()
        top = (torch.rand(b, device=dev) * (h - box_h + 1)).floor()
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
        box = (rows >= top) & (rows < top + box_h.view(-1, 1, 1))
        box = box & (cols >= left) & (cols < left + box_w.view(-1, 1, 1))
        box = box & apply.view(-1, 1, 1)
        fill = torch.full((), self.value, dtype=x.dtype, device=dev)
        return torch.where(box.unsqueeze(1), fill, x)


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

    def augment_uint8(self, x: Tensor) -> Tensor:
        """The geometric part on the raw batch (dtype preserved)."""
        x = random_crop(x, self.crop_padding, self.image_size)
        if self.hflip:
            x = random_hflip(x)
        return x

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(self.augment_uint8(x))


class StrongView(WeakView):
    """Weak augmentation + AutoAugment (CIFAR-10 policy, per image) + Random Erasing.

    BSD+'s strong set (Appendix A.1, Eq. 11) without CutMix, which the method applies.
    After each call, ``self.autoaugment.last_policy`` holds the sub-policy index drawn for
    each image (a device tensor; a diagnostic for the tests and the benchmark).
    """

    def __init__(
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

    def _autoaugment(self, x: Tensor) -> Tensor:
        """AutoAugment on a 0..255 batch, returned in [0, 1]."""
        grey = x.shape[1] == 1
        if grey:
            x = x.expand(-1, 3, -1, -1)
        out = self.autoaugment(x.float()).div_(255.0)
        if grey:
            out = out.mean(dim=1, keepdim=True)
        return out

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = self.augment_uint8(x)
        # AutoAugment works on 0..255 values (uint8 arithmetic); a float input is in [0, 1]
        x = x.float() if x.dtype == torch.uint8 else (x.float() * 255.0).round_()
        x = self._autoaugment(x).clamp_(0.0, 1.0)
        return self.erasing(self.normalize(x))


class Resized(nn.Module):
    """Wraps a view and resizes its output to ``size x size`` (bilinear, ``align_corners=False``,
    anti-aliased only when shrinking an axis), on the device, as the view's last step."""

    def __init__(self, view: nn.Module, size: int) -> None:
        super().__init__()
        self.view = view
        self.size = int(size)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        out = self.view(x)
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


def input_stats(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the views must normalise with for ``model``.

    A model that declares ``input_stats = "imagenet"`` (an ImageNet-pretrained ViT-B/16, see
    :mod:`noisybench.models.vit`) gets ImageNet's statistics; every other model the dataset's
    ``mean`` and ``std``. Call it where the views are built:
    ``build_views(keys, augment, *input_stats(model, data.mean, data.std), size)``.
    """
    kind = getattr(model, "input_stats", "dataset")
    if kind == "imagenet":
        if len(mean) != 3:
            raise UserError(
                f"ImageNet normalisation needs 3-channel images, the dataset has {len(mean)}; "
                "set model.input_stats=dataset"
            )
        return IMAGENET_MEAN, IMAGENET_STD
    if kind != "dataset":
        raise UserError(f"model input_stats={kind!r} is unknown; use imagenet or dataset")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
