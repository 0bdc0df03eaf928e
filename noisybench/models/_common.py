"""Small helpers shared by the architecture modules."""

from __future__ import annotations

from torch import nn

from noisybench.errors import UserError

__all__ = ["check_sizes", "init_he_fan_out"]


def check_sizes(model: str, num_classes: int, in_channels: int) -> None:
    """Reject class or channel counts that cannot build a network (one-line UserError)."""
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{model}: {what} must be a positive integer, got {value!r}")


def init_he_fan_out(model: nn.Module, zero_linear_bias: bool = True) -> None:
    """He-normal initialisation of every convolution (He et al. 2015, fan-out, ReLU gain).

    BatchNorm scales start at 1 and shifts at 0; linear biases at 0 when asked. The linear
    weights keep PyTorch's default (uniform, fan-in) initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias and m.bias is not None:
            nn.init.zeros_(m.bias)
