"""DenseNet-121/169/201 (Huang et al. 2017, "Densely Connected Convolutional Networks", CVPR;
the DenseNet-BC models of Table 1), with the BSD paper's small-image stem.

DenseNet-BC: growth rate k = 32; every dense layer is a bottleneck
``BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k)`` whose k new feature maps are concatenated to all
earlier ones in the block; transitions between blocks are ``BN-ReLU-Conv1x1-AvgPool2x2`` with
compression 0.5 (halving the channels). Blocks of (6, 12, 24, 16), (6, 12, 32, 32) and
(6, 12, 48, 32) layers give DenseNet-121, -169 and -201. After the last block: BN, ReLU,
global average pooling, linear classifier.

Stem (BSD paper, Appendix A.1: "a 3x3 convolution instead of the usual 7x7 convolution for all
datasets except ImageNet"): by default a 3x3 stride-1 convolution to 2k = 64 channels, then
BN + ReLU and no max-pool, so a 32x32 image reaches the four blocks at 32/16/8/4 pixels.
``imagenet_stem=True`` gives the original 7x7 stride-2 convolution + BN + ReLU + 3x3 stride-2
max-pool. Convolutions use He-normal (fan-out) initialisation, linear biases start at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisybench.models._common import check_sizes, init_he_fan_out

__all__ = ["DenseNet", "densenet121", "densenet169", "densenet201"]


class DenseLayer(nn.Module):
    """Bottleneck dense layer: k new maps from the concatenation of all earlier maps."""

    def __init__(self, in_planes: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, bottleneck * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, dim=1)
        x = self.conv1(self.relu1(self.bn1(x)))
        return self.conv2(self.relu2(self.bn2(x)))


class DenseBlock(nn.Module):
    """``n`` dense layers; outputs the input concatenated with every layer's k new maps."""

    def __init__(self, n: int, in_planes: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_planes + i * growth, growth, bottleneck) for i in range(n)
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, out_planes, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class DenseNet(nn.Module):
    """DenseNet-BC.

    Args:
        blocks: dense layers per block.
        num_classes: number of logits.
        in_channels: input image channels.
        growth: growth rate k (32 in Huang et al. 2017 for the ImageNet models).
        compression: transition compression theta (0.5 for "-BC").
        bottleneck: width multiple of the 1x1 bottleneck (4, giving 4k channels).
        imagenet_stem: use the original 7x7/2 convolution + 3x3/2 max-pool stem.
    """

    def __init__(  # noqa: PLR0913
        self,
        blocks: tuple[int, ...],
        num_classes: int,
        in_channels: int = 3,
        growth: int = 32,
        compression: float = 0.5,
        bottleneck: int = 4,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        planes = 2 * growth
        if imagenet_stem:
            stem: list[nn.Module] = [
                nn.Conv2d(in_channels, planes, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
        else:
            stem = [
                nn.Conv2d(in_channels, planes, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
            ]
        self.stem = nn.Sequential(*stem)
        body: list[nn.Module] = []
        for i, n in enumerate(blocks):
            body.append(DenseBlock(n, planes, growth, bottleneck))
            planes += n * growth
            if i < len(blocks) - 1:
                out = int(planes * compression)
                body.append(Transition(planes, out))
                planes = out
        self.body = nn.Sequential(*body)
        self.final_bn = nn.BatchNorm2d(planes)
        self.final_relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = planes
        self.head = nn.Linear(planes, num_classes)
        init_he_fan_out(self, zero_linear_bias=True)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(N, num_features)``."""
        x = self.final_relu(self.final_bn(self.body(self.stem(x))))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _build(
    name: str, blocks: tuple[int, ...], num_classes: int, in_channels: int, imagenet_stem: bool
) -> DenseNet:
    check_sizes(name, num_classes, in_channels)
    return DenseNet(blocks, num_classes, in_channels, imagenet_stem=bool(imagenet_stem))


def densenet121(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> DenseNet:
    """DenseNet-121 (BC, k = 32): blocks (6, 12, 24, 16); 1024 features."""
    return _build("densenet121", (6, 12, 24, 16), num_classes, in_channels, imagenet_stem)


def densenet169(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> DenseNet:
    """DenseNet-169 (BC, k = 32): blocks (6, 12, 32, 32); 1664 features."""
    return _build("densenet169", (6, 12, 32, 32), num_classes, in_channels, imagenet_stem)


def densenet201(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> DenseNet:
    """DenseNet-201 (BC, k = 32): blocks (6, 12, 48, 32); 1920 features."""
    return _build("densenet201", (6, 12, 48, 32), num_classes, in_channels, imagenet_stem)
