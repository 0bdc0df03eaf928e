"""Model architectures, registered by their config files.

The config file is the registration: ``conf/model/NAME.yaml`` holds ``name: NAME``, a
``_target_`` naming the builder function and the builder's keyword arguments. Every builder
has the signature ``builder(num_classes: int, in_channels: int = 3, **options) -> nn.Module``
and the module it returns maps a normalised float batch ``(N, C, H, W)`` to logits ``(N, K)``.
The run instantiates ``cfg.model`` without its ``name`` key as
``instantiate(cfg, num_classes=K, in_channels=C)``; :func:`create_model` does the same from
plain Python, so one YAML file registers a model for both.

Every network here also exposes ``forward_features(x) -> (N, D)`` (the pooled penultimate
representation), ``num_features == D`` and ``head`` (the final ``nn.Linear``), so a method that
needs embeddings does not have to know the architecture.

Adding a model: write ``noisybench/models/<module>.py`` with a builder of the signature above
and add ``conf/model/<name>.yaml``; ``tests/test_models.py`` then builds it automatically.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from noisybench.errors import UserError

__all__ = ["available_models", "conf_dir", "create_model"]


def conf_dir() -> Path:
    """The config directory (:func:`noisybench.config.conf_dir`)."""
    from noisybench.config import conf_dir as _conf_dir

    return _conf_dir()


def available_models() -> list[str]:
    """Names of all registered models: the stems of ``conf/model/*.yaml``, sorted."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def create_model(name: str, num_classes: int, in_channels: int = 3, **overrides: Any) -> nn.Module:
    """Build the model registered as ``conf/model/<name>.yaml``.

    Args:
        name: a registered model name, e.g. ``"preact_resnet18"`` (see
            :func:`available_models`).
        num_classes: number of output logits K.
        in_channels: channels of the input images (1 for the digits, 3 for colour images).
        **overrides: replace the keyword arguments given in the YAML file (e.g.
            ``imagenet_stem=True``).

    Raises:
        UserError: unknown model name, or an override the builder does not accept.

    Example:
        >>> model = create_model("resnet50", num_classes=100)
    """
    from hydra.errors import InstantiationException
    from hydra.utils import get_method, instantiate
    from omegaconf import OmegaConf

    if not (conf_dir() / "model").is_dir():
        raise UserError(
            f"no model configs at {conf_dir() / 'model'}: reinstall noisybench (pip install .), "
            "whose package carries its conf/ directory"
        )
    names = available_models()
    if name not in names:
        raise UserError(
            f"unknown model {name!r}: choose one of {', '.join(names)}, "
            f"or register it by adding {conf_dir() / 'model' / (name + '.yaml')}"
        )
    cfg = OmegaConf.load(conf_dir() / "model" / f"{name}.yaml")
    cfg.pop("name", None)
    from noisybench.safety import check_target

    check_target(cfg._target_, f"model {name}: _target_")  # before get_method imports it
    builder = get_method(cfg._target_)
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options = [
        p for p in params if p not in ("num_classes", "in_channels") and not p.startswith("_")
    ]
    for key in overrides:
        if not takes_any and key not in params:
            valid = f"use one of {', '.join(options)}" if options else "it takes no options"
            raise UserError(f"model {name!r} has no option {key!r}: {valid}")
    try:
        return instantiate(cfg, num_classes=num_classes, in_channels=in_channels, **overrides)
    except InstantiationException as err:
        # Hydra wraps every error raised by the builder; give the user's error back unwrapped.
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
