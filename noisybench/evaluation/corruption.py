"""Common corruptions: CIFAR-10-C / CIFAR-100-C from their published files, and a few of
Hendrycks & Dietterich's corruption functions re-implemented on uint8 batches for any dataset.

Published layout (Hendrycks & Dietterich 2019, https://zenodo.org/record/2535967 and
https://zenodo.org/record/3555552): a folder ``CIFAR-10-C`` (or ``CIFAR-100-C``) holding one
``<corruption>.npy`` per corruption, uint8 ``(50000, 32, 32, 3)`` = the 10,000 test images at
severity 1, then severity 2, ... 5, and ``labels.npy`` ``(50000,)``. The suite expects it at
``<data_dir>/CIFAR-10-C`` (``<data_dir>/CIFAR-100-C`` for cifar100) unless ``dir`` is set.

Corruption functions (:data:`CORRUPTIONS`), on uint8 ``(N, C, H, W)`` batches on any device,
with the CIFAR-10-C parameters of Hendrycks' ``make_cifar_c.py`` (``x`` in [0, 1], result
clipped to [0, 1], times 255, truncated to uint8 as ``np.uint8`` does there):

* ``gaussian_noise``: ``x + N(0, s^2)``, s = 0.04, 0.06, 0.08, 0.09, 0.10.
* ``shot_noise``: ``Poisson(x * c) / c``, c = 500, 250, 100, 75, 50.
* ``impulse_noise``: salt-and-pepper (scikit-image's ``s&p``): each value independently, with
  probability a, set to 0 or 1 with equal chance; a = 0.01, 0.02, 0.03, 0.05, 0.07.
* ``speckle_noise``: ``x + x * N(0, s^2)``, s = 0.06, 0.10, 0.12, 0.16, 0.20.
* ``contrast``: ``(x - m) * c + m`` with m the per-image, per-channel mean;
  c = 0.75, 0.5, 0.4, 0.3, 0.15.
* ``brightness``: HSV value ``v + c`` clipped to 1, hue and saturation kept;
  c = 0.05, 0.1, 0.15, 0.2, 0.3. (With hue and saturation fixed, RGB is proportional to v,
  so this is ``rgb * min(v + c, 1) / v``; a black pixel becomes grey ``min(c, 1)``.)
* ``defocus_blur``: convolution with a disk of radius r (pixels within distance r of the
  centre on the integer grid, normalised) smoothed by a 3x3 Gaussian of standard deviation
  sigma; reflect padding as OpenCV's default border; (r, sigma) = (0.3, 0.4), (0.4, 0.5),
  (0.5, 0.6), (1, 0.2), (1.5, 0.1).

The noise draws come from a ``torch.Generator`` seeded per (corruption, severity), so a
corrupted set is the same in every evaluation of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from noisybench.errors import UserError
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict
from noisybench.metrics import expected_calibration_error

__all__ = [
    "CIFAR_C_CORRUPTIONS",
    "CORRUPTIONS",
    "CifarCSuite",
    "CorruptionSuite",
    "corrupt",
    "read_cifar_c",
]

SEVERITIES = (1, 2, 3, 4, 5)
CIFAR_C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)

_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
}


def _gaussian_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return x + s * torch.randn(x.shape, generator=gen, device=x.device)


def _shot_noise(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    return torch.poisson(x * c, generator=gen) / c


def _impulse_noise(x: Tensor, a: float, gen: torch.Generator) -> Tensor:
    flipped = torch.rand(x.shape, generator=gen, device=x.device) < a
    salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
    return torch.where(flipped, salt.float(), x)


def _speckle_noise(x: Tensor, s: float, gen: torch.Generator) -> Tensor:
    return x + x * s * torch.randn(x.shape, generator=gen, device=x.device)


def _contrast(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x: Tensor, c: float, gen: torch.Generator) -> Tensor:
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * v_new / v.clamp(min=1e-12), v_new.expand_as(x))


def defocus_kernel(radius: float, sigma: float) -> Tensor:
    """The defocus kernel: an integer-grid disk of ``radius`` (normalised), convolved with a
    3x3 Gaussian of std ``sigma`` (normalised), cropped to its support (weights below
    1e-12 of the largest, e.g. the e^-50 tails of sigma = 0.1, count as zero)."""
    half = math.floor(radius) + 1
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).double()
    disk /= disk.sum()
    g = torch.exp(-(torch.arange(-1, 2, dtype=torch.float64) ** 2) / (2 * sigma**2))
    g /= g.sum()
    kernel = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=1)[0, 0]
    keep = kernel > 1e-12 * kernel.max()  # Gaussian tails below 1e-12 are numerically zero
    rows, cols = keep.any(1), keep.any(0)
    kernel = torch.where(keep, kernel, torch.zeros_like(kernel))[rows][:, cols]
    return kernel / kernel.sum()


def _defocus_blur(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    kernel = defocus_kernel(*params).to(x.device, x.dtype)
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    return F.conv2d(padded, kernel.expand(c, 1, kh, kw), groups=c)


_FUNCTIONS: dict[str, Callable[[Tensor, object, torch.Generator], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "contrast": _contrast,
    "brightness": _brightness,
    "defocus_blur": _defocus_blur,
}
CORRUPTIONS = tuple(_FUNCTIONS)


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """``images`` (uint8 ``(N, C, H, W)``) corrupted by ``name`` at ``severity`` (1-5)."""
    if name not in _FUNCTIONS:
        raise UserError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity {severity} is not one of 1, 2, 3, 4, 5")
    gen = torch.Generator(device=images.device)
    gen.manual_seed(int(seed) * 1000 + CORRUPTIONS.index(name) * 10 + severity)
    x = images.float() / 255.0
    y = _FUNCTIONS[name](x, _PARAMS[name][severity - 1], gen)
    return (y.clamp(0.0, 1.0) * 255.0).floor().to(torch.uint8)


def _acc_ece(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    acc = (logits.argmax(-1) == labels).float().mean()
    return acc, expected_calibration_error(logits.softmax(-1), labels)


def _summarise(prefix: str, per: dict[tuple[str, int], tuple[float, float]]) -> Metrics:
    """Per-corruption/severity keys plus means over corruptions per severity and overall."""
    out: Metrics = {}
    names = sorted({n for n, _ in per})
    for (name, sev), (acc, ece) in sorted(per.items()):
        out[f"{prefix}/{name}/s{sev}/acc"] = acc
        out[f"{prefix}/{name}/s{sev}/ece"] = ece
    for name in names:
        vals = [v for (n, _), v in per.items() if n == name]
        out[f"{prefix}/{name}/acc"] = float(np.mean([a for a, _ in vals]))
        out[f"{prefix}/{name}/ece"] = float(np.mean([e for _, e in vals]))
    for sev in SEVERITIES:
        vals = [v for (_, s), v in per.items() if s == sev]
        if vals:
            out[f"{prefix}/s{sev}/acc"] = float(np.mean([a for a, _ in vals]))
            out[f"{prefix}/s{sev}/ece"] = float(np.mean([e for _, e in vals]))
    out[f"{prefix}/mean_acc"] = float(np.mean([a for a, _ in per.values()]))
    out[f"{prefix}/mean_ece"] = float(np.mean([e for _, e in per.values()]))
    return out


def _names(
    given: list[str] | tuple[str, ...] | None, known: tuple[str, ...], what: str
) -> list[str]:
    names = list(known if given is None else given)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(
            f"eval suite {what}: unknown or empty corruption list {unknown or names}; "
            f"choose from {', '.join(known)}"
        )
    return names


class CorruptionSuite(EvalSuite):
    """Accuracy and ECE of the test set corrupted with :func:`corrupt` (any dataset), at
    every severity; the digits stand-in for CIFAR-10-C (Table 3) and Figure 12.

    Keys: ``corruption/clean/acc``, ``corruption/<name>/s<k>/{acc,ece}``,
    ``corruption/<name>/{acc,ece}`` (mean over severities), ``corruption/s<k>/{acc,ece}``
    (mean over corruptions), ``corruption/{mean_acc,mean_ece}``.
    """

    name = "corruption"

    def __init__(self, every: int = 0, corruptions: list[str] | None = None, seed: int = 0) -> None:
        super().__init__(every)
        self.corruptions = _names(corruptions, CORRUPTIONS, self.name)
        self.seed = int(seed)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        images = ctx.test_images
        labels = ctx.test_labels.to(ctx.device)
        clean = predict(images)
        per: dict[tuple[str, int], tuple[float, float]] = {}
        for name in self.corruptions:
            for sev in SEVERITIES:
                acc, ece = _acc_ece(predict(corrupt(images, name, sev, self.seed)), labels)
                per[(name, sev)] = (float(acc), float(ece))
        out = _summarise(self.name, per)
        out[f"{self.name}/clean/acc"] = float((clean.argmax(-1) == labels).float().mean())
        return out


def cifar_c_dir(ctx: EvalContext, configured: str | None) -> Path:
    if configured:
        return Path(configured)
    folder = "CIFAR-100-C" if ctx.dataset == "cifar100" else "CIFAR-10-C"
    return Path(ctx.data_dir) / folder


def read_cifar_c(folder: Path, corruption: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped ``<corruption>.npy`` (uint8 ``(5M, H, W, C)``) and ``labels.npy``
    ``(5M,)`` of a CIFAR-C folder, checked."""
    path, label_path = folder / f"{corruption}.npy", folder / "labels.npy"
    for p in (path, label_path):
        if not p.is_file():
            raise UserError(
                f"{p} is missing; download {folder.name}.tar from "
                "https://zenodo.org/record/2535967 (CIFAR-10-C) or "
                f"https://zenodo.org/record/3555552 (CIFAR-100-C) and extract it to {folder}"
            )
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
        y = np.load(label_path, allow_pickle=False)
    except Exception as exc:
        raise UserError(
            f"{path} or {label_path} is not a readable .npy file ({type(exc).__name__}); "
            "download the archive again"
        ) from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] % 5 or y.shape != (x.shape[0],):
        raise UserError(
            f"{path}: shape {x.shape} {x.dtype} with labels {y.shape}; expected uint8 "
            "(5*M, H, W, C) (severities 1-5 stacked) and labels (5*M,); download it again"
        )
    return x, y.astype(np.int64)


class CifarCSuite(EvalSuite):
    """CIFAR-10-C / CIFAR-100-C accuracy and ECE per corruption and severity (the BSD paper's
    Table 3 and Figure 12).

    Keys: as :class:`CorruptionSuite` with prefix ``cifar_c``: ``cifar_c/<name>/s<k>/{acc,ece}``,
    ``cifar_c/<name>/{acc,ece}``, ``cifar_c/s<k>/{acc,ece}``, ``cifar_c/{mean_acc,mean_ece}``.
    ``max_per_severity`` evaluates only the first images of each severity block (for a cheap
    check during training; null: all).
    """

    name = "cifar_c"

    def __init__(
        self,
        every: int = 0,
        corruptions: list[str] | None = None,
        dir: str | None = None,
        max_per_severity: int | None = None,
    ) -> None:
        super().__init__(every)
        self.corruptions = _names(corruptions, CIFAR_C_CORRUPTIONS, self.name)
        self.dir = dir
        self.max_per_severity = None if max_per_severity is None else int(max_per_severity)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        folder = cifar_c_dir(ctx, self.dir)
        per: dict[tuple[str, int], tuple[float, float]] = {}
        for name in self.corruptions:
            x, y = read_cifar_c(folder, name)
            block = x.shape[0] // 5
            take = block if self.max_per_severity is None else min(block, self.max_per_severity)
            for sev in SEVERITIES:
                lo = (sev - 1) * block
                images = torch.from_numpy(np.array(x[lo : lo + take])).permute(0, 3, 1, 2)
                labels = torch.from_numpy(y[lo : lo + take]).to(ctx.device)
                acc, ece = _acc_ece(predict(images), labels)
                per[(name, sev)] = (float(acc), float(ece))
        return _summarise(self.name, per)
