"""Inception-ResNet-v2 (Szegedy et al., AAAI 2017), the mini-WebVision network of DivideMix,
ELR+ and UNICON.

"Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning" defines the
network by its figures: a stem down to 35 x 35, Inception-ResNet-A blocks at 35 x 35 (Fig. 16),
Reduction-A (Fig. 7) to 17 x 17, Inception-ResNet-B blocks (Fig. 17), Reduction-B (Fig. 18) to
8 x 8, Inception-ResNet-C blocks (Fig. 19), average pooling, dropout and the classifier
(Fig. 15). Each residual block adds its branches' concatenation, brought back to the trunk's
width by a linear 1 x 1 convolution and scaled down (Sec. 3.3: 0.17, 0.10, 0.20 for A, B, C),
to its input, then applies a ReLU; the last C block has no ReLU (and, in the released network,
no scaling: factor 1.0).

The field does not train the network of the paper's figures but the one Google released with
the ImageNet checkpoint (TF-slim ``inception_resnet_v2``), which every PyTorch port follows
(Cadene's ``pretrainedmodels``, timm, and the copies in DivideMix's and ELR+'s code): its stem
ends in a 4-branch "Mixed_5b" module of width 320 (the figures' stem ends at 384), the blocks
repeat 10, 20 and 10 times (Fig. 15 draws 5, 10 and 5) with the widths below, and BatchNorm
uses TensorFlow's epsilon 1e-3. That is the network built here; with 1000 classes it has
55,843,464 parameters, as the ports (``tests/test_models_inception_resnet_v2.py`` derives the
count by hand and from a transcription of the reference module).

Every convolution is unpadded ("V" in the figures) where the released network's is, so the
spatial sides are 299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35 (stem), 17 (Reduction-A),
8 (Reduction-B): a 299 x 299 crop ends in an 8 x 8 x 1536 map. The smallest input that reaches
the end is 75 x 75; smaller images raise a one-line :class:`UserError`. Pooling is global
(DivideMix's ``AvgPool2d(8)`` equals it at 299, ELR+'s ``AdaptiveAvgPool2d`` at any size).

Initialisation is PyTorch's default, as in DivideMix's and ELR+'s code, which train this
network from scratch on mini-WebVision. ``dropout`` is 0 there (the paper's Fig. 15 keeps 0.8 of
the units: ``dropout=0.2``).

``weights=PATH`` reads a local state dict (nothing is downloaded) in this module's layout or in
Cadene's / timm's (``conv2d_1a.conv.weight``, ``repeat.0.branch1.1.bn.bias``, ... with the
classifier ``last_linear`` or ``classif``, 1000 or 1001 outputs); every tensor but the
classifier must be present and fit, and the head is a fresh ``num_classes``-way layer. The
ported ImageNet weights expect inputs scaled to [-1, 1] (mean = std = 0.5):
``input_stats="auto"`` selects that normalisation when ``weights`` is set.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.models._common import (
    INPUT_STATS,
    check_dropout,
    check_sizes,
    load_into,
    load_weights,
)

__all__ = [
    "MIN_SIDE",
    "Branches",
    "ConvUnit",
    "InceptionResNetV2",
    "ResidualInception",
    "inception_resnet_v2",
    "reference_key",
]

NAME = "inception_resnet_v2"
MIN_SIDE = 75  # the smallest square input whose last 3 x 3 stride-2 reduction still has a pixel
NUM_FEATURES = 1536
STATS = (*INPUT_STATS, "inception")  # "inception": mean = std = 0.5, the ported checkpoint's

# One convolution unit: (out channels, kernel, stride, padding); kernel/padding may be (h, w).
Spec = tuple[int, int | tuple[int, int], int, int | tuple[int, int]]


class ConvUnit(nn.Module):
    """Convolution without bias, BatchNorm (TensorFlow's eps 1e-3), ReLU: the paper's
    convolution boxes, each followed by batch normalisation (Sec. 3.2)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def chain(cin: int, *units: Spec) -> nn.Sequential:
    """A branch: convolution units applied one after the other, starting from ``cin``."""
    layers: list[nn.Module] = []
    for cout, kernel, stride, padding in units:
        layers.append(ConvUnit(cin, cout, kernel, stride, padding))
        cin = cout
    return nn.Sequential(*layers)


def pooled(pool: nn.Module, *rest: nn.Module) -> nn.Sequential:
    """A branch that starts with a pooling layer (Figs. 7, 18 and the stem's last module)."""
    return nn.Sequential(pool, *rest)


class Branches(nn.Module):
    """Parallel paths on the same input, concatenated along the channels (an Inception
    module: Mixed_5b, Reduction-A, Reduction-B, and the inside of each residual block)."""

    def __init__(self, *paths: nn.Module) -> None:
        super().__init__()
        self.paths = nn.ModuleList(paths)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([path(x) for path in self.paths], dim=1)


class ResidualInception(nn.Module):
    """``relu(x + scale * project(concat(paths(x))))`` (Figs. 16, 17, 19 with the scaling of
    Sec. 3.3 / Fig. 20); ``project`` is a linear 1 x 1 convolution with bias and no BatchNorm
    (the "1x1 Conv (linear)" boxes); ``relu=False`` for the network's last block."""

    def __init__(
        self, mix: Branches, inner: int, width: int, scale: float, relu: bool = True
    ) -> None:
        super().__init__()
        self.mix = mix
        self.project = nn.Conv2d(inner, width, 1, bias=True)
        self.scale = float(scale)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        out = torch.add(x, self.project(self.mix(x)), alpha=self.scale)
        return torch.relu(out) if self.relu else out


def _stem(cin: int) -> nn.Sequential:
    """299 x 299 x cin -> 35 x 35 x 320: five convolutions, two max-pools, then Mixed_5b
    (96 + 64 + 96 + 64 channels)."""
    return nn.Sequential(
        ConvUnit(cin, 32, 3, stride=2),  # 149
        ConvUnit(32, 32, 3),  # 147
        ConvUnit(32, 64, 3, padding=1),  # 147
        nn.MaxPool2d(3, stride=2),  # 73
        ConvUnit(64, 80, 1),
        ConvUnit(80, 192, 3),  # 71
        nn.MaxPool2d(3, stride=2),  # 35
        Branches(
            chain(192, (96, 1, 1, 0)),
            chain(192, (48, 1, 1, 0), (64, 5, 1, 2)),
            chain(192, (64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)),
            pooled(
                nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                ConvUnit(192, 64, 1),
            ),
        ),
    )


def _block_a() -> ResidualInception:
    """Inception-ResNet-A on 35 x 35 x 320 (Fig. 16): paths of 32, 32 and 64 channels."""
    mix = Branches(
        chain(320, (32, 1, 1, 0)),
        chain(320, (32, 1, 1, 0), (32, 3, 1, 1)),
        chain(320, (32, 1, 1, 0), (48, 3, 1, 1), (64, 3, 1, 1)),
    )
    return ResidualInception(mix, 32 + 32 + 64, 320, scale=0.17)


def _reduction_a() -> Branches:
    """Reduction-A (Fig. 7, k=256, l=256, m=384, n=384): 35 x 35 x 320 -> 17 x 17 x 1088."""
    return Branches(
        chain(320, (384, 3, 2, 0)),
        chain(320, (256, 1, 1, 0), (256, 3, 1, 1), (384, 3, 2, 0)),
        nn.MaxPool2d(3, stride=2),
    )


def _block_b() -> ResidualInception:
    """Inception-ResNet-B on 17 x 17 x 1088 (Fig. 17): a 1 x 1 path and a 1x7 / 7x1 path."""
    mix = Branches(
        chain(1088, (192, 1, 1, 0)),
        chain(1088, (128, 1, 1, 0), (160, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0))),
    )
    return ResidualInception(mix, 192 + 192, 1088, scale=0.10)


def _reduction_b() -> Branches:
    """Reduction-B (Fig. 18): 17 x 17 x 1088 -> 8 x 8 x (384 + 288 + 320 + 1088 = 2080)."""
    return Branches(
        chain(1088, (256, 1, 1, 0), (384, 3, 2, 0)),
        chain(1088, (256, 1, 1, 0), (288, 3, 2, 0)),
        chain(1088, (256, 1, 1, 0), (288, 3, 1, 1), (320, 3, 2, 0)),
        nn.MaxPool2d(3, stride=2),
    )


def _block_c(scale: float = 0.20, relu: bool = True) -> ResidualInception:
    """Inception-ResNet-C on 8 x 8 x 2080 (Fig. 19): a 1 x 1 path and a 1x3 / 3x1 path."""
    mix = Branches(
        chain(2080, (192, 1, 1, 0)),
        chain(2080, (192, 1, 1, 0), (224, (1, 3), 1, (0, 1)), (256, (3, 1), 1, (1, 0))),
    )
    return ResidualInception(mix, 192 + 256, 2080, scale=scale, relu=relu)


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2 as released with Google's ImageNet checkpoint (see the module
    docstring): stem, 10 x A, Reduction-A, 20 x B, Reduction-B, 10 x C (the last without
    ReLU or scaling), a 1 x 1 convolution to 1536 channels, global average pooling, dropout,
    linear."""

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = _stem(in_channels)
        self.blocks_a = nn.Sequential(*(_block_a() for _ in range(10)))
        self.reduction_a = _reduction_a()
        self.blocks_b = nn.Sequential(*(_block_b() for _ in range(20)))
        self.reduction_b = _reduction_b()
        # the tenth C block: no ReLU and no down-scaling (TF-slim's ``block8(net,
        # activation_fn=None)`` keeps its default scale 1.0, as do all the ports)
        self.blocks_c = nn.Sequential(*(_block_c() for _ in range(9)))
        self.blocks_c.append(_block_c(scale=1.0, relu=False))
        self.final = ConvUnit(2080, NUM_FEATURES, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features = NUM_FEATURES
        self.head = nn.Linear(NUM_FEATURES, num_classes)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last 1536-channel map (8 x 8 for a 299 x 299 input), before pooling."""
        height, width = x.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise UserError(
                f"{NAME}: images of {height}x{width} pixels are too small (at least "
                f"{MIN_SIDE}x{MIN_SIDE}; the protocol's crop is 299): set "
                "dataset.reader.image_size=299 or use a network for small images"
            )
        x = self.reduction_a(self.blocks_a(self.stem(x)))
        x = self.reduction_b(self.blocks_b(x))
        return self.final(self.blocks_c(x))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_map(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.forward_features(x)))


# ------------------------------------------------------------------------------------------
# Cadene's / timm's state-dict layout

_TOP = {  # their top-level module -> ours
    "conv2d_1a": "stem.0",
    "conv2d_2a": "stem.1",
    "conv2d_2b": "stem.2",
    "conv2d_3b": "stem.4",
    "conv2d_4a": "stem.5",
    "mixed_5b": "stem.7",
    "repeat": "blocks_a",
    "mixed_6a": "reduction_a",
    "repeat_1": "blocks_b",
    "mixed_7a": "reduction_b",
    "repeat_2": "blocks_c",
    "block8": "blocks_c.9",
    "conv2d_7b": "final",
}
_HEADS = ("last_linear.", "classif.", "head.", "fc.")
_RESIDUAL = ("repeat", "repeat_1", "repeat_2", "block8")
_BRANCH = re.compile(r"branch(\d+)\.(\d+\.)?")


def reference_key(key: str) -> str:
    """This module's name for a key of Cadene's / timm's InceptionResNetV2 state dict.

    Their residual blocks hold ``branchN`` and the linear 1 x 1 ``conv2d``; here they are
    ``mix.paths.N`` and ``project``. A branch that is a single unit there (``branch0.conv``)
    is a one-element Sequential here (``paths.0.0.conv``).
    """
    top, _, rest = key.partition(".")
    if top not in _TOP:
        raise KeyError(key)
    if top in ("repeat", "repeat_1", "repeat_2"):
        index, _, rest = rest.partition(".")
        top_new = f"{_TOP[top]}.{index}"
    else:
        top_new = _TOP[top]
    paths = "mix.paths." if top in _RESIDUAL else "paths."
    rest = _BRANCH.sub(lambda m: f"{paths}{m.group(1)}.{m.group(2) or '0.'}", rest, count=1)
    if top in _RESIDUAL and rest.startswith("conv2d."):
        rest = "project." + rest.removeprefix("conv2d.")
    return f"{top_new}.{rest}"


def _backbone_state(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The file's tensors without its classifier, renamed to this module's layout."""
    body = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
    if not any(k.startswith("conv2d_1a.") for k in body):
        return body  # already this module's layout
    try:
        return {reference_key(k): v for k, v in body.items()}
    except KeyError as err:
        raise UserError(
            f"{NAME}: the weights in {source} hold {err.args[0]!r}, which is not part of "
            "Cadene's / timm's InceptionResNetV2; use that network's ImageNet state dict"
        ) from None


def _resolve_stats(input_stats: str, weights: str | None) -> str:
    """``"auto"``: the ported checkpoint's [-1, 1] scaling with weights, the dataset's
    statistics without (training from scratch, as DivideMix and ELR+)."""
    kind = input_stats
    if kind not in STATS:
        raise UserError(f"{NAME}: input_stats={kind!r} is unknown; use one of {list(STATS)}")
    if kind == "auto":
        return "inception" if weights else "dataset"
    return kind


def inception_resnet_v2(
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.0,
    weights: str | None = None,
    input_stats: str = "auto",
) -> InceptionResNetV2:
    """Inception-ResNet-v2 (Szegedy et al. 2017) with a ``num_classes``-way head.

    Args:
        num_classes: number of logits.
        in_channels: image channels (ImageNet weights need 3).
        dropout: rate before the classifier (0 as in DivideMix / ELR+; the paper: 0.2).
        weights: path of a local state dict, this module's or Cadene's / timm's layout; its
            classifier is dropped, the head starts fresh.
        input_stats: ``"auto"`` (mean = std = 0.5 with ``weights``, as the ported
            checkpoint expects; the dataset's otherwise), ``"dataset"``, ``"imagenet"``,
            ``"inception"``.

    Example:
        >>> model = inception_resnet_v2(num_classes=50)  # mini-WebVision
    """
    check_sizes(NAME, num_classes, in_channels)
    check_dropout(NAME, dropout)
    if weights is not None and in_channels != 3:
        raise UserError(
            f"{NAME}: ImageNet weights take RGB images, the dataset has {in_channels} "
            "channel(s); set model.weights=null or use a colour dataset"
        )
    stats = _resolve_stats(input_stats, weights)  # before the (seconds-long) build
    model = InceptionResNetV2(num_classes, in_channels, float(dropout))
    if weights is not None:
        state = _backbone_state(load_weights(NAME, weights), str(weights))
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        load_into(NAME, model, state, str(weights))
    model.input_stats = stats
    return model
