"""The MC-dropout teacher (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016).

A network trained with dropout is an approximate variational posterior over its weights; the
predictive distribution is estimated by keeping dropout on at prediction and averaging the
softmax of ``T`` stochastic forward passes (their Eq. 8, "MC dropout"):
``p(y | x) ~= (1/T) sum_t softmax(f_{W_t}(x))``, each pass with fresh Bernoulli masks.

The teacher run must have been trained with dropout (``++model.dropout=0.2`` on ``small_cnn``
or ``small_mlp``: dropout on the features, before the classifier). The student is built with
*its own* ``model=`` settings, usually without dropout; the teacher's dropout layers get the
rate the teacher run was trained with (read from its ``result.json``, or ``teacher.p``).
Everything else (BatchNorm included) stays in eval mode, as in Gal & Ghahramani's code.

Cost: ``T`` forward passes over the training set, once; no extra memory besides the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import MethodContext
from noisybench.teachers.base import Evaluate, Teacher, TeacherSource, single_network

__all__ = ["DropoutOn", "MCDropoutTeacher", "dropout_layers"]


def dropout_layers(net: nn.Module) -> list[nn.Module]:
    """Every dropout module of ``net`` (``nn.Dropout``, ``Dropout1d/2d/3d``, ...)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


class DropoutOn(nn.Module):
    """Runs ``net`` with its dropout layers in train mode and everything else as it is (eval),
    whatever mode this wrapper is put in (``Trainer.evaluate_train`` calls ``eval()``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        layers = dropout_layers(self.net)
        modes = [m.training for m in layers]
        for m in layers:
            m.train()
        try:
            return self.net(x)
        finally:
            for m, mode in zip(layers, modes, strict=True):
                m.train(mode)


def _trained_rate(source: TeacherSource) -> float | None:
    path = source.run / "result.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())["config"]
        return float(config["model"]["dropout"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MCDropoutTeacher(Teacher):
    """``samples`` stochastic passes of the teacher run's network with dropout on.

    Args:
        samples: ``T``, passes per sample (Gal & Ghahramani use tens; default 30).
        p: dropout rate at prediction; ``None`` (default): the rate the teacher was trained
            with (``model.dropout`` in its ``result.json``).
        seed, store: see :class:`~noisybench.teachers.base.Teacher`.
    """

    kind = "mc_dropout"

    def __init__(
        self, samples: int = 30, p: float | None = None, seed: int = 0, store: bool = True
    ) -> None:
        super().__init__(samples=samples, seed=seed, store=store)
        if p is not None and not 0 < float(p) < 1:
            raise UserError(f"method.teacher.p={p!r} must be in (0, 1); use e.g. 0.2 or null")
        self.p = None if p is None else float(p)

    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        net = single_network(self.kind, sources)
        layers = dropout_layers(net)
        if not layers:
            raise UserError(
                "the mc_dropout teacher needs a model with dropout layers; train the teacher "
                "with model=small_cnn (or small_mlp) ++model.dropout=0.2"
            )
        rate = self.p if self.p is not None else _trained_rate(sources[0])
        if rate is None or not 0 < rate < 1:
            raise UserError(
                f"the teacher run {sources[0].run} was not trained with dropout (its model."
                f"dropout is {rate}); train it with ++model.dropout=0.2, or set method.teacher.p"
            )
        for m in layers:
            m.p = rate
        self.p = rate
        self.networks = [net]

    def sample_logits(self, evaluate: Evaluate, train_pass: Evaluate) -> Iterator[Tensor]:
        wrapped = DropoutOn(self.networks[0])
        for _ in range(self.samples):
            yield evaluate(wrapped)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "p": self.p}
