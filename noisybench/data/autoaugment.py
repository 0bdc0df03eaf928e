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

Pixel arithmetic follows torchvision's uint8 tensor ops exactly: the image is held as float
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
RANGES = ("torchvision", "original")


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
        apply = torch.rand(batch, 2, device=device) <= self.probs[policy]
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

    def apply_op(self, x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
        """Apply operation ``op[i]`` with signed magnitude ``mag[i]`` to image ``i`` (no draw)."""
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
