"""The training loop: the one place that runs backward, optimizer and scheduler steps and AMP.

Methods (:class:`noisybench.method.Method`) only turn a batch into a loss; the engine never
branches on a method's name. An epoch's evaluation (test metrics, validation accuracy, the
memorisation and label-recovery diagnostics, which need the clean training labels a method
never sees) is done by evaluation suites (:mod:`noisybench.evaluation.builtin` and the
configured ones) through the run's one :class:`noisybench.evaluation.base.Predictor`, the
same path ``noisybench evaluate`` takes on a finished run.

The engine knows no file, no run directory and no test hook. What happens around training
(checkpoints, the result file, loggers, progress output, fault injection for the tests) is
done by callbacks (:mod:`noisybench.callbacks`) that observe and persist: they receive the
trainer and its records at fixed points (:class:`Callback`) and never touch gradients, the
optimizer or the method's state.

The engine reads its data through a :class:`noisybench.data.source.DataSource` (training
batches, evaluation batches, labels, the images when in memory): device-resident uint8 tensors,
or a streaming reader (an image folder decoded in DataLoader workers) for data that does not
fit. Which of the two is decided when the source is made; nothing here branches on it.

GPU-friendly by construction: the data stay on the device, per-step numbers are accumulated
as device tensors and converted to Python numbers once per epoch (no per-step ``.item()``),
except in ``nonfinite="skip"`` mode, which must look at every loss before stepping.

Exact resume: :meth:`Trainer.state_dict` holds the model, optimizer, scheduler, AMP scaler,
method state, every global RNG state, the epoch and step to continue at, the epoch's running
sums (mid-epoch) and the history so far. A run resumed from it reproduces the uninterrupted
run's numbers exactly on the CPU in deterministic mode: the batch order of an epoch depends on
``(seed, epoch)`` only, and SIGTERM/SIGINT are honoured at step boundaries, before the next
batch is drawn, so the saved RNG states are those the next batch's augmentation starts from.
A non-finite loss is detected without per-step host syncs (the first bad step is kept on the
device and read once per epoch); in ``nonfinite="stop"`` mode the epoch's checkpoint is then
never written, so the last good one stays.

Data parallel (several processes, :mod:`noisybench.distributed`; a single process is
unchanged). Each process trains on its own share of every global batch (see
:class:`noisybench.data.loader.DeviceLoader`) with the model wrapped in
``DistributedDataParallel``; the gradients of a method's extra trainable modules are
all-reduced the same way (sum / number of processes) after ``backward``. Design and why it
equals the single-process run with the same global batch:

* **Gradients.** Process ``r`` back-propagates ``w_r * L_r`` with ``L_r`` the method's loss
  on its ``n_r`` samples and ``w_r = P * n_r / n`` (``P`` processes, ``n = sum n_r``; ``w_r``
  is exactly 1 when the shares are equal, then nothing is multiplied). DDP averages the
  gradients, ``(1/P) sum_r w_r grad L_r = sum_r (n_r / n) grad L_r``, which for a loss that
  is a batch mean of per-sample terms is the gradient of the global batch's mean: the
  single-process gradient. Only the summation order differs, so floats agree to rounding.
  (Operations that couple the samples of a batch, BatchNorm without SyncBatchNorm, MixUp /
  CutMix pairs, BSD's mix-half split, see the process's own share, as in torchvision's
  reference scripts.)
* **Per-sample method state** (BSD's ``y``, ``A``; PS-KD's and TE's stores; DLB's carried
  logits). After the optimizer step every process all-gathers the batch's ``idx`` and
  ``target``, the detached ``logits`` and every ``StepOutput.state`` tensor with a leading
  dimension, and calls ``method.after_step`` with the GLOBAL batch: the rank-order
  concatenation of the shares, with carried samples first (a state tensor with one row per
  sample of the share is reordered the same way; other state tensors are concatenated in
  rank order; 0-dim entries stay the process's own). Because the shares are contiguous
  chunks of the single-process batch, the gathered batch and predictions are the
  single-process ones (up to the rounding of the forward passes), so every process applies
  the same update as the single process would, and every process's state stays identical
  to every other's (the same function of the same gathered tensors; by induction over steps,
  starting from the identical ``setup``). Nothing of the state is sharded.
* **Metrics.** Loss and accuracy sums, sample counts and the extras are all-reduced once per
  epoch (extras, being per-step means of each share, are averaged over processes); the first
  non-finite step is the earliest over processes. Evaluation is split: after the model's
  buffers are broadcast from rank 0, each process evaluates a contiguous block of every
  evaluation set (:meth:`noisybench.evaluation.base.Predictor.outputs`) and the outputs are
  all-gathered, so every
  process computes the same record; rank 0's callbacks write it.
* **Stopping.** The SIGTERM/SIGINT flag is all-reduced (max) over a CPU group at every step
  boundary and after every epoch, so a signal to any process stops all of them at the same
  boundary. A process that dies (error, SIGKILL) makes the others' next collective fail;
  they end with :class:`noisybench.distributed.PeerFailed` without writing a checkpoint
  (the last one stays).
* **Exact resume.** Rank 0 writes one checkpoint with the model, optimizer, method state (all
  identical on every process) plus every process's RNG states (``rng_ranks``) and, mid-epoch,
  every process's running sums (``epoch_sums_ranks``), gathered at the checkpoint's boundary;
  every process loads the same file and restores its own entries. A checkpoint resumes only
  with the number of processes that wrote it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from noisybench import distributed as dist
from noisybench.data.loader import plan_seed
from noisybench.errors import UserError
from noisybench.evaluation.base import Predictor
from noisybench.method import Batch, Method, StepOutput
from noisybench.processes import Processes, for_this_process
from noisybench.rng import rng_state, set_rng_state

if TYPE_CHECKING:
    from noisybench.data.source import DataSource
    from noisybench.evaluation import SuiteRunner

__all__ = [
    "Callback",
    "Interrupted",
    "TrainParts",
    "TrainSettings",
    "Trainer",
    "TrainingDiverged",
    "rng_state",
    "set_rng_state",
]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite at ``epoch`` (1-based), ``step`` (0-based); the checkpoint
    of the last good epoch is kept when ``checkpoint_kept`` (none exists before the first
    epoch of a fresh run ends)."""

    def __init__(self, epoch: int, step: int | None, checkpoint_kept: bool) -> None:
        where = (
            f"epoch {epoch}, step {step}" if step is not None else f"every step of epoch {epoch}"
        )
        super().__init__(f"the loss became non-finite at {where}")
        self.epoch, self.step, self.checkpoint_kept = epoch, step, checkpoint_kept


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; training stopped at a step boundary (``signum`` says which)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


def _noise_record(
    noise: Tensor | None, steps: int, step: int, loss: Tensor, norm: Tensor, weight: float
) -> Tensor:
    """Write step ``step``'s share-weighted loss and total gradient norm into ``noise``
    (allocated on first use: ``(4, steps)``, rows loss, norm, loss finite, norm finite), on the
    device, without a host sync; returns it."""
    if noise is None:
        dtype = torch.float32 if loss.device.type == "mps" else torch.float64  # mps: no f64
        noise = torch.zeros(4, steps, device=loss.device, dtype=dtype)
    x = torch.stack([loss.detach().float() * weight, norm.detach().float()]).to(noise.dtype)
    ok = torch.isfinite(x)
    noise[:, step] = torch.cat([torch.where(ok, x, torch.zeros_like(x)), ok.to(noise.dtype)])
    return noise


def _noise_values(noise: Tensor, world: int) -> dict[str, Tensor]:
    """Across-step mean and unbiased variance of the loss and of the gradient norm (issue 27)
    from the epoch's per-step rows summed over the ``world`` processes: a step counts when
    it was recorded and finite on every process; its loss is then the sum of the shares'
    size-weighted losses (the global batch's loss) and its norm ``world`` times the norm
    (identical on every process after the gradient all-reduce)."""
    out = {}
    for name, row, scale in (("loss_step", 0, 1.0), ("grad_norm", 1, 1.0 / world)):
        mask = (noise[row + 2] >= world - 0.5).to(noise.dtype)
        x = noise[row] * scale
        n = mask.sum()
        mean = (x * mask).sum() / n.clamp(min=1)
        var = ((x - mean).pow(2) * mask).sum() / (n - 1).clamp(min=1)
        out[f"train/{name}_mean"], out[f"train/{name}_var"] = mean, var
    return out


@dataclass
class _EpochSums:
    """Per-epoch running sums, kept on the device (and checkpointed mid-epoch)."""

    loss: Tensor
    correct: Tensor
    seen: int = 0
    steps: int = 0
    skipped: int = 0
    first_bad: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    # Convergence noise (issue 27): per-step loss and gradient norm, see _noise_record.
    noise: Tensor | None = None

    @classmethod
    def zeros(cls, device: torch.device) -> _EpochSums:
        z = torch.zeros((), device=device)
        return cls(loss=z.clone(), correct=z.clone(), first_bad=torch.full((), -1, device=device))

    def state(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "correct": self.correct,
            "seen": self.seen,
            "steps": self.steps,
            "skipped": self.skipped,
            "first_bad": self.first_bad,
            "extras": dict(self.extras),
            "noise": self.noise,
        }

    def add(self, out: StepOutput, batch: Batch) -> None:
        """Add a step's loss, given-label accuracy and extras (device tensors, no sync)."""
        n = int(out.logits.shape[0])
        self.loss += out.loss.detach().float() * n
        self.correct += (out.logits.detach().argmax(-1) == batch.target[:n]).sum()
        self.seen += n
        self.steps += 1
        for key, value in out.extras.items():
            value = value.detach().float()
            self.extras[key] = self.extras[key] + value if key in self.extras else value

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> _EpochSums:
        return cls(
            loss=state["loss"].to(device),
            correct=state["correct"].to(device),
            seen=int(state["seen"]),
            steps=int(state["steps"]),
            skipped=int(state["skipped"]),
            first_bad=state["first_bad"].to(device),
            extras={k: v.to(device) for k, v in state["extras"].items()},
            noise=None if state.get("noise") is None else state["noise"].to(device),
        )


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (restored on exit).

    A second signal while training raises ``KeyboardInterrupt`` (to give up waiting for a
    step that hangs), except while a checkpoint is being written (:meth:`critical`): then it
    is ignored, so no signal can cut a checkpoint write short.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self._critical = 0

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
        elif not self._critical:  # second signal: give up waiting for the step
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A block that later signals must not interrupt (checkpoint writes)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Callback:
    """Observes a :class:`Trainer` at fixed points; every method is optional.

    Callbacks persist and report (checkpoints, result file, loggers, progress) or inject
    faults for the tests. They may read anything from the trainer (``trainer.state_dict``,
    ``trainer.history``) but must not change gradients, the optimizer or the method's state.
    Writes that a signal must not cut short go inside ``with trainer.critical():``.
    """

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        """Before the first (or resumed) step."""

    def on_step_start(self, trainer: Trainer, epoch: int, step: int) -> None:
        """Before ``step`` (0-based) of ``epoch`` (0-based) draws its batch."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        """After the optimizer step and the method's ``after_step`` (no host sync here)."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After an epoch's last step, before its evaluation."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After an epoch is evaluated and appended to ``trainer.history``; a checkpointer
        saves ``trainer.state_dict(epoch + 1)`` here (callbacks run in list order)."""

    def on_interrupt(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """SIGTERM/SIGINT at a step boundary: ``state`` resumes exactly at that boundary."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch."""


@dataclass(frozen=True)
class TrainSettings:
    """The engine's settings (what is not an object the loop calls).

    Attributes:
        epochs: total number of epochs.
        device: the training device.
        amp_dtype: ``torch.float16``/``torch.bfloat16`` to train in autocast, or None.
        nonfinite: "stop" (raise :class:`TrainingDiverged`, keep the last good checkpoint) or
            "skip" (skip the step and count it; costs one host sync per step).
        eval_batch_size: batch size of evaluation passes.
    """

    epochs: int
    device: torch.device
    amp_dtype: torch.dtype | None = None
    nonfinite: str = "stop"
    eval_batch_size: int = 1024


@dataclass
class TrainParts:
    """The objects the loop trains with (:func:`noisybench.build.build` makes them).

    Attributes:
        model, method: the network and the training objective (already on the device).
        optimizer, scheduler: the scheduler is stepped once per optimizer step.
        source: the data (:class:`noisybench.data.source.DataSource`): ``len()`` steps per
            epoch, the :class:`noisybench.method.Batch` es of ``source.epoch(epoch,
            start_step)``, evaluation batches and labels.
    """

    model: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    source: DataSource


class Trainer:
    """Fits ``parts.model`` with ``parts.method``: one visible place for backward, optimizer,
    schedule.

    Args:
        parts: the model, method, optimizer, scheduler and data source (:class:`TrainParts`;
            the trainer's attributes of the same names).
        settings: epochs, device, precision, evaluation settings (:class:`TrainSettings`).
        suites: the evaluation suites and their context
            (:class:`noisybench.evaluation.SuiteRunner`; :func:`noisybench.build.build` gives
            the built-in ones and the configured ones that run during training; None: none,
            the record has the training numbers only). The built-in suites' numbers join the
            epoch's record as they are (``test/acc``), the others' as ``eval/<key>``; their
            other values (lists) are left for the callbacks in ``trainer.eval_details`` until
            the next epoch. They predict through ``trainer.predict``
            (:class:`noisybench.evaluation.base.Predictor`).
        callbacks: observers (checkpoints, result file, loggers, progress, fault injection).
        processes: how many processes train (:mod:`noisybench.processes`; default: those of
            the initialised process group, or one). ``method.training_step`` gets
            ``processes.wrap(model, method)`` (``DistributedDataParallel`` with several);
            evaluation and checkpoints use ``model``.
    """

    def __init__(
        self,
        parts: TrainParts,
        settings: TrainSettings,
        *,
        suites: SuiteRunner | None = None,
        callbacks: Sequence[Callback] = (),
        processes: Processes | None = None,
    ) -> None:
        model, method, optimizer = parts.model, parts.method, parts.optimizer
        self.procs = for_this_process() if processes is None else processes
        self.model = model
        self.train_model = self.procs.wrap(model, method)
        self.world, self.rank = self.procs.world, self.procs.rank
        self._extra_params = [p for m in method.extra_modules() for p in m.parameters()]
        self._all_params = [p for g in optimizer.param_groups for p in g["params"]]
        self._gathers_state = type(method).after_step is not Method.after_step
        self._ranked: dict[str, Any] = {}
        self.method = method
        self.optimizer = optimizer
        self.scheduler = parts.scheduler
        self.source = source = parts.source
        self.settings = settings
        self.epochs, self.device = settings.epochs, settings.device
        self.amp_dtype = settings.amp_dtype
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda",
        )
        if settings.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {settings.nonfinite!r}")
        self.nonfinite = settings.nonfinite
        self.eval_batch_size = settings.eval_batch_size
        self.suites = suites
        self.predict = Predictor(
            model,
            method,
            self.device,
            self.eval_batch_size,
            view=getattr(source, "view", None),
            source=source,
            autocast=self._autocast,
            processes=self.procs,
        )
        self.eval_details: dict[str, Any] = {}
        self.callbacks = list(callbacks)
        self.history: list[dict[str, Any]] = []
        self.resumed = False
        self.stop = _StopFlag()
        #: steps of the epoch being trained (``len(source)``, or the method's plan's)
        self.epoch_steps = len(source)

    # ----------------------------------------------------------------- state
    def state_dict(
        self, epoch: int, step: int = 0, sums: _EpochSums | None = None
    ) -> dict[str, Any]:
        """Everything needed to continue exactly: ``epoch`` is the 0-based epoch to run next
        (or the one in progress when ``step`` > 0)."""
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
            "epoch_sums": None if sums is None else sums.state(),
            "history": list(self.history),
            "world_size": self.world,
            **self._ranked,
        }

    def _gather_ranked(self, sums: _EpochSums | None) -> None:
        """Collect every process's RNG states (and running sums) for the next checkpoint;
        a collective: every process calls it at the same boundary."""

        def mine() -> dict[str, Any]:
            own: dict[str, Any] = {"rng": rng_state()}
            if sums is not None:
                own["sums"] = {
                    k: v.cpu() if isinstance(v, Tensor) else v for k, v in sums.state().items()
                }
                own["sums"]["extras"] = {k: v.cpu() for k, v in sums.extras.items()}
            return own

        gathered = self.procs.ranked(mine)  # None with one process: nothing is copied
        if gathered is None:
            return
        self._ranked = {"rng_ranks": [g["rng"] for g in gathered]}
        if sums is not None:
            self._ranked["epoch_sums_ranks"] = [g["sums"] for g in gathered]

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> tuple[int, int, _EpochSums | None]:
        """Restore from a checkpoint; returns ``(epoch, step, epoch sums)`` to resume at."""
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        written_by = int(ckpt.get("world_size", 1))
        if written_by != self.world:
            raise UserError(
                f"the checkpoint was written by {written_by} process(es) but this run has "
                f"{self.world}; resume with the same number (torchrun --nproc_per_node="
                f"{written_by}), or pass restart=true to start over"
            )
        set_rng_state(self.procs.own(ckpt, "rng"))
        self.history = list(ckpt.get("history") or [])
        self.resumed = True
        sums = self.procs.own(ckpt, "epoch_sums")
        return (
            int(ckpt["epoch"]),
            int(ckpt["step"]),
            None if sums is None else _EpochSums.from_state(sums, self.device),
        )

    def critical(self) -> contextlib.AbstractContextManager[None]:
        """A block that SIGTERM/SIGINT must not interrupt (checkpoint writes)."""
        return self.stop.critical()

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # ----------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _interrupt(self, epoch: int, step: int, sums: _EpochSums) -> Interrupted:
        """Hand the state at the boundary before ``step`` of ``epoch`` to the callbacks
        (unless the epoch already had a non-finite loss: then the last good checkpoint stays)
        and stop."""
        signum = int(self.stop.signal or signal.SIGINT)
        first_bad = self._first_bad(sums)  # one sync
        if first_bad >= 0:
            raise TrainingDiverged(epoch + 1, first_bad, self._checkpoint_kept(epoch))
        self._gather_ranked(sums)
        self._emit("on_interrupt", self.state_dict(epoch, step, sums))
        name = signal.Signals(signum).name
        return Interrupted(
            f"stopped by {name} at epoch {epoch + 1}, step {step}; a checkpoint was written: "
            "run the same command again to resume",
            signum,
        )

    def _checkpoint_kept(self, epoch: int) -> bool:
        return epoch > 0 or self.resumed

    def _first_bad(self, sums: _EpochSums) -> int:
        """The first step (0-based) of the epoch with a non-finite loss on any process, or
        -1 (one host sync)."""
        if sums.first_bad is None:
            return -1
        return self.procs.first(sums.first_bad)

    def _stop_agreed(self) -> bool:
        """Whether any process got SIGTERM/SIGINT (all-reduced over the processes, so all
        of them stop at the same boundary); adopts that signal locally."""
        signum = self.procs.any(self.stop.signal or 0)
        if signum and self.stop.signal is None:
            self.stop.signal = signum
        return bool(signum)

    def train_epoch(
        self, epoch: int, start_step: int = 0, sums: _EpochSums | None = None
    ) -> _EpochSums:
        """One pass over the training set (from ``start_step`` when resuming mid-epoch).

        SIGTERM/SIGINT are honoured at step boundaries, before the next batch is drawn, so
        the checkpoint's RNG states are those the next batch's augmentation starts from.
        """
        if start_step == 0:  # the method's per-epoch pass (issue 12); state goes to buffers
            self.method.on_epoch_start(self.model, epoch, self.evaluate_train)
        # The method's own layout of the epoch, if any (a function of its buffers and of
        # (seed, epoch), so a run resumed mid-epoch gets the same one).
        plan = self.method.epoch_plan(epoch, plan_seed(self.source.seed, epoch))
        self.train_model.train()  # the DDP wrapper, if any, and the model inside it
        self.method.train()
        sums = sums or _EpochSums.zeros(self.device)
        total = self.epoch_steps = len(self.source) if plan is None else int(plan.steps)
        batches = iter(self.source.epoch(epoch, start_step, plan))
        for step in range(start_step, total):
            self._emit("on_step_start", epoch, step)
            if self._stop_agreed():
                raise self._interrupt(epoch, step, sums)
            batch = next(batches)
            self.train_step(batch, epoch, step, sums)
            self._emit("on_step_end", epoch, step)
        self._emit("on_train_epoch_end", epoch)
        return sums

    def train_step(self, batch: Batch, epoch: int, step: int, sums: _EpochSums) -> None:
        """One optimizer step: the method's loss, ``backward``, the optimizer and the
        schedule, the method's ``after_step`` with the global batch, the running sums."""
        with self._autocast():
            out = self.method.training_step(self.train_model, batch, epoch)
        shares = self.procs.shares(batch, out, self._gathers_state)
        loss = self.procs.weight(out.loss, shares)
        finite = torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite == "skip" and self.procs.any(0 if bool(finite) else 1):  # host sync
            # Skip the update but keep the schedule on time: the scheduler is a function
            # of the step count, as it is when the AMP scaler skips an overflowing step.
            sums.skipped += 1
            self._advance_schedule(step)
            return
        sums.first_bad = torch.where(
            (sums.first_bad < 0) & ~finite,
            torch.full_like(sums.first_bad, step),
            sums.first_bad,
        )
        with dist.guard_backward():
            self.scaler.scale(loss).backward()
        self.procs.average_grads(self._extra_params)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # true gradients for the norm; step skips it
        grads = [p.grad for p in self._all_params if p.grad is not None]
        norm = loss.detach().new_full((), float("nan"))  # no gradient: left out of the counts
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        weight = self.procs.fraction(shares)
        sums.noise = _noise_record(sums.noise, self.epoch_steps, step, out.loss, norm, weight)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._advance_schedule(step)
        if self._gathers_state:  # a no-op after_step needs no global batch
            self.method.after_step(*self.procs.global_step(batch, out, shares), epoch)
        else:
            self.method.after_step(batch, out, epoch)
        sums.add(out, batch)

    def _advance_schedule(self, step: int) -> None:
        """Step the scheduler after the epoch's step ``step`` so that it follows its course
        per epoch: once per step in an ordinary epoch; in an epoch of ``S'`` planned steps
        (:meth:`Method.epoch_plan`) for a schedule of ``S`` steps per epoch, up to
        ``floor((step + 1) * S / S')`` of the epoch's ``S`` (zero, one or more calls), so every
        epoch boundary sees the value it would with ordinary epochs. A function of ``step``
        alone: a resumed run continues on the same course."""
        nominal, actual = len(self.source), self.epoch_steps
        calls = (step + 1) * nominal // actual - step * nominal // actual
        for _ in range(calls):
            self.scheduler.step()

    def _reduced(self, sums: _EpochSums) -> _EpochSums:
        """The epoch's sums over all processes (a copy; extras averaged over processes)."""
        vec, extras = self.procs.reduce(
            torch.stack([sums.loss.float(), sums.correct.float()]), sums.extras
        )
        noise = None if sums.noise is None else self.procs.sum(sums.noise)
        return _EpochSums(
            noise=noise,
            loss=vec[0],
            correct=vec[1],
            seen=self.procs.total(sums.seen),
            steps=sums.steps,
            skipped=sums.skipped,
            first_bad=sums.first_bad,
            extras=extras,
        )

    # ----------------------------------------------------------------- evaluation
    def evaluate_train(self, module: nn.Module) -> Tensor:
        """``(N, K)`` float logits of ``module`` in eval mode over the training images, plain
        view, in batches (for :meth:`Method.on_epoch_start`); the module's mode is restored.
        Not ``inference_mode``: the logits may meet autograd."""
        was_training = module.training
        module.eval()
        try:
            return self.predict.outputs("train", module, lambda z: z.float())
        finally:
            module.train(was_training)

    def _suite_values(self, epoch: int, stage: str) -> dict[str, Any]:
        if self.suites is None:
            return {}
        return dict(self.suites.record(epoch, self.predict, stage))

    def epoch_record(self, epoch: int, sums: _EpochSums, epoch_time: float) -> dict[str, Any]:
        """Evaluate and assemble one epoch's numbers (the only host syncs of an epoch), in the
        record's order (the CSV logger's columns): the held-out splits' built-in suites (test
        sets, validation), the training sums, the diagnostics' built-in suites (memorisation,
        label recovery), the method's ``on_epoch_end``, then the other suites (``eval/``)."""
        sums = self._reduced(sums)
        self.procs.sync_buffers(self.model)
        values: dict[str, Any] = self._suite_values(epoch, "held_out")
        seen = max(sums.seen, 1)
        values["train/loss"] = sums.loss / seen
        values["train/acc_given"] = sums.correct / seen
        for key, value in sums.extras.items():
            values[f"train/{key}"] = value / max(sums.steps, 1)
        if sums.noise is not None:  # convergence noise across the epoch's steps (issue 27)
            values.update(_noise_values(sums.noise, self.world))
        values.update(self._suite_values(epoch, "diagnostics"))
        for key, value in self.method.on_epoch_end(epoch).items():
            values[f"method/{key}"] = value
        self.eval_details = {}
        for key, value in self._suite_values(epoch, "eval").items():
            if isinstance(value, int | float | Tensor) and not isinstance(value, bool):
                values[key] = value
            else:  # lists (reliability bins, mu): for loggers, not the record
                self.eval_details[key] = value
        record: dict[str, Any] = {"epoch": epoch + 1}
        for key, value in values.items():
            record[key] = float(value.float().mean()) if isinstance(value, Tensor) else float(value)
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["skipped_steps"] = sums.skipped
        record["epoch_time_s"] = round(epoch_time, 3)
        return record

    def fit(
        self, start_epoch: int = 0, start_step: int = 0, sums: _EpochSums | None = None
    ) -> list[dict[str, Any]]:
        """Train from ``start_epoch`` (and ``start_step`` within it) to the end; returns the
        history (one record per epoch).

        Raises:
            TrainingDiverged: a non-finite loss in ``nonfinite="stop"`` mode (or every step
                of an epoch skipped); the last good checkpoint is kept.
            Interrupted: SIGTERM/SIGINT; the callbacks got the state at the step boundary (or
                the epoch that was being evaluated was completed first).
        """
        with self.stop:
            self._emit("on_fit_start", start_epoch, start_step)
            for epoch in range(start_epoch, self.epochs):
                self._fit_epoch(epoch, start_step, sums)
                start_step, sums = 0, None
                if self._stop_agreed() and epoch + 1 < self.epochs:
                    name = signal.Signals(self.stop.signal).name
                    raise Interrupted(
                        f"stopped by {name} after epoch {epoch + 1}; its checkpoint was "
                        "written: run the same command again to resume",
                        self.stop.signal,
                    )
            self._emit("on_fit_end")
        return self.history

    def _fit_epoch(self, epoch: int, start_step: int, sums: _EpochSums | None) -> dict[str, Any]:
        begin = time.perf_counter()
        sums = self.train_epoch(epoch, start_step, sums)
        first_bad = self._first_bad(sums)
        if first_bad >= 0:
            raise TrainingDiverged(epoch + 1, first_bad, self._checkpoint_kept(epoch))
        if sums.steps == 0:
            raise TrainingDiverged(epoch + 1, None, self._checkpoint_kept(epoch))
        record = self.epoch_record(epoch, sums, time.perf_counter() - begin)
        self.history.append(record)
        self._gather_ranked(None)
        self._emit("on_epoch_end", epoch, record)
        return record
