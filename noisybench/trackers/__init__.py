"""Experiment trackers as loggers (``logger=[wandb]``, ``logger=[mlflow]``): one module and one
``conf/logger/<name>.yaml`` each, optional dependencies (``pip install 'noisybench[wandb]'`` /
``'noisybench[mlflow]'``), imported only when a run chooses them.

What they record is what distinguishes runs: the hyperparameters are the run's experiment
identity (:func:`noisybench.config.identity`, the resolved config without paths, devices,
loggers and other keys that do not change results, and without ``_target_`` class paths), and
the metrics are each epoch's numbers of ``result.json``'s history, at step = 1-based epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from noisybench.config import identity
from noisybench.errors import UserError

__all__ = ["epoch_metrics", "experiment_params", "require"]


def experiment_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters that change an experiment, flattened (``method.gamma``, ...)."""
    return {k: v for k, v in identity(config).items() if not k.endswith("_target_")}


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of one epoch's record (``epoch`` itself is the step)."""
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def require(module: str, extra: str) -> Any:
    """Import an optional tracker package, or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"logger={extra} needs the {module} package: pip install 'noisybench[{extra}]' "
            f"(or drop {extra} from logger=[...])"
        ) from None
