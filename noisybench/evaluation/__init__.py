"""Evaluation suites (the built-in test metrics, validation accuracy, memorisation and label
recovery; calibration, temperature scaling, corruptions, CIFAR-10-P, OOD, dark knowledge) and
model selection; see :mod:`noisybench.evaluation.base` for the interface and
``python -m noisybench.evaluate`` for finished runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisybench.config import CONF_DIR, instantiate
from noisybench.errors import UserError

if TYPE_CHECKING:
    from noisybench.evaluation.base import (
        EvalContext,
        EvalSuite,
        Metrics,
        Predict,
        Predictor,
        flat_float,
        make_predict,
    )

# The interface (noisybench.evaluation.base) imports torch; it is imported when first used, so
# that the modules of this package that need no torch (selection: the report's epoch rules)
# import without it: `noisybench report` then starts without loading torch.
_BASE = frozenset(
    {"EvalContext", "EvalSuite", "Metrics", "Predict", "Predictor", "flat_float", "make_predict"}
)


def __getattr__(name: str) -> Any:
    if name in _BASE:
        from noisybench.evaluation import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_SUITES",
    "EVAL_CONF_DIR",
    "EvalContext",
    "EvalSuite",
    "Metrics",
    "Predict",
    "Predictor",
    "SuiteRunner",
    "available_suites",
    "build_suites",
    "builtin_suites",
    "flat_float",
    "load_suite",
    "make_predict",
]

EVAL_CONF_DIR = CONF_DIR / "eval"
#: The suites every training run has (:mod:`noisybench.evaluation.builtin`), in record order.
BUILTIN_SUITES = ("test", "val", "memorisation", "recovery")


def available_suites() -> list[str]:
    """The suite names that have a ``conf/eval/<name>.yaml``."""
    return sorted(p.stem for p in EVAL_CONF_DIR.glob("*.yaml"))


def load_suite(
    name: str, overrides: Mapping[str, Any] | None = None, conf_dir: Path | None = None
) -> tuple[EvalSuite, dict[str, Any]]:
    """Build suite ``name`` from ``conf/eval/<name>.yaml`` with ``overrides`` of its keys;
    returns ``(suite, its resolved config)``.

    The training loop can equally build suites from the composed config's
    ``eval.suites.<name>`` nodes (each is such a file under ``@package eval.suites.<name>``)
    with :func:`build_suite`.
    """
    from omegaconf import OmegaConf

    folder = conf_dir or EVAL_CONF_DIR
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"unknown eval suite {name!r}; choose from {', '.join(known)}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(cfg, dict)
    for key, value in (overrides or {}).items():
        if key not in cfg or key == "_target_":
            keys = sorted(k for k in cfg if k != "_target_")
            raise UserError(
                f"eval suite {name} has no setting {key!r}; its settings are {', '.join(keys)}"
            )
        cfg[key] = value
    return build_suite(name, cfg), cfg


def build_suite(name: str, node: Mapping[str, Any]) -> EvalSuite:
    """Instantiate one suite config node (``_target_`` plus constructor arguments)."""
    from noisybench.evaluation.base import EvalSuite

    suite = instantiate(dict(node), f"eval suite {name}")
    if not isinstance(suite, EvalSuite):
        raise UserError(f"eval suite {name}: its _target_ is not a noisybench EvalSuite")
    return suite


def run_suites(suites: Sequence[EvalSuite], predict: Predict, ctx: EvalContext) -> Metrics:
    """Every suite's metrics, merged (keys are prefixed by the suite names)."""
    out: Metrics = {}
    for suite in suites:
        out.update(suite.evaluate(predict, ctx))
    return out


def builtin_suites(
    epochs: int, diagnostics: bool = True, diagnostics_every: int = 1
) -> list[EvalSuite]:
    """The built-in suites of a training run of ``epochs`` epochs, from their
    ``conf/eval/<name>.yaml``: the memorisation diagnostics every ``diagnostics_every`` epochs
    and at the last one, left out when ``diagnostics`` is false (``eval.train_diagnostics``)."""
    settings = {"memorisation": {"every": max(1, int(diagnostics_every)), "epochs": int(epochs)}}
    names = [n for n in BUILTIN_SUITES if diagnostics or n != "memorisation"]
    return [load_suite(name, settings.get(name))[0] for name in names]


def build_suites(nodes: Mapping[str, Mapping[str, Any]] | None) -> list[EvalSuite]:
    """The suites of a composed config's ``eval.suites`` node (``+eval=[calibration,ood]`` on
    the command line, or ``- eval: [...]`` in the defaults list, fills it)."""
    return [build_suite(name, node) for name, node in (nodes or {}).items()]


class SuiteRunner:
    """What the training loop's evaluation callback does with the suites.

    ``after_epoch(epoch, predict)`` runs the suites due after 0-based ``epoch`` (``every > 0``
    and ``(epoch + 1) % every == 0``) and returns their metrics; ``at_end(predict)`` runs every
    suite once on the final model (for evaluation.json). :func:`flat_float` of the result is
    what goes to the per-epoch record and TensorBoard (as ``eval/<key>``).
    """

    def __init__(self, suites: Sequence[EvalSuite], ctx: EvalContext) -> None:
        self.suites, self.ctx = list(suites), ctx

    def after_epoch(self, epoch: int, predict: Predict) -> Metrics:
        return run_suites([s for s in self.suites if s.due(epoch)], predict, self.ctx)

    def record(self, epoch: int, predict: Predict, stage: str) -> Metrics:
        """The metrics of the suites of ``stage`` (:attr:`EvalSuite.stage`) due after
        ``epoch``, keyed as in the epoch's record: a built-in suite's keys as they are
        (``test/acc``), the others' under ``eval/`` (``eval/calibration/ece``)."""
        prefix = "eval/" if stage == "eval" else ""
        out: Metrics = {}
        for suite in self.suites:
            if suite.stage == stage and suite.due(epoch):
                out.update({prefix + k: v for k, v in suite.evaluate(predict, self.ctx).items()})
        return out

    def at_end(self, predict: Predict) -> Metrics:
        return run_suites(self.suites, predict, self.ctx)
