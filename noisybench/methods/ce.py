"""Plain cross-entropy on the noisy labels: the baseline every other method is compared to."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from noisybench.method import Batch, Method, StepOutput

__all__ = ["CrossEntropy"]


class CrossEntropy(Method):
    """Standard empirical risk minimisation: ``mean_i -log softmax(f(x_i))_{y~_i}`` on the
    weakly augmented view, with ``y~`` the given (noisy) label."""

    views = ("weak",)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        loss = F.cross_entropy(logits.float(), batch.target)
        return StepOutput(loss=loss, logits=logits)
