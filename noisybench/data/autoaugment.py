"""AutoAugment's CIFAR-10 policy (Cubuk et al. 2019), batched on the device.

BSD+'s strong augmentation (BSD paper, Appendix A.1, Eq. 11) includes AutoAugment with the
CIFAR-10 policy. kornia 0.9.0's ``AutoAugment("cifar10")`` cannot serve: its rotate, shear and
translate never take a negative sign (``symmetric_megnitude`` multiplies by a boolean mask,
kornia issue 4494), its shear is about 3x too strong, its solarize threshold runs backwards,
its posterize range is wrong, and it draws one sub-policy per call for the whole batch. This
module is a from-scratch batched implementation.

What it does, per image (as the policy defines it and torchvision's per-image
``transforms.AutoAugment(AutoAugmentPolicy.CIFAR10)`` does it):

* one of the 25 sub-policies is drawn uniformly;
* each of its two operations is applied with its own probability (``u <= p``, ``u`` uniform);
* the magnitude is the fixed value of the operation's bin (0-9); Rotate, ShearX/Y,
  TranslateX/Y and (torchvision ranges only) Brightness, Color, Contrast, Sharpness take a
  random sign, drawn per image and operation.

Magnitude ranges (``ranges``):

``"torchvision"`` (default; torchvision's ``_augmentation_space`` with 10 bins)
    shear ``linspace(0, 0.3)``; translate ``linspace(0, 150/331 * size)`` pixels, truncated to
    an integer; rotate ``linspace(0, 30)`` degrees; enhance factor ``1 +/- linspace(0, 0.9)``;
    posterize ``8 - round(bin / 2.25)`` bits; solarize threshold ``linspace(255, 0)``.
``"original"`` (the TensorFlow code, ``research/autoaugment/augmentation_transforms.py``,
    level = bin, PARAMETER_MAX = 10)
    shear ``bin/10 * 0.3``; translate ``bin/10 * 10`` pixels; rotate ``bin/10 * 30`` degrees
    (these three with a random sign); enhance factor ``bin/10 * 1.8 + 0.1`` (no sign);
    posterize ``4 - int(bin/10 * 4)`` bits; solarize threshold ``256 - int(bin/10 * 256)``.

``"lnl"`` (the per-image PIL port ``CIFAR10Policy`` in the ``autoaugment.py`` of the
    noisy-label codebases that BSD+ is compared with in Table 4: CSOT, OT-Filter, UNICON,
    DivideMix-derived code; its ``SubPolicy``)
    shear ``linspace(0, 0.3)`` with a random sign, PIL bicubic resampling, grey (128) fill;
    translate ``linspace(0, 150/331) * size`` pixels with a random sign, PIL nearest
    (an integer shift ``floor(t + 0.5)``), grey fill; rotate ``linspace(0, 30)`` degrees
    counter-clockwise, **no sign**, PIL nearest about the centre, the corners composited onto
    grey through RGBA; Brightness, Color, Contrast, Sharpness ``ImageEnhance`` with factor
    ``1 +/- linspace(0, 0.9)`` (random sign); posterize ``round(linspace(8, 4))`` bits;
    solarize threshold ``linspace(256, 0)``; PIL's autocontrast / equalize / invert; an
    operation applies when ``u < p``. Pixel arithmetic is PIL's: its RGB -> L integer luma,
    ``Image.blend`` in float32, the SMOOTH filter summed in its order, the rotation in its
    16.16 fixed point, the bicubic (``a = -1``) shear and autocontrast in double (float32 on
    MPS, which has no float64). Bit-exact to Pillow run per image at every bin the policy
    uses, on the CPU (tests/test_data_autoaugment_lnl.py).

For ``"torchvision"`` and ``"original"``, pixel arithmetic follows torchvision's uint8 tensor
ops exactly: the image is held as float
values 0..255 and truncated to integers after every operation (as a uint8 image would be);
brightness, colour, contrast and sharpness are bit-exact to ``torchvision.transforms.functional``
(v1, what ``transforms.AutoAugment`` calls) at every bin (tested); ``transforms.v2.functional``
computes its blend and greyscale differently and differs from v1 itself by one level on up to
6 % of the pixels (sharpness), so it is not the reference here;
geometric operations use nearest-neighbour sampling with zero fill, through one batched
``grid_sample`` per stage with a per-image inverse affine matrix built as torchvision's
``_get_inverse_affine_matrix`` / ``_gen_affine_grid`` build it (shear about the top-left corner,
rotation and translation about the centre). Every operation is evaluated for the whole batch
and each image keeps the result of the operation it drew (``torch.where``), so there is no
per-image Python loop, no data-dependent shape and no host sync; all randomness comes from
torch's generator of the batch's device, so a saved RNG state reproduces the draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError

__all__ = ["CIFAR10_POLICY", "OPS", "BatchedAutoAugment"]

OPS: tuple[str, ...] = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
"""Operation names; an operation's index in this tuple is its id."""

# (op, probability, magnitude bin or None) x 2, the 25 sub-policies of Cubuk et al.'s CIFAR-10
# policy (their Table / appendix; the same list as torchvision and kornia).
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

_AFFINE = (0, 1, 2, 3, 4)
_ENHANCE = (5, 6, 7, 8)
RANGES = ("torchvision", "original", "lnl")


def magnitude_table(ranges: str, height: int, width: int) -> tuple[list[list[float]], list[bool]]:
    """``(values[op][bin], signed[op])`` of the chosen ranges for an ``height x width`` image."""
    if ranges not in RANGES:
        raise UserError(f"AutoAugment ranges {ranges!r} are unknown; use one of {list(RANGES)}")
    bins = range(10)
    if ranges == "torchvision":

        def lin(a: float, b: float) -> list[float]:
            return torch.linspace(a, b, 10).tolist()

        values = {
            "ShearX": lin(0.0, 0.3),
            "ShearY": lin(0.0, 0.3),
            "TranslateX": lin(0.0, 150.0 / 331.0 * width),
            "TranslateY": lin(0.0, 150.0 / 331.0 * height),
            "Rotate": lin(0.0, 30.0),
            "Posterize": [float(8 - round(b / ((10 - 1) / 4))) for b in bins],
            "Solarize": lin(255.0, 0.0),
        }
        for name in ("Brightness", "Color", "Contrast", "Sharpness"):
            values[name] = lin(0.0, 0.9)
        signed = set(OPS[i] for i in _AFFINE + _ENHANCE)
    elif ranges == "lnl":
        # the PIL port's ``SubPolicy.ranges`` (numpy linspace in double, stored in float32;
        # the exact double values are used where they matter through :func:`_lnl_tables`)
        def lin64(a: float, b: float) -> list[float]:
            step = (b - a) / 9  # numpy.linspace: arange(10) * step + start, in double
            return [k * step + a for k in bins]

        values = {
            "ShearX": lin64(0.0, 0.3),
            "ShearY": lin64(0.0, 0.3),
            "TranslateX": [v * width for v in lin64(0.0, 150.0 / 331.0)],
            "TranslateY": [v * height for v in lin64(0.0, 150.0 / 331.0)],
            "Rotate": lin64(0.0, 30.0),
            "Posterize": [float(round(v)) for v in lin64(8.0, 4.0)],
            "Solarize": lin64(256.0, 0.0),
        }
        for name in ("Brightness", "Color", "Contrast", "Sharpness"):
            values[name] = lin64(0.0, 0.9)
        # rotate has no random sign in the port; shear, translate and the enhance ops do
        signed = set(OPS[i] for i in (0, 1, 2, 3, *_ENHANCE))
    else:
        values = {
            "ShearX": [b / 10 * 0.3 for b in bins],
            "ShearY": [b / 10 * 0.3 for b in bins],
            "TranslateX": [b / 10 * 10.0 for b in bins],
            "TranslateY": [b / 10 * 10.0 for b in bins],
            "Rotate": [b / 10 * 30.0 for b in bins],
            "Posterize": [float(4 - int(b / 10 * 4)) for b in bins],
            "Solarize": [float(256 - int(b / 10 * 256)) for b in bins],
        }
        for name in ("Brightness", "Color", "Contrast", "Sharpness"):
            # stored as factor - 1 so that both ranges share "factor = 1 + value"
            values[name] = [b / 10 * 1.8 + 0.1 - 1.0 for b in bins]
        signed = set(OPS[i] for i in _AFFINE)
    table = [values.get(name, [0.0] * 10) for name in OPS]
    return table, [name in signed for name in OPS]


def _lnl_tables(height: int, width: int) -> tuple[list[list[list[float]]], list[list[list[int]]]]:
    """Per-bin constants of the ``"lnl"`` ranges that need double precision on the host.

    Returns ``(factor[op][bin][sign], rotate[bin][sign])``: ``factor`` is the enhance factor
    ``1 + s * m`` rounded once to float32 as PIL's ``Image.blend`` receives it (``1 - m``
    computed in float32 from a float32 ``m`` differs in the last bit at some bins), and
    ``rotate`` the 16.16 fixed-point inverse matrix PIL's nearest-neighbour affine transform
    uses for ``Image.rotate(angle)`` about the image centre (sign index 0: ``+``, 1: ``-``;
    the policy's rotate has no sign, the ``-`` entries only keep the table complete).
    """
    values, _ = magnitude_table("lnl", height, width)
    factor = [
        [[1.0 + v, 1.0 - v] for v in values[i]] if i in _ENHANCE else [[1.0, 1.0]] * 10
        for i in range(len(OPS))
    ]
    rotate = []
    cx, cy = width / 2, height / 2
    for v in values[OPS.index("Rotate")]:
        row = []
        for angle in (v, -v):
            # Image.rotate: the inverse rotation about the centre, its cos/sin rounded to 15
            # decimals; affine_fixed then folds in the pixel centre (+0.5) and rounds each
            # coefficient to 1/65536
            t = -math.radians(angle % 360.0)
            a, b = round(math.cos(t), 15), round(math.sin(t), 15)
            d, e = round(-math.sin(t), 15), round(math.cos(t), 15)
            c = a * -cx + b * -cy + cx
            f = d * -cx + e * -cy + cy
            fix = [a, b, c + a * 0.5 + b * 0.5, d, e, f + d * 0.5 + e * 0.5]
            row.append([math.floor(q * 65536.0 + 0.5) for q in fix])
        rotate.append(row)
    return factor, rotate


def _gather_x(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, c, i, idx[b, 0, i, j]]``: per-pixel column lookup (``idx`` long, ``(B,1,H,W)``)."""
    return x.gather(3, idx.expand_as(x))


def _pil_translate_x(x: Tensor, shift: Tensor, fill: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, 0, t, 0, 1, 0))``, nearest: output column ``j`` takes input
    column ``j + floor(t + 0.5)`` (its scale-affine path), ``fill`` outside."""
    w = x.shape[-1]
    j = torch.arange(w, device=x.device).view(1, 1, 1, w)
    src = j + torch.floor(shift + 0.5).long().view(-1, 1, 1, 1)
    inside = (src >= 0) & (src < w)
    out = _gather_x(x, src.clamp(0, w - 1).expand(-1, 1, x.shape[2], -1))
    return torch.where(inside, out, torch.full_like(out, fill))


def _pil_shear_x(x: Tensor, k: Tensor, fill: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, k, 0, 0, 1, 0), BICUBIC)``: output pixel ``(j, i)`` samples
    the input row ``i`` at ``u = j + 0.5 + k (i + 0.5)`` (the vertical offset is exactly 0,
    so PIL's vertical cubic returns the row itself) with its cubic ``a = -1`` kernel
    (``p1 = v2, p2 = v3 - v1, p3 = 2 (v1 - v2) + v3 - v4, p4 = v2 + v4 - v1 - v3``), taps
    clamped to the border, the result clipped and truncated; ``fill`` where ``u`` is outside
    ``[0, w)``. Computed in double as PIL computes it (float32 on MPS); ``k`` should be the
    double factor (its float32 rounding alone moves some samples by one level)."""
    _, _, h, w = x.shape
    dtype = x.dtype
    # PIL computes in double; so does this, except on devices without float64 (MPS)
    x = x.to(torch.float32 if x.device.type == "mps" else torch.float64)
    j = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    i = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    u = (j + 0.5) + k.to(x.dtype).view(-1, 1, 1, 1) * (i + 0.5)
    inside = (u >= 0.0) & (u < w)
    u = u - 0.5
    base = torch.floor(u)
    d = u - base
    base = base.long() - 1
    v1, v2, v3, v4 = (_gather_x(x, (base + t).clamp(0, w - 1)) for t in range(4))
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    v = v2 + d * (p2 + d * (p3 + d * p4))
    v = v.clamp(0.0, 255.0).trunc()
    return torch.where(inside, v, torch.full_like(v, fill)).to(dtype)


def _pil_rotate(x: Tensor, fixed: Tensor, fill: float) -> Tensor:
    """PIL ``rotate`` (nearest) through its 16.16 fixed-point affine loop: input
    ``(x, y) = ((a2 + i a1 + j a0) >> 16, (a5 + i a4 + j a3) >> 16)`` for output ``(j, i)``,
    exact integer arithmetic; ``fill`` outside (the port composites the transparent corners
    onto grey). ``fixed``: ``(B, 6)`` long coefficients from :func:`_lnl_tables`."""
    b, c, h, w = x.shape
    j = torch.arange(w, device=x.device).view(1, 1, w)
    i = torch.arange(h, device=x.device).view(1, h, 1)
    f = fixed.view(b, 6, 1, 1)
    xs = torch.div(f[:, 2] + i * f[:, 1] + j * f[:, 0], 65536, rounding_mode="floor")
    ys = torch.div(f[:, 5] + i * f[:, 4] + j * f[:, 3], 65536, rounding_mode="floor")
    inside = ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)).unsqueeze(1)
    flat = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(b, 1, h * w)
    out = x.reshape(b, c, h * w).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    return torch.where(inside, out, torch.full_like(out, fill))


def _pil_luma(x: Tensor) -> Tensor:
    """PIL's RGB -> L conversion: ``(19595 R + 38470 G + 7471 B + 32768) >> 16`` (exact in
    float32: the sum stays below 2**24), ``(B,1,H,W)``."""
    r, g, b = x.unbind(1)
    return torch.floor((r * 19595.0 + g * 38470.0 + b * 7471.0 + 32768.0) / 65536.0).unsqueeze(1)


def _pil_smooth(x: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3x3, centre 5, others 1, /13): float32 kernel weights,
    summed as PIL sums them (0.5 first for rounding, then row below, row, row above; within
    a row left, centre, right), truncated; the border pixels keep their values."""
    k1 = torch.full((), 1.0, dtype=x.dtype, device=x.device) / 13.0
    k5 = torch.full((), 5.0, dtype=x.dtype, device=x.device) / 13.0

    def row(r: Tensor, centre: Tensor) -> Tensor:
        return (r[..., :-2] * k1 + r[..., 1:-1] * centre) + r[..., 2:] * k1

    below, mid, above = x[..., 2:, :], x[..., 1:-1, :], x[..., :-2, :]
    ss = ((0.5 + row(below, k1)) + row(mid, k5)) + row(above, k1)
    out = x.clone()
    out[..., 1:-1, 1:-1] = ss.clamp(0.0, 255.0).trunc()
    return out


def _pil_autocontrast(x: Tensor) -> Tensor:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0), per channel: ``int(v * s - lo * s)`` with
    ``s = 255 / (hi - lo)`` in double (float32 on devices without float64), identity where
    ``hi <= lo``."""
    dt = torch.float32 if x.device.type == "mps" else torch.float64
    v = x.to(dt)
    lo = v.amin(dim=(-2, -1), keepdim=True)
    hi = v.amax(dim=(-2, -1), keepdim=True)
    flat = hi <= lo
    # a true division (``255.0 / tensor`` is a reciprocal times 255, one rounding more,
    # which turned 170 into 169.99999999999997 -> 169 on some pixels)
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)
    out = (v * scale + (-lo * scale)).trunc().clamp(0.0, 255.0)
    return torch.where(flat, v, out).to(x.dtype)


def _grey(x: Tensor) -> Tensor:
    """torchvision's uint8 ``rgb_to_grayscale`` (ITU-R 601 weights, truncated), ``(B,1,H,W)``."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).trunc().unsqueeze(1)


def _sharpen_degenerate(x: Tensor) -> Tensor:
    """torchvision's sharpness degenerate: 3x3 smoothing (centre 5, others 1, /13), rounded,
    on the interior; border pixels keep their values."""
    c = x.shape[1]
    # ones with a 5 in the centre, built by a fill and a pad on the device: an indexed
    # assignment of a Python number (``kernel[1, 1] = 5.0``) makes a CPU scalar tensor and
    # copies it to a CUDA device, every strong view. Divided by its sum (13) as torchvision
    # divides, so the weights are its float32 1/13 and 5/13.
    centre = torch.full((1, 1, 1, 1), 4.0, dtype=x.dtype, device=x.device)
    kernel = F.pad(centre, (1, 1, 1, 1)) + 1.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    blurred = F.conv2d(x, kernel, groups=c).round().clamp(0.0, 255.0)
    out = x.clone()
    out[..., 1:-1, 1:-1] = blurred
    return out


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1.0))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp(0.0, 255.0).trunc()


def _equalize(x: Tensor) -> Tensor:
    """torchvision's per-channel histogram equalisation, for all images and channels at once."""
    b, c, h, w = x.shape
    v = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))
    top = v.amax(dim=1, keepdim=True)
    # sum of all non-zero bins but the last one = pixels minus the count of the maximum value
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")
    safe = step.clamp_min(1)
    lut = torch.div(
        hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor"
    )
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, v).to(x.dtype)
    out = torch.where(step == 0, v.to(x.dtype), out)
    return out.view(b, c, h, w)


class BatchedAutoAugment(nn.Module):
    """AutoAugment, CIFAR-10 policy, one sub-policy per image (see the module docstring).

    Input and output: float ``(B, 3, H, W)`` batches with values 0..255 (integers). After each
    call :attr:`last_policy` holds the drawn sub-policy index per image (a device tensor, for
    tests and benchmarks).

    Args:
        ranges: ``"torchvision"`` (default) or ``"original"`` magnitude ranges.
        policy: the sub-policies (default :data:`CIFAR10_POLICY`).
    """

    def __init__(
        self,
        ranges: str = "torchvision",
        policy: tuple[tuple[tuple[str, float, int | None], ...], ...] = CIFAR10_POLICY,
    ) -> None:
        super().__init__()
        if ranges not in RANGES:
            raise UserError(f"AutoAugment ranges {ranges!r} are unknown; use one of {list(RANGES)}")
        self.ranges = ranges
        ops, probs, bins = [], [], []
        for sub in policy:
            if len(sub) != 2:
                raise UserError("every AutoAugment sub-policy needs exactly two operations")
            for name, p, b in sub:
                if name not in OPS:
                    raise UserError(f"unknown AutoAugment operation {name!r}; use one of {OPS}")
                ops.append(OPS.index(name))
                probs.append(float(p))
                bins.append(0 if b is None else int(b))
        n = len(policy)
        self.register_buffer("ops", torch.tensor(ops).view(n, 2), persistent=False)
        self.register_buffer("probs", torch.tensor(probs).view(n, 2), persistent=False)
        self.register_buffer("bins", torch.tensor(bins).view(n, 2), persistent=False)
        self._tables: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}
        self.last_policy: Tensor | None = None
        self._signature = (ranges, tuple(tuple(tuple(op) for op in sub) for sub in policy))

    def signature(self) -> tuple:
        """The magnitude ranges and the policy: equal signatures, equal augmentation."""
        return self._signature

    def _table(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (h, w, str(device))
        if key not in self._tables:
            values, signed = magnitude_table(self.ranges, h, w)
            self._tables[key] = (
                torch.tensor(values, dtype=torch.float32, device=device),
                torch.tensor(signed, dtype=torch.bool, device=device),
            )
        return self._tables[key]

    def sample(self, batch: int, h: int, w: int, device: torch.device) -> tuple[Tensor, ...]:
        """Draw ``(policy, op, magnitude, apply)``: ``policy (B,)``, the rest ``(B, 2)``."""
        values, signed = self._table(h, w, device)
        policy = torch.randint(0, self.ops.shape[0], (batch,), device=device)
        op = self.ops[policy]
        u = torch.rand(batch, 2, device=device)
        # the PIL port applies an operation when ``random.random() < p``; the other ranges
        # keep torchvision's ``u <= p`` (they differ only where ``u == p``)
        apply = u < self.probs[policy] if self.ranges == "lnl" else u <= self.probs[policy]
        sign = torch.randint(0, 2, (batch, 2), device=device) * 2 - 1
        mag = values[op, self.bins[policy]]
        mag = torch.where(signed[op], mag * sign, mag)
        return policy, op, mag, apply

    @staticmethod
    def _affine(x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
        """Rotate / shear / translate each image by its own parameters (identity for others)."""
        b, _, h, w = x.shape
        zero = torch.zeros_like(mag)
        # rotate: F.rotate(img, m) uses angle -m in the inverse matrix; shear: sx = atan(m)
        rot = torch.where(op == 4, torch.deg2rad(-mag), zero)
        sx = torch.where(op == 0, torch.atan(mag), zero)
        sy = torch.where(op == 1, torch.atan(mag), zero)
        tx = torch.where(op == 2, mag.trunc(), zero)
        ty = torch.where(op == 3, mag.trunc(), zero)
        shear = (op == 0) | (op == 1)
        cx = torch.where(shear, torch.full_like(mag, -0.5 * w), zero)
        cy = torch.where(shear, torch.full_like(mag, -0.5 * h), zero)
        a = torch.cos(rot - sy) / torch.cos(sy)
        bb = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
        c = torch.sin(rot - sy) / torch.cos(sy)
        d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
        m0, m1, m3, m4 = d, -bb, -c, a
        m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
        m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
        # grid_sample's coordinates are in [-1, 1]: the x row of theta divided by w / 2, the
        # y row by h / 2 (Python scalars: a tensor made from host data here would be a
        # blocking host-to-device copy per call on a GPU)
        sx_, sy_ = 0.5 * w, 0.5 * h
        theta = torch.stack(
            [m0 / sx_, m1 / sx_, m2 / sx_, m3 / sy_, m4 / sy_, m5 / sy_], dim=1
        ).view(b, 2, 3)
        xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=x.device)
        ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=x.device)
        base = torch.stack(
            [xs.expand(h, w), ys.unsqueeze(1).expand(h, w), torch.ones(h, w, device=x.device)],
            dim=-1,
        ).view(1, h * w, 3)
        grid = base.expand(b, -1, -1).bmm(theta.transpose(1, 2)).view(b, h, w, 2)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _lnl_table(
        self, h: int, w: int, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        key = (h, w, str(device) + ":lnl")
        if key not in self._tables:
            factor, rotate = _lnl_tables(h, w)
            values64, _ = magnitude_table("lnl", h, w)
            wide = torch.float32 if torch.device(device).type == "mps" else torch.float64
            self._tables[key] = (
                torch.tensor(factor, dtype=torch.float32, device=device),
                torch.tensor(rotate, dtype=torch.long, device=device),
                torch.tensor(values64, dtype=wide, device=device),
            )
        values, _ = self._table(h, w, device)
        return (values, *self._tables[key])

    def _apply_op_lnl(self, x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
        """The PIL port's operations (``ranges="lnl"``), see the module docstring."""
        h, w = x.shape[-2:]
        values, factor, rotate, values64 = self._lnl_table(h, w, x.device)
        # the bin and sign of each magnitude, to look up the constants computed in double
        # on the host (an argmin on the device: no host sync)
        bin_ = (values[op] - mag.abs().unsqueeze(1)).abs().argmin(dim=1)
        neg = (mag < 0).long()
        shape = (-1, 1, 1, 1)
        opv = op.view(shape)
        zero = torch.zeros_like(mag)
        grey = 128.0
        xt = x.transpose(-1, -2)
        out = x
        # the shear factor in double, as the port passes it to PIL (float32's rounding of
        # it moved 1.5 % of the bicubic samples by one level)
        k = values64[op, bin_] * (1 - 2 * neg)
        k0 = torch.zeros_like(k)
        out = torch.where(opv == 0, _pil_shear_x(x, torch.where(op == 0, k, k0), grey), out)
        sy = _pil_shear_x(xt, torch.where(op == 1, k, k0), grey).transpose(-1, -2)
        out = torch.where(opv == 1, sy, out)
        tx = _pil_translate_x(x, torch.where(op == 2, mag, zero), grey)
        out = torch.where(opv == 2, tx, out)
        ty = _pil_translate_x(xt, torch.where(op == 3, mag, zero), grey).transpose(-1, -2)
        out = torch.where(opv == 3, ty, out)
        out = torch.where(opv == 4, _pil_rotate(x, rotate[bin_, neg], grey), out)
        # ImageEnhance: Image.blend(degenerate, img, f) = deg + f * (img - deg) in float32,
        # clipped and truncated
        luma = _pil_luma(x)
        total = luma.long().sum(dim=(-3, -2, -1), keepdim=True)
        # int(mean + 0.5) of the L image, exactly, in integers
        mean = torch.div(2 * total + h * w, 2 * h * w, rounding_mode="floor").to(x.dtype)
        degenerate = torch.where(
            opv == 5,
            torch.zeros_like(x),
            torch.where(
                opv == 6,
                luma.expand_as(x),
                torch.where(opv == 7, mean.expand_as(x), _pil_smooth(x)),
            ),
        )
        f = factor[op, bin_, neg].view(shape)
        blended = (degenerate + f * (x - degenerate)).clamp(0.0, 255.0).trunc()
        out = torch.where((opv >= 5) & (opv <= 8), blended, out)
        m = mag.view(shape)
        step = torch.exp2(8.0 - m)
        out = torch.where(opv == 9, torch.floor(x / step) * step, out)
        out = torch.where(opv == 10, torch.where(x >= m, 255.0 - x, x), out)
        out = torch.where(opv == 11, _pil_autocontrast(x), out)
        out = torch.where(opv == 12, _equalize(x), out)
        out = torch.where(opv == 13, 255.0 - x, out)
        return out

    def apply_op(self, x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
        """Apply operation ``op[i]`` with signed magnitude ``mag[i]`` to image ``i`` (no draw)."""
        if self.ranges == "lnl":
            return self._apply_op_lnl(x, op, mag)
        shape = (-1, 1, 1, 1)
        opv = op.view(shape)
        m = mag.view(shape)
        out = x
        is_affine = opv <= 4
        out = torch.where(is_affine, self._affine(x, op, mag), out)
        # Brightness, Color, Contrast, Sharpness: blend(img, degenerate, 1 + m)
        grey = _grey(x)
        degenerate = torch.where(
            opv == 5,
            torch.zeros_like(x),
            torch.where(
                opv == 6,
                grey.expand_as(x),
                torch.where(
                    opv == 7,
                    grey.mean(dim=(-3, -2, -1), keepdim=True).expand_as(x),
                    _sharpen_degenerate(x),
                ),
            ),
        )
        # torchvision's _blend(img, degenerate, ratio) with ratio = 1.0 + m a Python double:
        # ``ratio * img`` multiplies by float32(1 + m) (= 1 + m rounded once, as here), and
        # ``(1.0 - ratio) * degenerate`` by float32(1 - (1 + m)) = -m exactly (1 + m is exact
        # in double); ``(1 - f)`` in float32 is not -m, and the difference flipped 1/255
        # levels on up to 6 % of the pixels (sharpness 1 - 0.1)
        blended = ((1.0 + m) * x + (-m) * degenerate).clamp(0.0, 255.0).trunc()
        out = torch.where((opv >= 5) & (opv <= 8), blended, out)
        step = torch.exp2(8.0 - m)
        out = torch.where(opv == 9, torch.floor(x / step) * step, out)
        out = torch.where(opv == 10, torch.where(x >= m, 255.0 - x, x), out)
        out = torch.where(opv == 11, _autocontrast(x), out)
        out = torch.where(opv == 12, _equalize(x), out)
        out = torch.where(opv == 13, 255.0 - x, out)
        return out

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserError(
                f"AutoAugment needs (B, 3, H, W) images, got shape {tuple(x.shape)}; "
                "repeat grey images to 3 channels first"
            )
        b, _, h, w = x.shape
        policy, op, mag, apply = self.sample(b, h, w, x.device)
        self.last_policy = policy
        return self.apply_drawn(x.float(), op, mag, apply)

    def apply_drawn(self, x: Tensor, op: Tensor, mag: Tensor, apply: Tensor) -> Tensor:
        """Both operations of drawn sub-policies (:meth:`sample`'s ``op``, ``mag``,
        ``apply``) on a float ``(B, 3, H, W)`` batch of 0..255 values; draws nothing."""
        for stage in range(2):
            y = self.apply_op(x, op[:, stage], mag[:, stage])
            x = torch.where(apply[:, stage].view(-1, 1, 1, 1), y, x)
        return x
