"""Knowledge distillation (KD) from finished runs into one student of the same architecture.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
Learning Workshop (arXiv:1503.02531), Section 2: the student matches the teacher's
distribution softened at temperature ``T`` and, with a smaller weight, the given labels; the
soft term is multiplied by ``T^2`` so that its gradients keep their size when ``T`` changes::

    L = (1 - beta) * CE(f(x), y~) + beta * T^2 * KL( p_T(x) || softmax(f(x) / T) )

``y~`` is the noisy label, ``f`` the student, ``p_T`` the teacher's softened distribution
on the *same* weak view ``x`` as the student. The BSD paper (Section 4.2, Table 1,
Appendix A.1) distils an ensemble of three models into a single model with ``T = 3``.

Teacher:

- ``teacher_runs``: one or more finished run directories; each ``RUN_DIR/checkpoint.pt`` is
  read with ``torch.load(..., weights_only=True)``. Its ``"model"`` entry is one teacher; if
  the run was :class:`baselines.ensemble.Ensemble`, its extra members (``"method"`` keys
  ``members.<j>.*``) are teachers too. Several runs (e.g. three cross-entropy runs with
  different seeds) likewise form an ensemble teacher.
- Every teacher is built with ``MethodContext.build_model`` (the run's architecture) and
  loaded strictly: a checkpoint of another architecture or class count is a
  :class:`~noisybench.errors.UserError`. Run the student with the teacher run's ``model=``.
- The teachers are frozen (``requires_grad=False``), always in eval mode, evaluated under
  ``torch.no_grad``, absent from :meth:`extra_modules` (so not in the optimizer) and held
  in a plain list, *not* as submodules: ``method.state_dict()`` stays empty and
  checkpoints stay small. On resume the teachers are read again from ``teacher_runs``.
- Paths are used as given (relative to the working directory); prefer absolute paths.

Ensemble teacher (``ensemble_average``): Hinton et al. (Section 1) use "an arithmetic or
geometric mean of their individual predictive distributions as the soft targets"; the default
``"tempered"`` averages the members' *softened* distributions,
``p_T = (1/M) sum_m softmax(z_m / T)``. ``"probs"`` instead softens the ensemble's own
predictive distribution (what :class:`~baselines.ensemble.Ensemble` reports):
``p_T = softmax(log((1/M) sum_m softmax(z_m)) / T)``. With one teacher both are
``softmax(z / T)``.

Teacher kinds (issue 27, :mod:`noisybench.teachers`, docs/teachers.md): ``teacher`` (a
mapping with ``kind`` and the kind's options, from ``+teacher=<kind>``, i.e.
``conf/teacher/<kind>.yaml``) says how the teacher runs' predictive distribution is obtained:
``deterministic``, ``ensemble`` (the default when ``teacher`` is absent: every network of
``teacher_runs``, as before), ``mc_dropout`` or ``swag``. With the teacher's ``store=true``
(always for the Bayesian kinds) the predictive distribution of every training sample is
computed once before the first step, on the plain view, as the Monte Carlo average
``p_bar = (1/S) sum_s softmax(z_s)`` over the ``S`` posterior samples (networks x passes),
and kept in the buffer ``teacher_log_p`` (checkpointed); ``p_T`` is then
``(1/S) sum_s softmax(z_s / T)`` ("tempered") or ``softmax(log(p_bar) / T)`` ("probs"), as for
an ensemble. ``method.teacher.kind`` is the key ``report`` groups students by.

Default ``beta = 0.9``: Hinton et al. (Section 2) report the best results with a considerably
lower weight on the hard-label term; 0.9/0.1 (with the ``T^2`` factor) is the standard KD setting
of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020, HobbitLong/RepDistiller:
``-r 0.1 -a 0.9``). The BSD paper gives only ``T``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput, kl_from_log
from noisybench.teachers import Teacher, TeacherSource, make_teacher

__all__ = ["KnowledgeDistillation", "teacher_log_probs"]

log = logging.getLogger("noisybench")
_MEMBER_KEY = re.compile(r"^members\.(\d+)\.(.+)$")
_AVERAGES = ("tempered", "probs")


def teacher_log_probs(teacher_logits: list[Tensor], T: float, average: str = "tempered") -> Tensor:
    """Log of the teacher's softened distribution ``p_T`` (see the module docstring)."""
    M = math.log(len(teacher_logits))
    if average == "tempered":
        logs = torch.stack([F.log_softmax(z.float() / T, dim=-1) for z in teacher_logits])
        return torch.logsumexp(logs, dim=0) - M
    logs = torch.stack([F.log_softmax(z.float(), dim=-1) for z in teacher_logits])
    return F.log_softmax((torch.logsumexp(logs, dim=0) - M) / T, dim=-1)


def _member_states(method_state: dict[str, Any]) -> list[dict[str, Tensor]]:
    """Split an ensemble run's ``"method"`` state into one state dict per extra member."""
    members: dict[int, dict[str, Tensor]] = {}
    for key, value in method_state.items():
        match = _MEMBER_KEY.match(key)
        if match:
            members.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [members[j] for j in sorted(members)]


class KnowledgeDistillation(Method):
    """Hinton-style KD of frozen teachers read from finished runs.

    Args:
        teacher_runs: finished run directories holding ``checkpoint.pt``.
        T: temperature (BSD paper: 3).
        beta: weight of the distillation term; ``1 - beta`` weighs the noisy-label CE.
        ensemble_average: "tempered" or "probs" (how several teachers are combined).
        teacher: the teacher kind and its options (``{"kind": "swag", "samples": 30}``;
            ``None``: the ensemble of every network of ``teacher_runs``, on the fly).
    """

    views = ("weak",)

    def __init__(
        self,
        teacher_runs: Sequence[str] = (),
        T: float = 3.0,
        beta: float = 0.9,
        ensemble_average: str = "tempered",
        teacher: Mapping[str, Any] | str | None = None,
    ) -> None:
        super().__init__()
        if not 0 < T < math.inf:  # NaN fails this test too
            raise UserError(f"method.T={T} must be a positive finite number; use e.g. 3")
        if not 0.0 <= beta <= 1.0:
            raise UserError(f"method.beta={beta} is outside [0, 1]; use e.g. 0.9")
        if ensemble_average not in _AVERAGES:
            raise UserError(
                f"method.ensemble_average={ensemble_average!r} is unknown; use one of {_AVERAGES}"
            )
        if isinstance(teacher_runs, str):
            teacher_runs = [teacher_runs]
        self.teacher_runs = [str(p) for p in teacher_runs]
        self.T = float(T)
        self.beta = float(beta)
        self.ensemble_average = ensemble_average
        # A plain list, not a ModuleList: teachers stay out of state_dict() and the optimizer.
        self._teachers: list[nn.Module] = []
        self.teacher: Teacher = make_teacher(teacher)
        self._store_ready = False  # host copy of the buffer teacher_ready (no per-step sync)

    def setup(self, ctx: MethodContext) -> None:
        """Read every teacher checkpoint; fail early with a :class:`UserError`."""
        super().setup(ctx)
        if not self.teacher_runs:
            raise UserError(
                "method.teacher_runs is empty; set it to finished run directories, "
                "e.g. method.teacher_runs=[runs/ensemble_seed0]"
            )
        if ctx.build_model is None:
            raise RuntimeError("KnowledgeDistillation needs MethodContext.build_model")
        sources = [self._load_run(Path(run).expanduser(), ctx) for run in self.teacher_runs]
        self.teacher.attach(sources, ctx)
        self._teachers = list(self.teacher.networks)
        if self.teacher.store:
            n, k = ctx.num_samples, ctx.num_classes
            self.register_buffer("teacher_log_p", torch.zeros(n, k, device=ctx.device))
            self.register_buffer("teacher_ready", torch.zeros((), device=ctx.device))
            # [passes over the training set, megabytes of the store] (no wall-clock time: the
            # state and the history stay reproducible; the time goes to the log)
            self.register_buffer("teacher_cost", torch.zeros(2, device=ctx.device))
            self._store_ready = False

    def _load_run(self, run: Path, ctx: MethodContext) -> TeacherSource:
        if not run.is_dir():
            raise UserError(
                f"teacher run directory {run} does not exist; "
                "set method.teacher_runs to finished run directories"
            )
        path = run / "checkpoint.pt"
        if not path.is_file():
            raise UserError(f"{path} does not exist; finish (or resume) the teacher run first")
        try:
            ckpt = torch.load(path, map_location=ctx.device, weights_only=True)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(
                f"{path} cannot be read ({reason}); point method.teacher_runs at another run"
            ) from exc
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
            raise UserError(f"{path} has no 'model' entry; it is not a noisybench checkpoint")
        states = [ckpt["model"], *_member_states(ckpt.get("method") or {})]
        devices = []
        if ctx.device.type == "cuda":
            index = ctx.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        teachers = []
        for state in states:
            with torch.random.fork_rng(devices=devices):  # building must not shift the RNG
                teacher = ctx.build_model()
            try:
                teacher.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise UserError(
                    f"teacher {path} does not fit this run's model (different architecture "
                    "or number of classes); run the student with the teacher run's model= "
                    "and dataset= settings"
                ) from exc
            teacher.requires_grad_(False)
            teacher.eval()
            teachers.append(teacher)
        return TeacherSource(run, ckpt, teachers)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        ready = state_dict.get(prefix + "teacher_ready")
        if ready is not None:  # one host read at load time, none per step
            self._store_ready = bool(ready.item() > 0)

    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """Compute the teacher's stored predictive distribution once (``store=true``)."""
        if not self.teacher.store or self._store_ready:
            return
        begin = time.perf_counter()
        devices = []
        if self.teacher_log_p.device.type == "cuda":
            devices = [self.teacher_log_p.device.index or 0]
        acc = torch.zeros_like(self.teacher_log_p)
        count = 0
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.teacher.seed)
            for logits in self.teacher.sample_logits(evaluate_train, evaluate_train):
                z = logits.float().to(acc.device)
                acc += F.softmax(z / self.T if self.ensemble_average == "tempered" else z, dim=-1)
                count += 1
        log_mean = acc.div_(count).clamp_(min=torch.finfo(acc.dtype).tiny).log_()
        if self.ensemble_average == "probs":
            log_mean = F.log_softmax(log_mean / self.T, dim=-1)
        self.teacher_log_p.copy_(log_mean)
        self.teacher_ready.fill_(1.0)
        elapsed = time.perf_counter() - begin
        megabytes = self.teacher_log_p.numel() * self.teacher_log_p.element_size() / 2**20
        self.teacher_cost.copy_(torch.tensor([self.teacher.passes(), megabytes]))
        self._store_ready = True
        log.info(
            "teacher %s: %d samples, %d passes over the training set, %.1f s, store %.2f MB",
            self.teacher.kind,
            count,
            self.teacher.passes(),
            elapsed,
            megabytes,
        )

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        """The stored teacher's cost: passes over the training set and the store's size."""
        if not self.teacher.store:
            return {}
        return {"teacher_passes": self.teacher_cost[0], "teacher_store_mb": self.teacher_cost[1]}

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teacher models (read-only view)."""
        return list(self._teachers)

    @torch.no_grad()
    def _teacher_log_probs(self, images: Tensor) -> Tensor:
        logits = []
        for teacher in self._teachers:
            if teacher.training:
                teacher.eval()
            logits.append(teacher(images))
        return teacher_log_probs(logits, self.T, self.ensemble_average)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """``(1 - beta) CE + beta T^2 KL(p_T || softmax(f/T))`` on the weak view."""
        if not self._teachers:
            raise RuntimeError("KnowledgeDistillation.setup() must run before training_step")
        x = batch.views["weak"]
        if self.teacher.store:
            if not self._store_ready:
                raise RuntimeError("the teacher's store is computed in on_epoch_start (engine)")
            log_p = self.teacher_log_p[batch.idx]
        else:
            log_p = self._teacher_log_probs(x)
        logits = model(x)
        ce = F.cross_entropy(logits.float(), batch.target)
        log_q = F.log_softmax(logits.float() / self.T, dim=-1)
        kl = kl_from_log(log_p, log_q).mean()
        loss = (1.0 - self.beta) * ce + self.beta * self.T**2 * kl
        return StepOutput(loss=loss, logits=logits, extras={"ce": ce.detach(), "kl": kl.detach()})
