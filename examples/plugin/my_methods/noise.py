"""A noise variant outside noisybench: every sample not of class ``target`` is relabelled
``target`` with probability ``rate`` (an annotator who answers ``target`` when unsure).

Transition matrix: T = (1 - r) I + r e_target for the rows c != target, row ``target`` clean;
on balanced data with K classes the realised rate is r (K - 1) / K.
"""

from __future__ import annotations

import numpy as np

from noisybench.data.noise import Noise, NoiseData
from noisybench.errors import UserError


class ToClass(Noise):
    """Relabel non-``target`` samples as ``target`` with probability ``rate`` each."""

    variant = "to_class"  # the name the run records; the YAML's noise.variant must match

    def __init__(self, target: int = 0) -> None:
        self.target = int(target)

    def draw(self, data: NoiseData, rate: float, rng: np.random.Generator) -> np.ndarray:
        if not 0 <= self.target < data.num_classes:
            raise UserError(
                f"noise.target={self.target} is not a class of this dataset; choose one in "
                f"[0, {data.num_classes})"
            )
        flip = (rng.random(data.labels.shape[0]) < rate) & (data.labels != self.target)
        return np.where(flip, self.target, data.labels)
