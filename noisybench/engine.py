"""The training loop: the one place that runs backward, optimizer and scheduler steps and AMP.

Methods (``noisybench.method.Method``) only turn a batch into a loss; the engine never
branches on a method's name. It alone sees the clean training labels, so it alone computes
the memorisation and label-recovery diagnostics.

GPU-friendly by construction: the data stay on the device, per-step numbers are accumulated
as device tensors and converted to Python numbers once per epoch (no per-step ``.item()``),
except in ``nonfinite="skip"`` mode, which must look at every loss before stepping.

Reliability (what a resumed run relies on):

* A checkpoint is written atomically at the end of every epoch, and at the next step
  boundary after SIGTERM/SIGINT. It holds the model, optimizer, scheduler, AMP scaler,
  method state, every global RNG state, the epoch and step to continue at, the epoch's
  running sums (mid-epoch) and the history so far. A run resumed from it reproduces the
  uninterrupted run's numbers exactly on the CPU in deterministic mode: the batch order of an
  epoch depends on ``(seed, epoch)`` only, and the RNG states are saved at the boundary
  *before* the next batch is augmented.
* A non-finite loss is detected without per-step host syncs (the first bad step is kept on
  the device and read once per epoch); in ``nonfinite="stop"`` mode the epoch's checkpoint is
  then never written, so the last good one stays.

Test hook (for the test suite only; never set it otherwise): the environment variable
``NOISYBENCH_TEST_KILL_AT`` (:data:`TEST_KILL_ENV`) holds comma-separated entries
``EPOCH:POINT[:SIGNAL]``; the engine sends itself ``SIGNAL`` (KILL by default, TERM or INT)
when it reaches ``POINT`` of ``EPOCH`` (1-based, as in messages). ``POINT`` is a step number
(0-based: before that step's batch is drawn), ``end`` (after the epoch's last step, before
evaluation), ``checkpoint`` (while a checkpoint of that epoch is written: the new file is
complete but not yet renamed into place) or ``result`` (after the epoch's checkpoint, before
the result file is updated). This gives the crash tests deterministic kill points.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from noisybench import metrics
from noisybench.io import CHECKPOINT_FILE, atomic_save_checkpoint
from noisybench.method import Method
from noisybench.recorder import Recorder
from noisybench.schedules import adam_beta1

__all__ = [
    "CHECKPOINT_FILE",
    "TEST_KILL_ENV",
    "EvalData",
    "Interrupted",
    "Trainer",
    "TrainingDiverged",
    "rng_state",
    "set_rng_state",
]

TEST_KILL_ENV = "NOISYBENCH_TEST_KILL_AT"
_HOOK_POINTS = ("end", "checkpoint", "result")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; training stopped at a step boundary (``signum`` says which)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


@dataclass
class EvalData:
    """Device-resident tensors the engine evaluates on (uint8 images, int64 labels)."""

    test_images: Tensor
    test_labels: Tensor
    train_images: Tensor
    train_clean: Tensor
    train_given: Tensor
    view: Callable[[Tensor], Tensor]


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
        }

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


def rng_state() -> dict[str, Any]:
    """Every global RNG state a run draws from: torch's (CPU and every CUDA device; the
    augmentations, dropout, CutMix/MixUp draws), NumPy's and Python's (in case a method or
    a third-party augmentation draws from them). Tensors and numbers only, so that the
    checkpoint loads with ``weights_only=True``."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state["numpy"] = {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }
    version, internal, gauss_next = random.getstate()
    state["python"] = {
        "version": int(version),
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": gauss_next,
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (older checkpoints without the NumPy and
    Python entries restore torch's states only)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (npst["kind"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["gauss"]))
        )
    if "python" in state:
        pyst = state["python"]
        internal = tuple(int(v) for v in pyst["internal"].tolist())
        random.setstate((int(pyst["version"]), internal, pyst["gauss_next"]))


def _parse_test_hooks(spec: str | None) -> dict[tuple[int, str], int]:
    """Parse :data:`TEST_KILL_ENV`: comma-separated ``EPOCH:POINT[:KILL|TERM|INT]`` entries
    into ``{(epoch, point): signal number}``."""
    signals = {
        "KILL": getattr(signal, "SIGKILL", signal.SIGTERM),
        "TERM": signal.SIGTERM,
        "INT": signal.SIGINT,
    }
    hooks: dict[tuple[int, str], int] = {}
    for entry in (spec or "").split(","):
        if not entry.strip():
            continue
        parts = entry.strip().split(":")
        epoch, point = parts[0], parts[1] if len(parts) > 1 else ""
        action = parts[2] if len(parts) > 2 else "KILL"
        if (
            len(parts) not in (2, 3)
            or not epoch.isdigit()
            or not (point.isdigit() or point in _HOOK_POINTS)
            or action not in signals
        ):
            raise ValueError(
                f"{TEST_KILL_ENV}={spec!r}: each entry must be EPOCH:POINT[:KILL|TERM|INT] with "
                f"POINT a step number or one of {', '.join(_HOOK_POINTS)}"
            )
        hooks[(int(epoch), point)] = signals[action]
    return hooks


class Trainer:
    """Fits ``model`` with ``method`` and records every epoch.

    Args:
        model, method: the network and the training objective (already on ``device``).
        optimizer, scheduler: built by the run; the scheduler is stepped once per step.
        loader: yields :class:`noisybench.method.Batch` via ``loader.epoch(epoch, start_step)``.
        data: evaluation tensors (see :class:`EvalData`).
        epochs: total number of epochs.
        run_dir: where ``checkpoint.pt`` goes.
        recorder: receives one record per epoch.
        checkpoint_extra: saved with every checkpoint (config, noise record).
        amp_dtype: ``torch.float16``/``torch.bfloat16`` to train in autocast, or None.
        nonfinite: "stop" (raise :class:`TrainingDiverged`, keep the last good checkpoint) or
            "skip" (skip the step and count it; costs one host sync per step).
        beta1_rampdown: ``(epochs, final_beta1)`` to anneal Adam's beta1 at the end (TE).
        eval_batch_size: batch size for evaluation passes.
        train_diagnostics: evaluate on the training set every epoch for the memorisation
            diagnostics.
        progress: show progress bars.
        method_name: used in messages only.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loader: Any,
        data: EvalData,
        epochs: int,
        run_dir: Path,
        recorder: Recorder,
        checkpoint_extra: dict[str, Any],
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        nonfinite: str = "stop",
        beta1_rampdown: tuple[int, float] = (0, 0.0),
        eval_batch_size: int = 1024,
        train_diagnostics: bool = True,
        progress: bool = True,
        method_name: str = "",
    ) -> None:
        self.model = model
        self.method = method
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loader = loader
        self.data = data
        self.epochs = epochs
        self.run_dir = run_dir
        self.recorder = recorder
        self.checkpoint_extra = checkpoint_extra
        self.device = device
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda"
        )
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.beta1_rampdown = beta1_rampdown
        self.base_beta1 = [g["betas"][0] for g in optimizer.param_groups if "betas" in g]
        self.eval_batch_size = eval_batch_size
        self.train_diagnostics = train_diagnostics
        self.progress = progress
        self.method_name = method_name or type(method).__name__
        self.stop = _StopFlag()
        self._hooks = _parse_test_hooks(os.environ.get(TEST_KILL_ENV))

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self, epoch: int, step: int, sums: _EpochSums | None) -> dict[str, Any]:
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
            "history": list(self.recorder.history),
            **self.checkpoint_extra,
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> tuple[int, int, _EpochSums | None]:
        """Restore from a checkpoint; returns ``(epoch, step, epoch sums)`` to resume at."""
        self.model.load_state_dict(ckpt["model"])
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        sums = ckpt.get("epoch_sums")
        return (
            int(ckpt["epoch"]),
            int(ckpt["step"]),
            None if sums is None else _EpochSums.from_state(sums, self.device),
        )

    def save_checkpoint(self, epoch: int, step: int = 0, sums: _EpochSums | None = None) -> None:
        """Write ``checkpoint.pt`` atomically (the one it replaces becomes ``.prev``).

        ``epoch`` is the 0-based epoch to continue at, ``step`` the step within it. Signals
        arriving during the write are held until it is complete.
        """
        hook_epoch = epoch + 1 if step > 0 else epoch  # the epoch this checkpoint belongs to

        def before_replace() -> None:
            self._hook(hook_epoch, "checkpoint")

        with self.stop.critical():
            atomic_save_checkpoint(
                self.state_dict(epoch, step, sums),
                self.run_dir / CHECKPOINT_FILE,
                before_replace=before_replace if self._hooks else None,
            )

    # ----------------------------------------------------------------- training
    def _hook(self, epoch: int, point: str) -> None:
        """Test hook (see the module docstring): signal this process at a chosen point."""
        signum = self._hooks.get((epoch, point)) if self._hooks else None
        if signum is not None:
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # let a handled signal's handler run before going on

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_beta1(self, epoch: int) -> None:
        rampdown, final = self.beta1_rampdown
        if rampdown <= 0:
            return
        groups = [g for g in self.optimizer.param_groups if "betas" in g]
        for group, base in zip(groups, self.base_beta1, strict=True):
            beta1 = adam_beta1(base, final, epoch, self.epochs, rampdown)
            group["betas"] = (beta1, group["betas"][1])

    def _diverged(self, epoch: int, step: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"the loss of method {self.method_name} became non-finite at epoch {epoch + 1}, "
            f"step {step}; the checkpoint of the last good epoch is kept in {self.run_dir}: "
            "run the same command with nonfinite=skip to resume from it skipping such steps, "
            "or restart=true with a lower learning rate"
        )

    def _interrupt(self, epoch: int, step: int, sums: _EpochSums) -> Interrupted:
        """Checkpoint at the boundary before ``step`` of ``epoch`` (unless the epoch already
        had a non-finite loss: then the last good checkpoint stays) and stop."""
        signum = int(self.stop.signal or signal.SIGINT)
        first_bad = int(sums.first_bad) if sums.first_bad is not None else -1  # one sync
        if first_bad >= 0:
            raise self._diverged(epoch, first_bad)
        self.save_checkpoint(epoch, step, sums)
        name = signal.Signals(signum).name
        return Interrupted(
            f"stopped by {name} at epoch {epoch + 1}, step {step}; a checkpoint was written "
            f"to {self.run_dir / CHECKPOINT_FILE}: run the same command again to resume",
            signum,
        )

    def train_epoch(
        self, epoch: int, start_step: int = 0, sums: _EpochSums | None = None
    ) -> _EpochSums:
        """One pass over the training set (from ``start_step`` when resuming mid-epoch).

        SIGTERM/SIGINT are honoured at step boundaries, before the next batch is drawn, so
        the checkpoint's RNG states are those the next batch's augmentation starts from.
        """
        if start_step == 0:  # the method's per-epoch pass (issue 12); state goes to buffers
            self.method.on_epoch_start(self.model, epoch, self.evaluate_train)
        self.model.train()
        self.method.train()
        self._set_beta1(epoch)
        sums = sums or _EpochSums.zeros(self.device)
        total = len(self.loader)
        batches = iter(self.loader.epoch(epoch, start_step))
        bar = self._bar(total=total, initial=start_step, desc=f"epoch {epoch + 1}/{self.epochs}")
        try:
            for step in range(start_step, total):
                self._hook(epoch + 1, str(step))
                if self.stop.signal is not None:
                    raise self._interrupt(epoch, step, sums)
                batch = next(batches)
                self._train_step(batch, epoch, step, sums)
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
        self._hook(epoch + 1, "end")
        return sums

    def _train_step(self, batch: Any, epoch: int, step: int, sums: _EpochSums) -> None:
        with self._autocast():
            out = self.method.training_step(self.model, batch, epoch)
        loss = out.loss
        finite = torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite == "skip" and not bool(finite):  # one host sync, skip mode only
            # Skip the update but keep the schedule on time: the scheduler is a function
            # of the step count, as it is when the AMP scaler skips an overflowing step.
            sums.skipped += 1
            self.scheduler.step()
            return
        sums.first_bad = torch.where(
            (sums.first_bad < 0) & ~finite,
            torch.full_like(sums.first_bad, step),
            sums.first_bad,
        )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.after_step(batch, out, epoch)

        n = int(out.logits.shape[0])
        sums.loss += loss.detach().float() * n
        sums.correct += (out.logits.detach().argmax(-1) == batch.target[:n]).sum()
        sums.seen += n
        sums.steps += 1
        for key, value in out.extras.items():
            value = value.detach().float()
            sums.extras[key] = sums.extras[key] + value if key in sums.extras else value

    @torch.no_grad()
    def evaluate_train(self, module: nn.Module) -> Tensor:
        """``(N, K)`` float logits of ``module`` in eval mode over the training images, plain
        view, in batches (for :meth:`Method.on_epoch_start`); the module's mode is restored."""
        was_training = module.training
        module.eval()
        outs = []
        images = self.data.train_images
        for start in range(0, images.shape[0], self.eval_batch_size):
            x = self.data.view(images[start : start + self.eval_batch_size])
            with self._autocast():
                outs.append(module(x).float())
        module.train(was_training)
        return torch.cat(outs)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Logits of ``method.predict`` over uint8 ``images`` in eval mode, in batches."""
        self.model.eval()
        self.method.eval()
        outs = []
        for start in range(0, images.shape[0], self.eval_batch_size):
            x = self.data.view(images[start : start + self.eval_batch_size])
            with self._autocast():
                outs.append(self.method.predict(self.model, x).float())
        return torch.cat(outs)

    def epoch_record(self, epoch: int, sums: _EpochSums, epoch_time: float) -> dict[str, Any]:
        """Evaluate and assemble one epoch's numbers (the only host syncs of an epoch)."""
        values: dict[str, Tensor | float | int] = {}
        test = metrics.classification_metrics(
            self.predict(self.data.test_images), self.data.test_labels
        )
        values.update({f"test/{k}": v for k, v in test.items()})
        seen = max(sums.seen, 1)
        values["train/loss"] = sums.loss / seen
        values["train/acc_given"] = sums.correct / seen
        for key, value in sums.extras.items():
            values[f"train/{key}"] = value / max(sums.steps, 1)
        if self.train_diagnostics:
            pred = self.predict(self.data.train_images).argmax(-1)
            mem = metrics.memorisation(pred, self.data.train_given, self.data.train_clean)
            values.update({f"memorisation/{k}": v for k, v in mem.items()})
        targets = self.method.soft_targets()
        if targets is not None:
            rec = metrics.label_recovery(targets, self.data.train_given, self.data.train_clean)
            values.update({f"recovery/{k}": v for k, v in rec.items()})
        for key, value in self.method.on_epoch_end(epoch).items():
            values[f"method/{key}"] = value
        record: dict[str, Any] = {"epoch": epoch + 1}
        for key, value in values.items():
            record[key] = float(value.float().mean()) if isinstance(value, Tensor) else float(value)
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["skipped_steps"] = sums.skipped
        record["epoch_time_s"] = round(epoch_time, 3)
        return record

    def fit(
        self, start_epoch: int = 0, start_step: int = 0, sums: _EpochSums | None = None
    ) -> None:
        """Train from ``start_epoch`` (and ``start_step`` within it) to the end.

        Raises:
            TrainingDiverged: a non-finite loss in ``nonfinite="stop"`` mode (or every step
                of an epoch skipped); the last good checkpoint is kept.
            Interrupted: SIGTERM/SIGINT; a checkpoint was written at the step boundary (or
                at the end of the epoch that was being evaluated).
        """
        bar = self._bar(total=self.epochs, initial=start_epoch, desc="epochs", leave=True)
        try:
            with self.stop:
                for epoch in range(start_epoch, self.epochs):
                    record = self._fit_epoch(epoch, start_step, sums)
                    start_step, sums = 0, None
                    if bar is not None:
                        bar.update()
                        bar.set_postfix(
                            test_acc=f"{record['test/acc']:.4f}",
                            loss=f"{record['train/loss']:.3f}",
                        )
                    if self.stop.signal is not None and epoch + 1 < self.epochs:
                        name = signal.Signals(self.stop.signal).name
                        raise Interrupted(
                            f"stopped by {name} after epoch {epoch + 1}; its checkpoint is in "
                            f"{self.run_dir / CHECKPOINT_FILE}: run the same command again to "
                            "resume",
                            self.stop.signal,
                        )
        finally:
            if bar is not None:
                bar.close()

    def _fit_epoch(self, epoch: int, start_step: int, sums: _EpochSums | None) -> dict[str, Any]:
        begin = time.perf_counter()
        sums = self.train_epoch(epoch, start_step, sums)
        first_bad = int(sums.first_bad) if sums.first_bad is not None else -1
        if first_bad >= 0:
            raise self._diverged(epoch, first_bad)
        if sums.steps == 0:
            raise TrainingDiverged(
                f"every step of epoch {epoch + 1} had a non-finite loss (method "
                f"{self.method_name}); the checkpoint of the last good epoch is kept in "
                f"{self.run_dir}: lower the learning rate and pass restart=true"
            )
        record = self.epoch_record(epoch, sums, time.perf_counter() - begin)
        # Checkpoint before the result file, so the result never runs ahead of it.
        self.recorder.add(record)
        self.save_checkpoint(epoch + 1)
        self._hook(epoch + 1, "result")
        self.recorder.publish(record)
        return record

    def _bar(self, **kwargs: Any) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        kwargs.setdefault("leave", False)
        return tqdm(dynamic_ncols=True, **kwargs)
