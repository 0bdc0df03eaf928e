"""CIFAR-10-P: the mean flip probability (Hendrycks & Dietterich 2019, Sec. 4).

For a perturbation p, each test image comes as a sequence of frames ``x_1 .. x_T``. With
``f`` the arg-max prediction, the flip probability over ``m`` sequences is

* for the noise perturbations (``gaussian_noise``, ``shot_noise``, ``impulse_noise``,
  ``speckle_noise``, and their ``_2``/``_3`` variants), which are not temporally ordered,
  every frame compared with the first:
  ``FP_p = 1/(m (T-1)) sum_i sum_{j=2..T} 1[f(x_j^i) != f(x_1^i)]``;
* for the others, consecutive frames:
  ``FP_p = 1/(m (T-1)) sum_i sum_{j=2..T} 1[f(x_j^i) != f(x_{j-1}^i)]``;

and the mean flip probability (mFP, the BSD paper's Table 3) is the mean of ``FP_p`` over the
perturbations (unnormalised: no AlexNet reference, as in the BSD paper).

Published layout (https://zenodo.org/record/2535967): a folder ``CIFAR-10-P`` with one
``<perturbation>.npy`` per perturbation, uint8 ``(N, T, 32, 32, 3)``; expected at
``<data_dir>/CIFAR-10-P`` (``CIFAR-100-P`` for cifar100) unless ``dir`` is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from noisybench.errors import UserError
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict

__all__ = ["CIFAR_P_PERTURBATIONS", "CifarPSuite", "flip_probability", "is_noise_perturbation"]

CIFAR_P_PERTURBATIONS = (
    "brightness",
    "gaussian_blur",
    "gaussian_noise",
    "gaussian_noise_2",
    "gaussian_noise_3",
    "motion_blur",
    "rotate",
    "saturate",
    "scale",
    "shot_noise",
    "shot_noise_2",
    "shot_noise_3",
    "snow",
    "spatter",
    "speckle_noise",
    "speckle_noise_2",
    "speckle_noise_3",
    "tilt",
    "translate",
    "zoom_blur",
)
_NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def is_noise_perturbation(name: str) -> bool:
    """Whether ``name`` is a noise sequence (compared with its first frame)."""
    return any(name == n or name.startswith(n + "_") for n in _NOISE)


def flip_probability(predictions: Tensor, noise: bool) -> Tensor:
    """Flip probability of arg-max ``predictions`` ``(m, T)``: the share of frames 2..T whose
    prediction differs from the first frame's (``noise``) or from the previous frame's."""
    if predictions.ndim != 2 or predictions.shape[1] < 2:
        raise UserError(
            f"flip probability needs (sequences, frames >= 2), got {tuple(predictions.shape)}"
        )
    ref = predictions[:, :1] if noise else predictions[:, :-1]
    return (predictions[:, 1:] != ref).float().mean()


def read_cifar_p(folder: Path, name: str) -> np.ndarray:
    """Memory-mapped uint8 ``(N, T, H, W, C)`` frames of ``<folder>/<name>.npy``, checked."""
    path = folder / f"{name}.npy"
    if not path.is_file():
        raise UserError(
            f"{path} is missing; download {folder.name}.tar from https://zenodo.org/record/2535967 "
            f"and extract it to {folder}"
        )
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise UserError(
            f"{path} is not a readable .npy file ({type(exc).__name__}); download it again"
        ) from exc
    if x.dtype != np.uint8 or x.ndim != 5 or x.shape[1] < 2:
        raise UserError(f"{path}: shape {x.shape} {x.dtype}; expected uint8 (N, T>=2, H, W, C)")
    return x


class CifarPSuite(EvalSuite):
    """Flip probability per perturbation and their mean (the BSD paper's Table 3, mFP).

    Keys: ``cifar_p/<perturbation>/fp`` and ``cifar_p/mfp``. ``max_sequences`` limits the
    sequences per perturbation (null: all); ``chunk`` is the number of sequences predicted at
    once.
    """

    name = "cifar_p"

    def __init__(
        self,
        every: int = 0,
        perturbations: list[str] | None = None,
        dir: str | None = None,
        max_sequences: int | None = None,
        chunk: int = 64,
    ) -> None:
        super().__init__(every)
        names = list(CIFAR_P_PERTURBATIONS if perturbations is None else perturbations)
        if not names:
            raise UserError("eval suite cifar_p: empty perturbation list; leave it null for all")
        self.perturbations = names
        self.dir = dir
        self.max_sequences = None if max_sequences is None else int(max_sequences)
        self.chunk = int(chunk)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        if self.dir:
            folder = Path(self.dir)
        else:
            folder = Path(ctx.data_dir) / (
                "CIFAR-100-P" if ctx.dataset == "cifar100" else "CIFAR-10-P"
            )
        out: Metrics = {}
        for name in self.perturbations:
            x = read_cifar_p(folder, name)
            m = x.shape[0] if self.max_sequences is None else min(x.shape[0], self.max_sequences)
            t = x.shape[1]
            preds = []
            for start in range(0, m, self.chunk):
                frames = torch.from_numpy(np.array(x[start : start + self.chunk]))
                n = frames.shape[0]
                flat = frames.reshape(n * t, *frames.shape[2:]).permute(0, 3, 1, 2)
                preds.append(predict(flat).argmax(-1).reshape(n, t))
            fp = flip_probability(torch.cat(preds), is_noise_perturbation(name))
            out[f"{self.name}/{name}/fp"] = float(fp)
        out[f"{self.name}/mfp"] = float(
            np.mean([out[f"{self.name}/{n}/fp"] for n in self.perturbations])
        )
        return out
