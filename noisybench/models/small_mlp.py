"""A BatchNorm-free multilayer perceptron for tiny images (not from the BSD paper).

Purpose: a model whose output for a sample does not depend on the other samples of its batch
(no BatchNorm, no dropout), so that a data-parallel run, where each process sees only its share
of a batch, computes exactly the single-process losses and gradients (up to float rounding);
``tests/test_distributed.py`` relies on this. It also trains the digits quickstart in seconds.

Layout: the image is average-pooled to ``grid x grid`` (a no-op for 8x8 digits with the
default ``grid=8``), flattened, then ``Linear(C * grid * grid, hidden)``, ReLU (the features),
dropout (rate ``dropout``, default 0: the identity) and the classifier ``Linear(hidden, K)``.
PyTorch's default (uniform, fan-in) initialisation.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.models._common import check_dropout as _check_dropout
from noisybench.models._common import check_sizes

__all__ = ["SmallMLP", "small_mlp"]


class SmallMLP(nn.Module):
    """See the module docstring."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        hidden: int = 128,
        grid: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.grid = grid
        self.fc = nn.Linear(in_channels * grid * grid, hidden)
        self.relu = nn.ReLU()
        self.num_features = hidden
        self.drop = nn.Dropout(dropout)  # always present (p may be 0): MC dropout sets p
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Hidden features ``(N, hidden)``."""
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.adaptive_avg_pool2d(x, self.grid)
        return self.relu(self.fc(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.forward_features(x)))


def small_mlp(
    num_classes: int,
    in_channels: int = 3,
    hidden: int = 128,
    grid: int = 8,
    dropout: float = 0.0,
) -> SmallMLP:
    """BatchNorm-free MLP over the ``grid x grid`` average-pooled image.

    Args:
        num_classes: number of logits.
        in_channels: input channels (1 for the digits).
        hidden: width of the hidden layer.
        grid: side the image is average-pooled to before flattening.
        dropout: dropout rate on the features, before the classifier (0, the default: none,
            so outputs stay independent of the batch and of the RNG; an MC-dropout teacher,
            issue 27, keeps it on at prediction).
    """
    check_sizes("small_mlp", num_classes, in_channels)
    for what, value in (("hidden", hidden), ("grid", grid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"small_mlp: {what} must be a positive integer, got {value!r}; "
                f"set model.{what}=... to e.g. {128 if what == 'hidden' else 8}"
            )
    _check_dropout("small_mlp", dropout)
    return SmallMLP(num_classes, in_channels, hidden, grid, float(dropout))
