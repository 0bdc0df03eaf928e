"""torchvision (and timm) classification models by name: ``model=torchvision
model.arch=resnet18`` builds with the engine's ``num_classes`` and ``in_channels`` (the plain
torchvision builder refuses ``in_channels``), and ``small_input_stem`` swaps the ImageNet stem
for the CIFAR one (3x3 stride 1, no max-pool; BSD paper App. A.1)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from noisybench.config import compose
from noisybench.errors import UserError
from noisybench.models.external import timm_model, torchvision_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_with_one_channel_and_the_cifar_stem() -> None:
    model = torchvision_model(10, 1, "resnet18", small_input_stem=True)
    reference = torchvision.models.resnet18(num_classes=10)
    # conv1: 7x7x3x64 weights replaced by 3x3x1x64 (no bias); everything else identical
    assert _count(model) == _count(reference) - 7 * 7 * 3 * 64 + 3 * 3 * 1 * 64
    assert isinstance(model.maxpool, nn.Identity)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    out = model.eval()(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10)
    # the ImageNet stem would leave an 8x8 image 2x2 after conv1 and 1x1 after the max-pool;
    # the CIFAR stem keeps 8x8 into layer1
    feats = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)(
        torch.zeros(1, 1, 8, 8)
    )
    assert feats.shape[-2:] == (8, 8)


def test_channels_adapted_without_changing_the_stem() -> None:
    model = torchvision_model(7, 1, "resnet18")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert model.conv1.in_channels == 1 and isinstance(model.maxpool, nn.MaxPool2d)
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 7)


def test_unknown_arch_is_one_line() -> None:
    with pytest.raises(UserError, match=r"model.arch=resnet19 is not a torchvision"):
        torchvision_model(10, 3, "resnet19")


def test_config_chooses_the_arch() -> None:
    cfg = compose(["model=torchvision", "model.arch=mobilenet_v3_small"])
    assert cfg.model.name == "torchvision" and cfg.model.arch == "mobilenet_v3_small"


def test_timm_missing_or_present() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install timm"):
            timm_model(10, 3, "resnet18")
    else:
        assert timm_model(10, 1, "resnet18").eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
