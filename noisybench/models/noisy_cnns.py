"""The networks the noisy-label baselines' own papers trained (their reference protocols).

* :func:`coteaching_cnn` -- the 9-layer CNN of Co-teaching (Han et al. 2018, Table 3; code:
  bhanML/Co-teaching ``model.py`` ``CNN``): three blocks of 3x3 convolutions (128, 128, 128 |
  256, 256, 256 | 512, 256, 128; the last three unpadded), each followed by BatchNorm and
  LeakyReLU(0.01), 2x2 max-pooling and 2-D dropout (0.25) after the first two blocks, global
  average pooling, a linear classifier. Convolutions keep their biases (as the code's
  ``nn.Conv2d``). Difference: the code calls ``F.dropout2d(h, p)`` without ``training=``,
  so its dropout also acts at evaluation; here it is an ``nn.Dropout2d`` (off in eval mode).
* :func:`sce_cnn8` -- the 8-layer CNN of SCE (Wang et al. 2019, CIFAR-10; code:
  YisenWang/symmetric_cross_entropy_for_noisy_labels ``models.py``, Keras): conv 64, 64 | 128,
  128 | 196, 196 (3x3, same padding, biased, each BN + ReLU, 2x2 max-pool after each pair),
  flatten, dense 256 + BN + ReLU, dense K. Keras BatchNorm: ``epsilon=1e-3``,
  ``momentum=0.99`` (PyTorch momentum 0.01); He-normal (fan-in) convolutions and dense layers.
  The code's L2 penalty of 0.01 on the first dense layer is a loss term, not part of the model.
* :func:`sce_resnet44` -- SCE's CIFAR-100 network, ``cifar10_resnet(depth=7)`` of the same
  code's ``resnet.py``: a 3x3 conv (16) + BN + ReLU stem, three stages of 7 pre-activation
  residual blocks (16, 32, 64 channels; stride 2 at the first block of stages 2 and 3, whose
  shortcut is a biased 1x1 convolution), BN + ReLU, 8x8 average pooling, dense K: 1 + 42 + 1 =
  44 weight layers (plus two 1x1 shortcuts). The first block skips the pre-activation.

All expose ``forward_features``, ``num_features`` and ``head`` (see :mod:`noisybench.models`).
Their parameter counts are checked against the authors' definitions in
``tests/test_models.py``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.models._common import check_sizes

__all__ = ["SCECNN8", "CoTeachingCNN", "ResNet44SCE", "coteaching_cnn", "sce_cnn8", "sce_resnet44"]


class CoTeachingCNN(nn.Module):
    """See the module docstring."""

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.25) -> None:
        super().__init__()
        widths = [(in_channels, 128, 1), (128, 128, 1), (128, 128, 1)]
        widths += [(128, 256, 1), (256, 256, 1), (256, 256, 1)]
        widths += [(256, 512, 0), (512, 256, 0), (256, 128, 0)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=p) for a, b, p in widths)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _ in widths)
        self.drop = nn.Dropout2d(dropout)
        self.num_features = 128
        self.head = nn.Linear(128, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = F.leaky_relu(bn(conv(x)), negative_slope=0.01)
            if i in (2, 5):
                x = self.drop(F.max_pool2d(x, 2, 2))
        return x.mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _keras_bn(c: int, one_d: bool = False) -> nn.Module:
    return (nn.BatchNorm1d if one_d else nn.BatchNorm2d)(c, eps=1e-3, momentum=0.01)


def _he_fan_in(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SCECNN8(nn.Module):
    """See the module docstring (32x32 inputs: a 4x4x196 grid is flattened)."""

    def __init__(self, num_classes: int, in_channels: int = 3, grid: int = 4) -> None:
        super().__init__()
        chans = [(in_channels, 64), (64, 64), (64, 128), (128, 128), (128, 196), (196, 196)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in chans)
        self.bns = nn.ModuleList(_keras_bn(b) for _, b in chans)
        self.grid = grid
        self.fc = nn.Linear(196 * grid * grid, 256)
        self.bn_fc = _keras_bn(256, one_d=True)
        self.num_features = 256
        self.head = nn.Linear(256, num_classes)
        _he_fan_in(self)

    def forward_features(self, x: Tensor) -> Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = F.relu(bn(conv(x)))
            if i % 2:
                x = F.max_pool2d(x, 2, 2)
        if x.shape[-2:] != (self.grid, self.grid):  # inputs other than 32x32 (digits)
            x = F.adaptive_avg_pool2d(x, self.grid)
        return F.relu(self.bn_fc(self.fc(x.flatten(1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, first: bool) -> None:
        super().__init__()
        self.pre = None if first else _keras_bn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn = _keras_bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.pre is None else F.relu(self.pre(x))
        h = self.conv2(F.relu(self.bn(self.conv1(h))))
        return h + (x if self.shortcut is None else self.shortcut(x))


class ResNet44SCE(nn.Module):
    """See the module docstring."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 7) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.stem_bn = _keras_bn(16)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(depth):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_PreActBlock(cin, cout, stride, first=(stage == 0 and i == 0)))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = _keras_bn(64)
        self.num_features = 64
        self.head = nn.Linear(64, num_classes)
        _he_fan_in(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.stem_bn(self.stem(x))))
        return F.relu(self.bn(x)).mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def coteaching_cnn(num_classes: int, in_channels: int = 3, dropout: float = 0.25) -> CoTeachingCNN:
    """Co-teaching's 9-layer CNN (see the module docstring)."""
    check_sizes("coteaching_cnn", num_classes, in_channels)
    return CoTeachingCNN(num_classes, in_channels, float(dropout))


def sce_cnn8(num_classes: int, in_channels: int = 3) -> SCECNN8:
    """SCE's 8-layer CNN for CIFAR-10 (see the module docstring)."""
    check_sizes("sce_cnn8", num_classes, in_channels)
    return SCECNN8(num_classes, in_channels)


def sce_resnet44(num_classes: int, in_channels: int = 3) -> ResNet44SCE:
    """SCE's ResNet-44 for CIFAR-100 (see the module docstring)."""
    check_sizes("sce_resnet44", num_classes, in_channels)
    return ResNet44SCE(num_classes, in_channels)
