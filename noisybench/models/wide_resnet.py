"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks",
BMVC; Table 1), e.g. WRN-40-1 of the BSD paper's calibration comparison (Appendix, Table 7).

Structure for depth d and widen factor k: a 3x3 stem convolution to 16 channels, three groups
of n = (d - 4) / 6 pre-activation blocks B(3,3) with 16k, 32k and 64k channels and strides
1, 2, 2, then BN-ReLU, global average pooling and a linear classifier. A block is
``x + conv3x3(dropout(ReLU(BN(conv3x3(ReLU(BN(x)))))))``; where the width or resolution
changes, the shortcut is a 1x1 convolution of the pre-activated input ``ReLU(BN(x))`` (as in the
authors' code). Dropout between the two convolutions is the paper's "dropout in the residual
block" (0 disables it). Convolutions use He-normal (fan-out) initialisation, linear biases
start at 0.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.models._common import check_sizes, init_he_fan_out
from noisybench.models.preact_resnet import PreActBlock

__all__ = ["WideBlock", "WideResNet", "wide_resnet", "wide_resnet40_1"]


# A WRN block is the pre-activation basic block B(3,3) with dropout between its convolutions.
WideBlock = PreActBlock


class WideResNet(nn.Module):
    """WRN-depth-widen_factor; see the module docstring for the layout."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_planes = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            planes = width * widen_factor
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.final_bn = nn.BatchNorm2d(in_planes)
        self.final_relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        init_he_fan_out(self, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(N, 64 * widen_factor)``."""
        x = self.final_relu(self.final_bn(self.groups(self.stem(x))))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def wide_resnet(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """Generic WRN-depth-widen_factor (Zagoruyko & Komodakis 2016).

    Raises:
        UserError: depth not of the form 6n + 4, widen factor below 1 or dropout outside [0, 1).
    """
    check_sizes("wide_resnet", num_classes, in_channels)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise UserError(
            f"wide_resnet: depth must be 6n + 4 with n >= 1 (10, 16, 28, 40, ...), got {depth!r}"
        )
    if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
        raise UserError(
            f"wide_resnet: widen_factor must be a positive integer, got {widen_factor!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"wide_resnet: dropout must be in [0, 1), got {dropout!r}")
    return WideResNet(depth, widen_factor, num_classes, in_channels, float(dropout))


def wide_resnet40_1(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-40-1: 6 blocks per group, widths 16/32/64 (BSD paper, Table 7)."""
    return wide_resnet(num_classes, in_channels, depth=40, widen_factor=1, dropout=dropout)
