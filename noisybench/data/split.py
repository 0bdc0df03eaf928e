"""A held-out validation split of the (noisy) training set, for model selection under noise.

The split is drawn with its own seed (``split_seed``), independent of the training and the
noise seeds, so the same split can be kept while either changes. It is recorded in the run's
result by :func:`split_record` (fraction, seed, sizes and a SHA-256 of the validation indices).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from noisybench.errors import UserError

__all__ = ["holdout_split", "split_record"]


def holdout_split(
    num_samples: int, fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``, both sorted int64, disjoint, covering all samples.

    ``round(fraction * num_samples)`` samples go to validation, drawn uniformly with
    ``numpy.random.default_rng(seed)``; with ``labels`` (the noisy labels the run trains on)
    the draw is stratified by label (each label's share rounded by the largest-remainder
    rule), so every observed class stays in training.
    """
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise UserError(f"validation fraction={fraction} must be in (0, 1), e.g. 0.1")
    n_val = round(fraction * num_samples)
    if not 0 < n_val < num_samples:
        raise UserError(
            f"validation fraction={fraction} of {num_samples} samples leaves an empty split; "
            "choose a fraction nearer 0.1"
        )
    rng = np.random.default_rng(int(seed))
    if labels is None:
        val = rng.choice(num_samples, size=n_val, replace=False)
    else:
        labels = np.asarray(labels)
        if labels.shape != (num_samples,):
            raise UserError(f"labels of shape {labels.shape} do not match {num_samples} samples")
        classes, counts = np.unique(labels, return_counts=True)
        exact = counts * n_val / num_samples
        take = np.floor(exact).astype(int)
        rest = n_val - take.sum()
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:rest]] += 1
        take = np.minimum(take, counts - 1)  # keep at least one sample of each label in training
        parts = [
            rng.choice(np.flatnonzero(labels == c), size=t, replace=False)
            for c, t in zip(classes, take, strict=True)
        ]
        val = np.concatenate(parts)
    val = np.sort(val).astype(np.int64)
    train = np.setdiff1d(np.arange(num_samples, dtype=np.int64), val, assume_unique=True)
    return train, val


def split_record(fraction: float, seed: int, train: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    """What the result file records about the split."""
    digest = hashlib.sha256(np.ascontiguousarray(val, dtype=np.int64).tobytes()).hexdigest()
    return {
        "fraction": float(fraction),
        "seed": int(seed),
        "n_train": len(train),
        "n_val": len(val),
        "val_indices_sha256": digest,
    }
