"""What every teacher kind of ``method=kd`` provides (issue 27).

A teacher is a finished run; *how its predictive distribution is obtained* is its kind:
the one network of the run (``deterministic``), the mean of several networks (``ensemble``),
or a Monte Carlo average over an approximate posterior (``mc_dropout``, ``swag``,
``laplace``). Every kind returns, per posterior sample, the teacher's logits; the predictive
distribution is the Monte Carlo average of their softmax,
``p(y | x) ~= (1/S) sum_s softmax(f_{theta_s}(x))`` (Gal & Ghahramani 2016, Eq. 8; Maddox et
al. 2019, Eq. 3; Daxberger et al. 2021, Eq. 3; Lakshminarayanan et al. 2017 for S networks).

Two ways of using a teacher, chosen by its ``store`` option:

* ``store=false`` (deterministic and ensemble only, KD's historical behaviour): the networks
  run on the student's weak view at every step (one forward pass per network per step);
* ``store=true``: the predictive distribution of every training sample (plain view) is
  computed once, before the student's first step, and kept as an ``(N, K)`` per-sample store
  in the method's state (so checkpoints carry it and a resumed run does not recompute it).
  This is the only mode of the Bayesian kinds: their ``S`` posterior samples would cost ``S``
  forward passes per step on the fly, and a sample of SWAG needs a pass over the training set
  for its BatchNorm statistics, which cannot be done per mini-batch.

The sampling draws from torch's global generator inside ``torch.random.fork_rng`` seeded with
the teacher's ``seed``, so the store is a deterministic function of the teacher run and the
options, and the student's own random streams are not shifted.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import MethodContext

__all__ = ["Evaluate", "Teacher", "TeacherSource"]

#: ``evaluate(module)``: the ``(N, K)`` outputs of ``module`` over a fixed set of images (the
#: training set, plain view, in index order, for KD), in eval mode and without gradients; the
#: module's mode is restored (``Trainer.evaluate_train``). A module may switch parts of itself
#: back to train mode inside its ``forward`` (MC dropout's masks, BatchNorm recomputation).
Evaluate = Callable[[nn.Module], Tensor]


class TeacherSource:
    """One finished teacher run as KD read it: its directory, its ``checkpoint.pt`` contents
    and the networks built from it (the run's model, then an ensemble run's other members)."""

    def __init__(self, run: Path, checkpoint: Mapping[str, Any], networks: list[nn.Module]):
        self.run = run
        self.checkpoint = checkpoint
        self.networks = networks


class Teacher(abc.ABC):
    """Base class of the teacher kinds.

    Args:
        samples: posterior samples ``S`` (Monte Carlo passes) per network.
        seed: seed of the sampling (fork of torch's generator; the run's streams are untouched).
        store: compute the predictive distribution once and keep it per sample (see above).
    """

    kind: ClassVar[str]
    #: Whether the kind can run on the student's batches at every step (``store=false``).
    online: ClassVar[bool] = False

    def __init__(self, samples: int = 1, seed: int = 0, store: bool = True) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(
                f"method.teacher.samples={samples!r} must be a whole number >= 1; use e.g. 30"
            )
        if not store and not self.online:
            raise UserError(
                f"method.teacher.store=false is not possible for the {self.kind} teacher (its "
                "posterior samples are drawn once over the training set); set it to true"
            )
        self.samples = int(samples)
        self.seed = int(seed)
        self.store = bool(store)
        self.networks: list[nn.Module] = []

    @abc.abstractmethod
    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        """Take the networks (and whatever posterior state) of the teacher runs; raise a
        :class:`UserError` when a run does not hold what this kind needs."""

    def online_logits(self, images: Tensor) -> list[Tensor]:
        """Logits of every network on ``images`` (``store=false``; eval mode, no grad)."""
        raise NotImplementedError(f"the {self.kind} teacher has no on-the-fly mode")

    @abc.abstractmethod
    def sample_logits(self, evaluate: Evaluate, train_pass: Evaluate) -> Iterator[Tensor]:
        """Yield the ``(N, K)`` logits of every posterior sample over the images of
        ``evaluate``; ``train_pass`` runs a module over the training set (SWAG's BatchNorm
        recomputation, Laplace's features)."""

    def passes(self) -> int:
        """Forward passes over the training set the store costs (reported as the cost)."""
        return self.samples * max(len(self.networks), 1)

    def describe(self) -> dict[str, Any]:
        """The teacher's key and options, for logs and the docs."""
        return {"kind": self.kind, "samples": self.samples, "seed": self.seed}


def single_network(kind: str, sources: list[TeacherSource]) -> nn.Module:
    """The one network of the one teacher run a posterior kind is built on."""
    if len(sources) != 1:
        raise UserError(
            f"the {kind} teacher is built on one finished run; set method.teacher_runs to one "
            f"directory (got {len(sources)})"
        )
    return sources[0].networks[0]
