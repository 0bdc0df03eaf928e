"""Classification models of torchvision and timm, by name (``model=torchvision
model.arch=resnet18``, ``model=timm model.arch=resnet18``): any architecture of those
libraries trains in noisybench without a file of its own.

The engine builds every model with ``num_classes`` and ``in_channels``; the libraries' builders
know only the first, so the first convolution is rebuilt for another channel count (one of
the issue-25 newcomer's failures: ``unexpected keyword argument 'in_channels'``). Their
ImageNet stems (a 7x7 stride-2 convolution and a max-pool) shrink a 32x32 image to 8x8 before
the first block; ``small_input_stem: true`` replaces them with the CIFAR stem the BSD paper
uses for its ResNets (a 3x3 stride-1 convolution, no max-pool, App. A.1).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from noisybench.errors import UserError
from noisybench.models._common import check_sizes

__all__ = ["timm_model", "torchvision_model"]


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent module, attribute name, the first Conv2d in registration order)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise UserError(f"{type(model).__name__} has no Conv2d to adapt to the input channels")


def _adapt(model: nn.Module, arch: str, in_channels: int, small_input_stem: bool) -> nn.Module:
    parent, attr, conv = _first_conv(model)
    if small_input_stem:
        setattr(
            parent,
            attr,
            nn.Conv2d(in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None),
        )
        pools = [n for n, m in model.named_children() if isinstance(m, nn.MaxPool2d)]
        if not pools and not hasattr(model, "maxpool"):
            raise UserError(
                f"{arch}: small_input_stem knows the ResNet-style stem (conv1 + maxpool); "
                "this architecture has another, set model.small_input_stem=false"
            )
        for name in pools:
            setattr(model, name, nn.Identity())
    elif in_channels != conv.in_channels:
        setattr(
            parent,
            attr,
            nn.Conv2d(
                in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                bias=conv.bias is not None,
            ),
        )
    return model


def torchvision_model(
    num_classes: int,
    in_channels: int = 3,
    arch: str = "resnet18",
    small_input_stem: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision classification model by name (``torchvision.models.get_model``),
    untrained, with ``num_classes`` outputs and its first convolution fitted to
    ``in_channels``; ``kwargs`` go to the builder (e.g. ``dropout`` of the ViTs)."""
    import torchvision.models as tvm

    check_sizes(f"torchvision {arch}", num_classes, in_channels)
    names = set(tvm.list_models(module=tvm))
    if arch not in names:
        raise UserError(
            f"model.arch={arch} is not a torchvision classification model; e.g. "
            f"{', '.join(sorted(n for n in names if n.startswith('resnet'))[:4])} "
            "(torchvision.models.list_models() lists them)"
        )
    model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return _adapt(model, arch, in_channels, small_input_stem)


def timm_model(
    num_classes: int,
    in_channels: int = 3,
    arch: str = "resnet18",
    small_input_stem: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A timm model by name (``timm.create_model``), untrained; timm adapts the input
    channels itself (``in_chans``)."""
    try:
        import timm
    except ImportError:
        raise UserError("model=timm needs the timm package: pip install timm") from None
    check_sizes(f"timm {arch}", num_classes, in_channels)
    if arch not in timm.list_models():
        raise UserError(f"model.arch={arch} is not a timm model (timm.list_models() lists them)")
    model = timm.create_model(
        arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return _adapt(model, arch, in_channels, small_input_stem) if small_input_stem else model
