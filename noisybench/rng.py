"""Every global random-number state a run draws from, as checkpoint-safe tensors and numbers.

Exact resume restores these at the step boundary where the checkpoint was taken, so the next
batch's augmentation draws the same numbers as in a run that never stopped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Every global RNG state a run draws from: torch's (CPU and every CUDA device; the
    augmentations, dropout, CutMix/MixUp draws), NumPy's and Python's (in case a method or
    a third-party augmentation draws from them). Tensors and numbers only, so that the
    checkpoint loads with ``weights_only=True``."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state["numpy"] = {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    version, internal, gauss_next = random.getstate()
    state["python"] = {
        "version": int(version),
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": gauss_next,
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (older checkpoints without the NumPy and
    Python entries restore torch's states only)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (npst["kind"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["gauss"]))
        )
    if "python" in state:
        pyst = state["python"]
        internal = tuple(int(v) for v in pyst["internal"].tolist())
        random.setstate((int(pyst["version"]), internal, pyst["gauss_next"]))
