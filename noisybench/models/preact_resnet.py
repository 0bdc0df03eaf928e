"""Pre-activation ResNet-18 for small images (He et al. 2016, "Identity Mappings in Deep
Residual Networks", ECCV), the network of the label-noise literature (DivideMix, CSOT, DULC)
and of the BSD paper's Table 4 (lower half, "PreAct ResNet-18").

CIFAR variant: a single 3x3 stride-1 stem convolution (no BatchNorm, no max-pool: the first
block's pre-activation normalises it), four stages of two pre-activation basic blocks with
64/128/256/512 channels and strides 1/2/2/2, a final BatchNorm-ReLU (the blocks leave their
sum un-activated), global average pooling and a linear classifier. On 32x32 input the stages
work at 32/16/8/4 pixels.

Pre-activation block (He et al. 2016, Fig. 1(b) / Eq. 3): ``x + F(x)`` with
``F = conv3x3 . ReLU . BN . conv3x3 . ReLU . BN``; nothing follows the addition, so the
identity path is clean. Where the shape changes, the projection shortcut (1x1 convolution, no
BatchNorm) takes the *pre-activated* input ``ReLU(BN(x))``, as in the authors' Torch code and
the label-noise reference implementations.

Initialisation: PyTorch's defaults, as in the reference code of DivideMix/CSOT.

Two variants, by name:

``preact_resnet18``
    He et al. 2016b's network as described above: bare stem convolution, final BN-ReLU.
``preact_resnet18_dividemix``
    DivideMix's ``PreResNet18`` (``PreResNet.py`` of Li et al.'s DivideMix code, also used
    unchanged by CSOT and most of the BSD paper's Table 4 comparisons). Exactly two
    differences: the stem is conv3x3 -> BatchNorm -> ReLU (so the first block's BN-ReLU sees
    an already activated input), and there is NO final BatchNorm-ReLU: the last block's
    un-activated sum is average-pooled and fed to the linear layer. Blocks, shortcuts (1x1
    convolution on the pre-activated input, no BN) and widths are the same. For 10 classes it
    has 11,171,274 parameters (He's: 11,172,170; +128 stem BN, -1,024 final BN). DivideMix
    pools with ``avg_pool2d(4)``, which equals the global average used here on 32x32 input.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisybench.models._common import check_sizes

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18", "preact_resnet18_dividemix"]


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``out = shortcut + conv(ReLU(BN(conv(ReLU(BN(x))))))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        # Dropout between the two convolutions (Wide ResNets, Zagoruyko & Komodakis 2016).
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        return self.conv2(self.dropout(out)) + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet with basic blocks and a 3x3 small-image stem.

    Args:
        blocks: number of blocks in each of the four stages (``(2, 2, 2, 2)`` for depth 18).
        num_classes: number of logits.
        in_channels: input image channels.
        stem_bn: BatchNorm-ReLU after the stem convolution (DivideMix's ``PreResNet18``).
        final_bn: BatchNorm-ReLU after the last stage (He et al. 2016b).
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        stem_bn: bool = False,
        final_bn: bool = True,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.stem: nn.Module = (
            nn.Sequential(conv, nn.BatchNorm2d(64), nn.ReLU(inplace=True)) if stem_bn else conv
        )
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride, n in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks, strict=True):
            layers = []
            for i in range(n):
                layers.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final_bn: nn.Module = nn.BatchNorm2d(in_planes) if final_bn else nn.Identity()
        self.final_relu: nn.Module = nn.ReLU(inplace=True) if final_bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.head = nn.Linear(in_planes, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(N, 512)``."""
        x = self.stages(self.stem(x))
        x = self.final_relu(self.final_bn(x))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def preact_resnet18(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """PreAct ResNet-18 for small images (He et al. 2016b; BSD paper Table 4).

    11.17M parameters for 10 classes.
    """
    check_sizes("preact_resnet18", num_classes, in_channels)
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


def preact_resnet18_dividemix(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """DivideMix's ``PreResNet18`` (Li et al. 2020): stem BN-ReLU, no final BN-ReLU (see the
    module docstring); the network of the BSD paper's Table 4 (lower) comparisons.

    11.17M parameters (11,171,274) for 10 classes.
    """
    check_sizes("preact_resnet18_dividemix", num_classes, in_channels)
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, stem_bn=True, final_bn=False)
