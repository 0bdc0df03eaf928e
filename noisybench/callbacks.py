"""What a run does around training, as :class:`noisybench.engine.Callback` objects.

They observe the trainer and persist what it did; none touches gradients, the optimizer or the
method's state. :mod:`noisybench.run` puts them in this order, which matters: the checkpoint
of an epoch is written before the result file and the loggers see it, so the result never runs
ahead of the checkpoint.

* :class:`Checkpointer`: ``checkpoint.pt`` after every epoch and at the step boundary after
  SIGTERM/SIGINT (with the config and noise record, for the resume checks).
* :class:`FaultInjection`: the test suite's deterministic kill points (never set otherwise).
* :class:`ResultWriter`: ``result.json`` (status, header, history, last and best epochs).
* Loggers, chosen by the ``logger`` config group (one file and one YAML each):
  :class:`TensorBoardLogger`, :class:`CSVLogger`.
* :class:`ConsoleProgress`: progress bars on a terminal; one plain line per epoch in the log
  (and on the console) always, so a cluster job's log shows progress and results.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisybench.engine import Callback, Trainer
from noisybench.evaluation.selection import RULES, best_record, selection_summary
from noisybench.io import atomic_write_text, disk_full
from noisybench.provenance import result_fields
from noisybench.rundir import RunDir

__all__ = [
    "TEST_KILL_ENV",
    "CSVLogger",
    "Checkpointer",
    "ConsoleProgress",
    "FaultInjection",
    "LoggerGuard",
    "PredictionSnapshotWriter",
    "ResultWriter",
    "TensorBoardLogger",
    "code_version",
    "host_copy",
    "summarise",
]

log = logging.getLogger("noisybench")

TEST_KILL_ENV = "NOISYBENCH_TEST_KILL_AT"
TEST_KILL_RANK_ENV = "NOISYBENCH_TEST_KILL_RANK"  # only this process of a multi-process run
_HOOK_POINTS = ("end", "checkpoint", "result")


# ------------------------------------------------------------------------------ checkpoints
def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU (a copy also of CPU tensors) and every dict,
    list and tuple rebuilt, so that training may go on changing the originals."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class Checkpointer(Callback):
    """Saves the trainer's state with ``extra`` (config, noise record) into the run directory,
    at the end of every epoch and at a SIGTERM/SIGINT step boundary.

    ``background=True`` (config ``checkpoint_async``; ``auto``: on CUDA) writes an epoch's
    checkpoint in a thread while the next epoch trains: the state is first copied to the CPU
    (a consistent snapshot; a few ms on a GPU), and the write (temporary file, fsync, rename)
    then costs the training nothing, where it cost 0.1-10 s per epoch from CIFAR to ImageNet
    (``benchmarks/bench_checkpoint.py``). One write is in flight at a time: the next epoch's,
    an interruption's and the end of training wait for it, and its error (a full disk) is
    raised there. ``epochs_saved`` is the number of epochs the newest checkpoint on disk
    holds (``None`` before training starts), which the :class:`ResultWriter` follows, so
    ``result.json`` never claims an epoch that a crash would lose.

    ``before_replace`` (tests only) runs when a new checkpoint is complete on disk but not yet
    renamed into place; it receives the 1-based epoch the checkpoint belongs to.
    """

    def __init__(
        self,
        run_dir: RunDir,
        extra: Mapping[str, Any],
        before_replace: Any = None,
        background: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.extra = dict(extra)
        self.before_replace = before_replace
        self.background = bool(background)
        self.epochs_saved: int | None = None
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def _write(self, state: dict[str, Any]) -> None:
        epoch, step = int(state["epoch"]), int(state["step"])
        belongs_to = epoch + 1 if step > 0 else epoch
        hook = None
        if self.before_replace is not None:

            def hook() -> None:
                self.before_replace(belongs_to)

        self.run_dir.save_checkpoint({**state, **self.extra}, before_replace=hook)
        self.epochs_saved = len(state["history"])

    def _write_in_background(self, state: dict[str, Any]) -> None:
        try:
            self._write(state)
        except BaseException as exc:  # raised in the training thread by wait()
            self._error = exc

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        self.epochs_saved = len(trainer.history)  # those of the checkpoint resumed from

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if not self.background:
            with trainer.critical():
                self._write(trainer.state_dict(epoch + 1))
            return
        self.wait()
        snapshot = host_copy(trainer.state_dict(epoch + 1))
        # not a daemon: an exiting interpreter lets it finish rather than cut the write short
        self._writer = threading.Thread(
            target=self._write_in_background, args=(snapshot,), name="noisybench-checkpoint"
        )
        self._writer.start()

    def on_interrupt(self, trainer: Trainer, state: dict[str, Any]) -> None:
        self.wait()
        with trainer.critical():
            self._write(state)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.wait()

    def close(self) -> None:
        """Let a write in flight finish (at the end of a run that failed otherwise; its own
        error, if any, is logged: the run's error is the one reported)."""
        try:
            self.wait()
        except Exception as exc:
            log.warning("the last checkpoint write failed too: %s: %s", type(exc).__name__, exc)


# ------------------------------------------------------------------------------ test faults
def parse_kill_points(spec: str | None) -> dict[tuple[int, str], int]:
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


class FaultInjection(Callback):
    """The test suite's kill points (environment variable :data:`TEST_KILL_ENV`).

    Entries ``EPOCH:POINT[:SIGNAL]``: the process sends itself ``SIGNAL`` (KILL by default,
    TERM or INT) at ``POINT`` of ``EPOCH`` (1-based): a step number (0-based, before that
    step's batch is drawn), ``end`` (after the epoch's last step, before evaluation),
    ``checkpoint`` (while that epoch's checkpoint is written: the new file is complete but not
    yet renamed into place) or ``result`` (after the epoch's checkpoint, before the result
    file is updated). Put it after the :class:`Checkpointer` and before the result writer.
    In a multi-process run, :data:`TEST_KILL_RANK_ENV` (a rank) limits the kill points to that
    process (default: every process).
    """

    def __init__(self, spec: str | None) -> None:
        self.points = parse_kill_points(spec)

    @classmethod
    def from_env(cls, rank: int = 0) -> FaultInjection | None:
        spec = os.environ.get(TEST_KILL_ENV)
        only = os.environ.get(TEST_KILL_RANK_ENV)
        if only is not None and only.strip() and int(only) != int(rank):
            return None
        return cls(spec) if spec else None

    def fire(self, epoch: int, point: str) -> None:
        signum = self.points.get((epoch, point))
        if signum is not None:
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # let a handled signal's handler run before going on

    def on_step_start(self, trainer: Trainer, epoch: int, step: int) -> None:
        self.fire(epoch + 1, str(step))

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self.fire(epoch + 1, "end")

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.fire(epoch + 1, "result")

    def before_checkpoint_replace(self, epoch: int) -> None:
        self.fire(epoch, "checkpoint")


# ------------------------------------------------------------------------------ result file
def code_version() -> dict[str, Any]:
    """The package version and, when run from a git checkout, the commit and a dirty flag."""
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]
    try:
        version: str | None = metadata.version("noisybench")
    except metadata.PackageNotFoundError:
        version = None
    info: dict[str, Any] = {"package": version}
    if not (root / ".git").exists():
        info["git_commit"] = None
        return info
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch and the best epoch by test accuracy.

    The best epoch is selected on the test set, as the BSD paper (Table 4) and the CIFAR-N
    paper report it; it is flagged as such in the result file.
    """
    if not history:
        return {"last": None, "best": None}
    last = history[-1]
    best = best_record(history, RULES["best_test"][0])
    pick = ("epoch", "test/acc", "test/ece", "test/nll")
    return {
        "last": {k: last.get(k) for k in pick},
        "best": None
        if best is None
        else {**{k: best.get(k) for k in pick}, "selected_on": "test set"},
        # Every selection rule that applies: last, best on the test set (as the paper
        # reports), and the epoch selected on the noisy validation split when there is one.
        "selection": selection_summary(history),
    }


class ResultWriter(Callback):
    """Keeps ``result.json`` current: written when training starts (status "running", the
    history so far) and after every epoch, so a crash at any point leaves a readable file;
    :meth:`write` sets the final status ("finished", "interrupted", "failed"). Its history is
    the epochs the checkpoint holds (it must come after the :class:`Checkpointer`).

    ``min_interval_s`` (config ``result_interval_s``) skips the per-epoch rewrite of a running
    run until that many seconds have passed since the last write (the last epoch is always
    written). Each write serialises the whole history and fsyncs it: about 30 ms at 300 epochs
    on a local disk. Nothing is lost by skipping: the checkpoint, written and fsynced every
    epoch, holds the history, and a resumed run rewrites the file from it.
    """

    def __init__(
        self,
        run_dir: RunDir,
        header: Mapping[str, Any],
        write_file: bool = True,
        min_interval_s: float = 0.0,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.write_file = bool(write_file)  # False: other processes of a multi-process run
        self.header = dict(header)
        self.history: list[dict[str, Any]] = []
        self.started = time.time()
        self.min_interval_s = float(min_interval_s)
        self._last_write = -math.inf
        self.checkpointer = checkpointer

    def follow(self, trainer: Trainer) -> None:
        """Take the trainer's history up to the epochs the newest checkpoint holds (all of
        them unless a checkpoint is being written in the background)."""
        saved = None if self.checkpointer is None else self.checkpointer.epochs_saved
        history = trainer.history if saved is None else trainer.history[:saved]
        self.history = list(history)

    def write(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write the result file atomically and return its content."""
        result = {
            "status": status,
            **self.header,
            "history": self.history,
            **summarise(self.history),
            "wall_time_s": round(time.time() - self.started, 3),
            **result_fields(
                self.header,
                self.history,
                self.started,
                None if status == "running" else time.time(),
            ),
            **extra,
        }
        if self.write_file:
            self.run_dir.write_result(result)
        self._last_write = time.monotonic()
        return result

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        self.history = list(trainer.history)
        self.write("running")

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        # A copy taken only here, after the Checkpointer saved the epoch: when that save
        # fails (a full disk) the final "failed" write still shows the checkpointed epochs.
        self.follow(trainer)
        due = time.monotonic() - self._last_write >= self.min_interval_s
        if due or epoch + 1 >= trainer.epochs:
            self.write("running")

    def on_interrupt(self, trainer: Trainer, state: dict[str, Any]) -> None:
        self.follow(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.follow(trainer)


# ------------------------------------------------------------------------------ loggers
def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        out[key] = float(value)
    return out


class LoggerGuard(Callback):
    """Runs one logger's hooks so that its failure cannot fail the run it observes.

    A logger only reports: when one of its hooks raises (a TensorBoard ``hparams`` it cannot
    serialise, a remote tracker out of reach), the error is logged in one line, the logger is
    closed and skipped from then on, and ``failure`` says what happened; training, the
    checkpoint and ``result.json`` go on (the run still ends "finished", which a traceback at
    the last epoch used to turn into "failed", every time the run was resumed). A full disk is
    not the logger's fault and is raised on, to the run's full-disk message."""

    HOOKS = (
        "on_fit_start",
        "on_step_start",
        "on_step_end",
        "on_train_epoch_end",
        "on_epoch_end",
        "on_interrupt",
        "on_fit_end",
    )

    def __init__(self, name: str, logger: Any) -> None:
        self.name = name
        self.logger = logger
        self.failure: str | None = None
        self._close = getattr(logger, "close", None)
        for hook in self.HOOKS:  # only hooks the logger defines (no extra call per step)
            own = getattr(type(logger), hook, None)
            if callable(own) and own is not getattr(Callback, hook):
                setattr(self, hook, self._guarded(hook))

    def _guarded(self, hook: str) -> Any:
        def call(trainer: Trainer, *args: Any) -> None:
            if self.failure is None:
                self._run(hook, getattr(self.logger, hook), trainer, *args)

        return call

    def _run(self, hook: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            if disk_full(exc) is not None:
                raise
            if self.failure is not None:  # closing after its own failure: already reported
                return
            reason = " ".join(str(exc).split())[:200] or "no message"
            self.failure = f"logger {self.name} failed in {hook} ({type(exc).__name__}: {reason})"
            log.warning(
                "%s; it is switched off for the rest of this run (its output is incomplete), "
                "training and result.json go on; fix or drop it (logger=[...]) for later runs",
                self.failure,
            )
            self.close()

    def close(self) -> None:
        close, self._close = self._close, None
        if callable(close):  # once, also when called again by the run's final clean-up
            self._run("close", close)


class TensorBoardLogger(Callback):
    """A run in TensorBoard (``<run dir>/tb``, step = the 1-based epoch): every epoch's numbers
    as scalars; at the start the config as text and the noise transition matrix as an image;
    reliability diagrams and mu heatmaps of evaluation suites that run during training as
    images; at the end the hyperparameters with the final metrics (HParams tab, same run).

    On resume, TensorBoard drops what earlier writers logged from the last completed epoch on
    and that epoch is logged again, so a kill between the checkpoint and the scalars of an
    epoch leaves no gap and no duplicate."""

    def __init__(self, run_dir: RunDir, header: Mapping[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.header = dict(header or {})
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from noisybench import tb

        purge = max(len(trainer.history), 1) if trainer.resumed else None
        self.writer = SummaryWriter(log_dir=str(self.run_dir.tensorboard_dir), purge_step=purge)
        if not trainer.resumed and "config" in self.header:
            tb.log_run_start(self.writer, self.header["config"], self.header.get("noise"))
        if trainer.history:
            self._log(trainer.history[-1])

    def _log(self, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        from noisybench import tb

        self._log(record)
        if trainer.eval_details:
            tb.log_epoch_images(self.writer, trainer.eval_details, step=epoch + 1)

    def on_fit_end(self, trainer: Trainer) -> None:
        from noisybench import tb

        if "config" in self.header and trainer.history:
            summary = summarise(trainer.history)
            final = {"last": summary["last"], "best": summary["best"]}
            tb.log_hparams(self.writer, self.header["config"], final, len(trainer.history))
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CSVLogger(Callback):
    """One row per epoch in ``<run dir>/metrics.csv``, rewritten atomically from the whole
    history every epoch (so a resumed run never leaves duplicate or missing rows)."""

    FILE = "metrics.csv"

    def __init__(self, run_dir: RunDir, header: Mapping[str, Any] | None = None) -> None:
        self.path = run_dir.file(self.FILE)

    def _write(self, history: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for record in history:
            columns.extend(k for k in record if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.path, buffer.getvalue())

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        if trainer.history:
            self._write(trainer.history)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self._write(trainer.history)


class PredictionSnapshotWriter(Callback):
    """Saves the logits of a fixed training subset after chosen epochs into
    ``<run dir>/predictions/`` (Figure 11's input; ``eval.snapshots``)."""

    def __init__(self, run_dir: RunDir, images: Any, epochs: int, size: int, every: int, seed: int):
        from noisybench.evaluation.dark_knowledge import PredictionSnapshots

        self.snapshots = PredictionSnapshots(run_dir.path, images, epochs, size, seed, every)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.snapshots(epoch, trainer.predict)


# ------------------------------------------------------------------------------ console
def epoch_line(record: Mapping[str, Any], epochs: int, eta_s: float = math.nan) -> str:
    """The per-epoch console line: ``epoch 3/100: train loss 1.2345, test acc 0.8123, 0.2 s,
    lr 0.004, ETA 0:00:19`` (ETA left out until one epoch of this session has been timed)."""
    line = (
        f"epoch {record['epoch']}/{epochs}: train loss {record.get('train/loss', math.nan):.4f}, "
        f"test acc {record.get('test/acc', math.nan):.4f}, "
        f"{record.get('epoch_time_s', math.nan):.1f} s"
    )
    lr = record.get("lr")
    if isinstance(lr, int | float) and math.isfinite(lr):
        line += f", lr {lr:.3g}"
    if math.isfinite(eta_s):
        seconds = round(eta_s)
        line += f", ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return line


class ConsoleProgress(Callback):
    """Progress for people and for logs.

    Every epoch logs one plain line (epoch, loss, test accuracy, time) through the
    ``noisybench`` logger, which Hydra sends to the console and to ``noisybench.log``. With
    ``bars=True`` and a terminal on stderr, tqdm bars show the steps and epochs as well; when
    stderr is not a terminal (a pipe, a cluster log) no bar and no escape code is written.
    """

    def __init__(self, bars: bool = True, stream: Any = None) -> None:
        stream = sys.stderr if stream is None else stream
        self.bars = bool(bars) and hasattr(stream, "isatty") and stream.isatty()
        self.stream = stream
        self._epoch_bar: Any = None
        self._step_bar: Any = None
        self._started: float | None = None
        self._first_epoch = 0

    def _eta(self, done: int, total: int) -> float:
        """Seconds left: this session's wall time per epoch (training and evaluation) times
        the epochs left."""
        now = time.monotonic()
        if self._started is None or done <= self._first_epoch:
            self._started, self._first_epoch = now, done
            return math.nan
        return (now - self._started) / (done - self._first_epoch) * (total - done)

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        self._started, self._first_epoch = time.monotonic(), start_epoch
        if self.bars:
            from tqdm.auto import tqdm

            self._epoch_bar = tqdm(
                total=trainer.epochs, initial=start_epoch, desc="epochs", file=self.stream
            )

    def on_step_start(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self.bars and self._step_bar is None:
            from tqdm.auto import tqdm

            self._step_bar = tqdm(
                total=trainer.epoch_steps,
                initial=step,
                desc=f"epoch {epoch + 1}/{trainer.epochs}",
                leave=False,
                file=self.stream,
            )

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self._step_bar is not None:
            self._step_bar.update()

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if self._step_bar is not None:
            self._step_bar.close()
            self._step_bar = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        line = epoch_line(record, trainer.epochs, self._eta(record["epoch"], trainer.epochs))
        if self._epoch_bar is not None:  # clear the bars, write the line, redraw them below
            with self._epoch_bar.external_write_mode(file=self.stream):
                log.info("%s", line)
        else:
            log.info("%s", line)
        if self._epoch_bar is not None:
            self._epoch_bar.update()
            self._epoch_bar.set_postfix(
                test_acc=f"{record.get('test/acc', math.nan):.4f}",
                loss=f"{record.get('train/loss', math.nan):.3f}",
            )

    def close(self) -> None:
        for bar in (self._step_bar, self._epoch_bar):
            if bar is not None:
                bar.close()
        self._step_bar = self._epoch_bar = None

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()
