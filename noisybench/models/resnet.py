"""ResNet-18/34/50/101/152 (He et al. 2016, "Deep Residual Learning for Image Recognition",
CVPR; Table 1), with the BSD paper's small-image stem.

BSD paper, Appendix A.1 ("Architectures"): "Because of the small size of the images, the
ResNet and DenseNet networks have been modified to include a 3x3 convolution instead of the
usual 7x7 convolution for all datasets except ImageNet." Here the small-image stem is a 3x3
stride-1 convolution + BatchNorm + ReLU with no max-pool, so a 32x32 CIFAR image reaches the
four stages at 32/16/8/4 pixels (64x64 Tiny ImageNet at 64/32/16/8). ``imagenet_stem=True``
gives the original stem (7x7 stride-2 convolution + BatchNorm + ReLU + 3x3 stride-2 max-pool)
for ImageNet.

Blocks are the original post-activation ones: basic (two 3x3 convolutions) for depth 18/34,
bottleneck (1x1 reduce, 3x3, 1x1 expand x4) for depth 50/101/152, ReLU after the addition.
A stage that changes resolution or width uses a projection shortcut (1x1 convolution +
BatchNorm, option B of the paper). In the bottleneck the stride sits on the 3x3 convolution
(the common "v1.5" placement, which the ImageNet parameter count does not depend on).
Stage widths 64/128/256/512 (x4 for bottlenecks), strides 1/2/2/2, global average pooling,
linear classifier. Convolutions use He-normal (fan-out) initialisation.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisybench.models._common import check_sizes, init_he_fan_out

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """1x1 convolution + BatchNorm shortcut where the shape changes, else None (identity)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """``ReLU(shortcut(x) + BN(conv3x3(ReLU(BN(conv3x3(x))))))`` (He et al. 2016, Fig. 5 left)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), each with BN; ReLU after the residual sum
    (He et al. 2016, Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


class ResNet(nn.Module):
    """ResNet with a small-image (3x3, stride 1, no max-pool) or ImageNet stem.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks: number of blocks in each of the four stages.
        num_classes: number of logits.
        in_channels: input image channels.
        imagenet_stem: use the original 7x7/2 convolution + 3x3/2 max-pool stem.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks, strict=True):
            layers = []
            for i in range(n):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        init_he_fan_out(self, zero_linear_bias=False)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(N, 512 * expansion)``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _build(
    name: str,
    block: type[BasicBlock | Bottleneck],
    blocks: tuple[int, int, int, int],
    num_classes: int,
    in_channels: int,
    imagenet_stem: bool,
) -> ResNet:
    check_sizes(name, num_classes, in_channels)
    return ResNet(block, blocks, num_classes, in_channels, imagenet_stem=bool(imagenet_stem))


def resnet18(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2). 11.17M parameters for 10 classes (small stem)."""
    return _build("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, in_channels, imagenet_stem)


def resnet34(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _build("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, in_channels, imagenet_stem)


def resnet50(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); 25,557,032 parameters with the ImageNet
    stem and 1000 classes (He et al. 2016)."""
    return _build("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, in_channels, imagenet_stem)


def resnet101(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-101: bottleneck blocks (3, 4, 23, 3)."""
    return _build("resnet101", Bottleneck, (3, 4, 23, 3), num_classes, in_channels, imagenet_stem)


def resnet152(num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-152: bottleneck blocks (3, 8, 36, 3)."""
    return _build("resnet152", Bottleneck, (3, 8, 36, 3), num_classes, in_channels, imagenet_stem)
