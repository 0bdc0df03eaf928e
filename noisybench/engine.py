"""The training loop: the one place that runs backward, optimizer and scheduler steps and AMP.

Methods (``noisybench.method.Method``) only turn a batch into a loss; the engine never
branches on a method's name. It alone sees the clean training labels, so it alone computes
the memorisation and label-recovery diagnostics.

GPU-friendly by construction: the data stay on the device, per-step numbers are accumulated
as device tensors and converted to Python numbers once per epoch (no per-step ``.item()``),
except in ``nonfinite="skip"`` mode, which must look at every loss before stepping.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisybench import metrics
from noisybench.io import atomic_save_checkpoint
from noisybench.method import Method
from noisybench.recorder import Recorder
from noisybench.schedules import adam_beta1

__all__ = ["CHECKPOINT_FILE", "EvalData", "Interrupted", "Trainer", "TrainingDiverged"]

CHECKPOINT_FILE = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written at the step boundary."""


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
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries (restored on exit)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second signal: give up waiting for the step
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state() -> dict[str, Any]:
    """Torch's global RNG states (CPU and every CUDA device): all randomness of a run
    (augmentation, dropout, CutMix/MixUp draws) comes from them."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        atomic_save_checkpoint(self.state_dict(epoch, step, sums), self.run_dir / CHECKPOINT_FILE)

    # ----------------------------------------------------------------- training
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

    def train_epoch(
        self, epoch: int, start_step: int = 0, sums: _EpochSums | None = None
    ) -> _EpochSums:
        """One pass over the training set (from ``start_step`` when resuming mid-epoch)."""
        self.model.train()
        self.method.train()
        self._set_beta1(epoch)
        sums = sums or _EpochSums.zeros(self.device)
        steps = self._progress(
            self.loader.epoch(epoch, start_step),
            total=len(self.loader),
            initial=start_step,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
        )
        for step, batch in enumerate(steps, start=start_step):
            if self.stop.signal is not None:
                self.save_checkpoint(epoch, step, sums)
                raise Interrupted(
                    f"stopped by signal {self.stop.signal} at epoch {epoch + 1}, step {step}; "
                    "run the same command again to resume"
                )
            with self._autocast():
                out = self.method.training_step(self.model, batch, epoch)
            loss = out.loss
            finite = torch.isfinite(loss.detach())
            if self.nonfinite == "skip" and not bool(finite):  # one host sync, skip mode only
                sums.skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                continue
            sums.first_bad = torch.where(
                (sums.first_bad < 0) & ~finite,
                torch.full_like(sums.first_bad, step),
                sums.first_bad,
            )
            self.optimizer.zero_grad(set_to_none=True)
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
        return sums

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
        """Train from ``start_epoch`` (and ``start_step`` within it) to the end."""
        epochs = self._progress(
            range(start_epoch, self.epochs), total=self.epochs, initial=start_epoch, desc="epochs"
        )
        with self.stop:
            for epoch in epochs:
                begin = time.perf_counter()
                sums = self.train_epoch(epoch, start_step, sums)
                start_step = 0
                first_bad = int(sums.first_bad) if sums.first_bad is not None else -1
                if first_bad >= 0:
                    raise TrainingDiverged(
                        f"the loss of method {self.method_name} became non-finite at epoch "
                        f"{epoch + 1}, step {first_bad}; the checkpoint of the last good epoch "
                        f"is kept in {self.run_dir}; lower the learning rate or set "
                        "nonfinite=skip to skip such steps"
                    )
                if sums.steps == 0:
                    raise TrainingDiverged(
                        f"every step of epoch {epoch + 1} had a non-finite loss (method "
                        f"{self.method_name}); lower the learning rate"
                    )
                record = self.epoch_record(epoch, sums, time.perf_counter() - begin)
                sums = None
                # Checkpoint before the result file, so the result never runs ahead of it.
                self.recorder.add(record)
                self.save_checkpoint(epoch + 1)
                self.recorder.publish(record)
                if hasattr(epochs, "set_postfix"):
                    epochs.set_postfix(
                        test_acc=f"{record['test/acc']:.4f}", loss=f"{record['train/loss']:.3f}"
                    )

    def _progress(self, iterable: Any, **kwargs: Any) -> Iterator[Any] | Any:
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs)
