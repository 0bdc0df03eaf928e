"""Small helpers shared by the architecture modules."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from noisybench.errors import UserError

__all__ = ["INPUT_STATS", "check_input_stats", "check_sizes", "init_he_fan_out", "load_weights"]


def check_sizes(model: str, num_classes: int, in_channels: int) -> None:
    """Reject class or channel counts that cannot build a network (one-line UserError)."""
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{model}: {what} must be a positive integer, got {value!r}")


def check_dropout(model: str, dropout: float) -> None:
    """A dropout rate must be a number in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(
            f"{model}: dropout must be a number in [0, 1), got {dropout!r}; "
            "set model.dropout=... to e.g. 0.2 (0: no dropout)"
        )


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


INPUT_STATS = ("auto", "dataset", "imagenet")


def check_input_stats(model: str, input_stats: str) -> str:
    """Validate a model's ``input_stats`` option (see :func:`noisybench.data.views.input_stats`)."""
    if input_stats not in INPUT_STATS:
        raise UserError(
            f"{model}: input_stats={input_stats!r} is unknown; use one of {list(INPUT_STATS)}"
        )
    return input_stats


def load_weights(model: str, path: str | Path) -> dict[str, Tensor]:
    """Read a local state-dict file (offline; ``torch.load`` with ``weights_only=True``).

    Accepts a plain state dict or a checkpoint holding one under ``"state_dict"`` or
    ``"model"``. Raises a one-line :class:`UserError` when the file is missing or unreadable.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"{model}: model.weights file {file} does not exist; give the path of a "
            "local state-dict file or set model.weights=null"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle of non-tensor objects, ...
        raise UserError(
            f"{model}: cannot read model.weights file {file} ({type(err).__name__}); "
            "give a state dict saved with torch.save"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"{model}: model.weights file {file} holds no state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    return state


def load_into(model: str, module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line :class:`UserError` on any mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise UserError(
            f"{model}: the weights in {source} do not fit the network ({detail}); "
            "use weights saved from the same architecture and image_size"
        ) from err
