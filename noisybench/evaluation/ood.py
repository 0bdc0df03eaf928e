"""Out-of-distribution detection: AUROC of the maximum softmax probability (MSP).

Hendrycks & Gimpel 2017's baseline detector, as the BSD paper's Table 6 uses it: the score of
an image is its maximum softmax probability; in-distribution test images are the positives,
the out-of-distribution images the negatives; the AUROC is the probability that a random
positive scores above a random negative (ties count one half), computed exactly from average
ranks (the Mann-Whitney U statistic).

Sources (``source`` in ``conf/eval/ood.yaml``):

``svhn``
    SVHN's test split as torchvision stores it: ``<data_dir>/svhn/test_32x32.mat``, a MATLAB
    file with ``X`` uint8 ``(32, 32, 3, N)`` and ``y`` ``(N, 1)`` (read with
    ``scipy.io.loadmat``). Get it with ``torchvision.datasets.SVHN(<data_dir>/svhn,
    split="test", download=True)`` or from http://ufldl.stanford.edu/housenumbers/.
``npy``
    Any uint8 image array ``(N, H, W, C)`` in a ``.npy`` file given as ``path``.
``sklearn_patches``
    Offline natural images: scikit-learn's two bundled sample photographs
    (``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg, 427 x 640 RGB),
    downscaled by ``patch_scale`` (area average), cut into non-overlapping patches of the
    in-distribution image size; grey (channel mean) when the in-distribution images are grey.

Images whose channels or size differ from the in-distribution images are adapted (grey to RGB
by repetition, RGB to grey by the channel mean, then bilinear resizing with antialiasing), and
the keys record the OOD set's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from noisybench.errors import UserError
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict

__all__ = ["OODSuite", "auroc", "read_sklearn_patches", "read_svhn_test"]


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve of scores ``positive`` (label 1) against ``negative``
    (label 0): ``P(s+ > s-) + P(s+ = s-)/2``, from average ranks (ties averaged)."""
    pos, neg = positive.double().flatten(), negative.double().flatten()
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        raise UserError("AUROC needs at least one in-distribution and one OOD image")
    _values, inverse, counts = torch.unique(
        torch.cat([pos, neg]), sorted=True, return_inverse=True, return_counts=True
    )
    start = torch.cumsum(counts, 0) - counts  # 0-based first position of each distinct value
    avg_rank = start.double() + (counts.double() + 1) / 2  # 1-based average rank
    rank_sum = avg_rank[inverse[:n_pos]].sum()
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def read_svhn_test(data_dir: str | Path) -> Tensor:
    """SVHN's test images as uint8 ``(N, 3, 32, 32)`` from ``<data_dir>/svhn/test_32x32.mat``."""
    path = Path(data_dir) / "svhn" / "test_32x32.mat"
    if not path.is_file():
        raise UserError(
            f"SVHN test file {path} is missing; get it with torchvision.datasets.SVHN("
            f"'{path.parent}', split='test', download=True) or from "
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"
        )
    from scipy.io import loadmat

    try:
        x = loadmat(str(path))["X"]
    except Exception as exc:
        raise UserError(
            f"{path} is not a readable SVHN .mat file ({type(exc).__name__}); download it again"
        ) from exc
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise UserError(
            f"{path}: X has shape {x.shape} and dtype {x.dtype}, expected uint8 (32, 32, 3, N); "
            "download it again"
        )
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))


def read_npy_images(path: str | Path) -> Tensor:
    """uint8 ``(N, H, W, C)`` images from a ``.npy`` file, as ``(N, C, H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"OOD image file {path} is missing; set eval ood.path to a .npy file")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path} is not a readable .npy file ({type(exc).__name__})") from exc
    if x.ndim != 4 or x.dtype != np.uint8:
        raise UserError(f"{path}: shape {x.shape}, dtype {x.dtype}; expected uint8 (N, H, W, C)")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def read_sklearn_patches(size: tuple[int, int], channels: int, scale: int = 4) -> Tensor:
    """Non-overlapping ``size`` patches of scikit-learn's bundled sample photographs,
    downscaled by ``scale`` (area average); uint8 ``(N, channels, h, w)``."""
    from sklearn.datasets import load_sample_images

    h, w = size
    patches = []
    for image in load_sample_images().images:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        if channels == 1:
            x = x.mean(dim=1, keepdim=True)
        if scale > 1:
            x = F.avg_pool2d(x, scale)
        x = x[..., : x.shape[-2] // h * h, : x.shape[-1] // w * w]
        c = x.shape[1]
        tiles = x.unfold(2, h, h).unfold(3, w, w)  # (1, c, nh, nw, h, w)
        patches.append(tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, h, w))
    return torch.cat(patches).round().clamp(0, 255).to(torch.uint8)


def adapt_images(x: Tensor, channels: int, size: tuple[int, int]) -> Tensor:
    """uint8 images with their channels and size made ``channels`` x ``size``."""
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.repeat(1, channels, 1, 1)
        elif channels == 1:
            x = x.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
        else:
            raise UserError(f"cannot map {x.shape[1]}-channel OOD images to {channels} channels")
    if tuple(x.shape[-2:]) != tuple(size):
        y = F.interpolate(
            x.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        x = y.round().clamp(0, 255).to(torch.uint8)
    return x


class OODSuite(EvalSuite):
    """AUROC of the maximum softmax probability: the in-distribution test set against an OOD
    image set (the BSD paper's Table 6, SVHN as OOD).

    Keys: ``ood/<source>/auroc``, ``ood/<source>/msp_in``, ``ood/<source>/msp_out`` (mean
    MSPs), ``ood/<source>/n_out``.
    """

    name = "ood"
    SOURCES = ("svhn", "npy", "sklearn_patches")

    def __init__(
        self,
        every: int = 0,
        source: str = "svhn",
        path: str | None = None,
        patch_scale: int = 4,
        max_images: int | None = None,
    ) -> None:
        super().__init__(every)
        if source not in self.SOURCES:
            raise UserError(
                f"eval suite ood: unknown source {source!r}; use one of {', '.join(self.SOURCES)}"
            )
        if source == "npy" and not path:
            raise UserError("eval suite ood: source=npy needs path=<file.npy>; set ood.path")
        self.source, self.path = source, path
        self.patch_scale = int(patch_scale)
        self.max_images = None if max_images is None else int(max_images)
        self._images: Tensor | None = None

    def images(self, ctx: EvalContext) -> Tensor:
        """The OOD images, adapted to the in-distribution shape (read once, then cached)."""
        if self._images is None:
            c, h, w = ctx.test_images.shape[1:]
            if self.source == "svhn":
                x = read_svhn_test(ctx.data_dir)
            elif self.source == "npy":
                x = read_npy_images(self.path or "")
            else:
                x = read_sklearn_patches((h, w), c, self.patch_scale)
            if self.max_images is not None:
                x = x[: self.max_images]
            self._images = adapt_images(x, c, (h, w))
        return self._images

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        msp_in = predict(ctx.test_images).softmax(-1).amax(-1)
        msp_out = predict(self.images(ctx)).softmax(-1).amax(-1)
        key = f"{self.name}/{self.source}"
        return {
            f"{key}/auroc": auroc(msp_in, msp_out),
            f"{key}/msp_in": float(msp_in.mean()),
            f"{key}/msp_out": float(msp_out.mean()),
            f"{key}/n_out": float(msp_out.numel()),
        }
