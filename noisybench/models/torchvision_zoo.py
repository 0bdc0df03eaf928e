"""torchvision's ImageNet architectures for the real-noise protocols, with offline weights.

The real-noise tables are produced with ImageNet-pretrained networks: ResNet-50 (Clothing1M,
Food-101N, mini-WebVision in several papers), VGG-19 with BatchNorm (ANIMAL-10N, Song et al.
2019). These are torchvision's own definitions (``torchvision.models.resnet50`` /
``vgg19_bn``, the 7x7 ImageNet stem), so torchvision's published state dicts load unchanged:
``weights=PATH`` (config ``model.weights``) reads a local state-dict file of the 1000-class
network (e.g. ``resnet50-11ad3fa6.pth``), strictly, before the classifier is replaced by a
fresh ``K``-way linear layer. Nothing is downloaded. InceptionResNetV2 (DivideMix's and
ELR+'s WebVision network) is not in torchvision: :mod:`noisybench.models.inception_resnet_v2`.

``input_stats``: ``"auto"`` (ImageNet statistics when ``weights`` is set, the dataset's
otherwise), ``"imagenet"`` or ``"dataset"`` (Clothing1M's protocol normalises with its own
statistics even with pretrained weights); read by :func:`noisybench.data.views.input_stats`.
"""

from __future__ import annotations

from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.models._common import check_input_stats, check_sizes, load_into, load_weights

__all__ = ["TorchvisionNet", "tv_resnet50", "tv_vgg19_bn"]


class TorchvisionNet(nn.Module):
    """A torchvision backbone split into ``forward_features`` and a linear ``head``."""

    def __init__(self, body: nn.Module, features: nn.Module, num_features: int, k: int) -> None:
        super().__init__()
        self.body = body
        self.features_tail = features
        self.num_features = num_features
        self.head = nn.Linear(num_features, k)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features_tail(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _prepare(name: str, net: nn.Module, weights: str | None) -> None:
    if weights is not None:
        load_into(name, net, load_weights(name, weights), str(weights))


def _rgb_weights(name: str, in_channels: int, weights: str | None) -> None:
    if weights is not None and in_channels != 3:
        raise UserError(
            f"{name}: ImageNet weights take RGB images, the dataset has {in_channels} channel(s); "
            "set model.weights=null or use a colour dataset"
        )


def _stats(model: nn.Module, input_stats: str, weights: str | None, name: str) -> None:
    kind = check_input_stats(name, input_stats)
    model.input_stats = ("imagenet" if weights else "dataset") if kind == "auto" else kind


def tv_resnet50(
    num_classes: int, in_channels: int = 3, weights: str | None = None, input_stats: str = "auto"
) -> TorchvisionNet:
    """torchvision's ResNet-50 (He et al. 2016) with a ``num_classes``-way head."""
    from torchvision.models import resnet50

    check_sizes("tv_resnet50", num_classes, in_channels)
    _rgb_weights("tv_resnet50", in_channels, weights)
    net = resnet50(weights=None)
    _prepare("tv_resnet50", net, weights)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    width = net.fc.in_features
    net.fc = nn.Identity()
    model = TorchvisionNet(net, nn.Identity(), width, num_classes)
    _stats(model, input_stats, weights, "tv_resnet50")
    return model


def tv_vgg19_bn(
    num_classes: int, in_channels: int = 3, weights: str | None = None, input_stats: str = "auto"
) -> TorchvisionNet:
    """torchvision's VGG-19 with BatchNorm (Simonyan & Zisserman 2015), ``num_classes``-way
    last layer (the two 4096-wide hidden layers and their dropout are kept)."""
    from torchvision.models import vgg19_bn

    check_sizes("tv_vgg19_bn", num_classes, in_channels)
    _rgb_weights("tv_vgg19_bn", in_channels, weights)
    net = vgg19_bn(weights=None)
    _prepare("tv_vgg19_bn", net, weights)
    if in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    width = net.classifier[-1].in_features
    net.classifier[-1] = nn.Identity()
    model = TorchvisionNet(net, nn.Identity(), width, num_classes)
    _stats(model, input_stats, weights, "tv_vgg19_bn")
    return model
