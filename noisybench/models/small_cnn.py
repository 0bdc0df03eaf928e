"""A small CNN for the 8x8 digits quickstart (not from the BSD paper).

Purpose: a CPU-speed stand-in for the paper's networks that is still over-parameterised
enough to *memorise* noisy labels, so that the quickstart reproduces the qualitative effect the
paper studies (cross-entropy fits the flipped labels and its test accuracy falls, Fig. 5).
With the defaults (76,554 parameters for 10 classes) Adam fits every one of 1,300 digits under
50% symmetric noise, flipped labels included, within about 50 epochs on un-augmented inputs,
and one forward+backward pass on a batch of 128 takes a few milliseconds on a laptop CPU.

Layout for an 8x8 input (``w`` = ``width``, ``h`` = ``hidden``):

1. 2x2 stride-2 convolution ("patchify", 8x8 -> 4x4, ``w`` maps), BN, ReLU;
2. 3x3 convolution (``w`` -> ``w``, 4x4), BN, ReLU;
3. flatten the 4x4x``w`` grid (larger inputs are first average-pooled to 4x4), linear to ``h``,
   BN, ReLU -- these are the features;
4. dropout (rate ``dropout``, default 0: the identity), linear classifier ``h`` -> K.

The flattening layer holds most of the parameters: it gives the network position-specific
capacity (enough to memorise), while the two small convolutions keep the per-step cost low.
Convolutions use He-normal (fan-out) initialisation.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.models._common import check_dropout as _check_dropout
from noisybench.models._common import check_sizes, init_he_fan_out

__all__ = ["SmallCNN", "small_cnn"]

_GRID = 4  # spatial size of the grid that is flattened


class SmallCNN(nn.Module):
    """See the module docstring."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 32,
        hidden: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 2, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * _GRID * _GRID, hidden, bias=False)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.num_features = hidden
        self.drop = nn.Dropout(dropout)  # always present (p may be 0): MC dropout sets p
        self.head = nn.Linear(hidden, num_classes)
        init_he_fan_out(self, zero_linear_bias=False)

    def forward_features(self, x: Tensor) -> Tensor:
        """Hidden features ``(N, hidden)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        if x.shape[-2:] != (_GRID, _GRID):
            x = F.adaptive_avg_pool2d(x, _GRID)
        return self.relu(self.bn3(self.fc(x.flatten(1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.forward_features(x)))


def small_cnn(
    num_classes: int,
    in_channels: int = 3,
    width: int = 32,
    hidden: int = 128,
    dropout: float = 0.0,
) -> SmallCNN:
    """Small CNN for 8x8 images (the digits quickstart); any input of at least 2x2 works.

    Args:
        num_classes: number of logits.
        in_channels: input channels (1 for the digits).
        width: channels of the two convolutions.
        hidden: width of the fully connected feature layer.
        dropout: dropout rate on the features, before the classifier (0: none; an MC-dropout
            teacher, issue 27, keeps it on at prediction).
    """
    check_sizes("small_cnn", num_classes, in_channels)
    for what, value in (("width", width), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"small_cnn: {what} must be a positive integer, got {value!r}; "
                f"set model.{what}=... to e.g. 32"
            )
    _check_dropout("small_cnn", dropout)
    return SmallCNN(num_classes, in_channels, width, hidden, float(dropout))
