"""One run: its directory, the objects :func:`noisybench.build.build` makes, the callbacks,
``Trainer.fit``, and what each way of ending means for the result file.

The run directory (:class:`noisybench.rundir.RunDir`) decides first, reading only, whether
the run is new, resumes, or is already finished (then it is reported, not rerun); everything
is then built from the config; only after that does anything in the directory change. So bad
input never touches an earlier run.

Several processes (torchrun, srun; :mod:`noisybench.distributed`): every process reads the run
directory and the same checkpoint and trains; only rank 0 takes the lock, writes (labels,
checkpoint, result, loggers, console lines) and moves earlier files aside, after a barrier
that every process reaches once it has read the directory and built everything.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from noisybench import distributed
from noisybench.build import Experiment, build, resolve_auto
from noisybench.callbacks import (
    Checkpointer,
    ConsoleProgress,
    FaultInjection,
    LoggerGuard,
    PredictionSnapshotWriter,
    ResultWriter,
    code_version,
)
from noisybench.config import check_config, instantiate, resolved
from noisybench.engine import Interrupted, TrainingDiverged
from noisybench.errors import UserError
from noisybench.evaluation.selection import objective
from noisybench.evaluation.selection import resolve as resolve_selection
from noisybench.io import disk_full
from noisybench.rundir import RunDir, run_dir_for
from noisybench.selected import SelectedWeights

__all__ = ["RunFailed", "run_experiment"]

log = logging.getLogger("noisybench")


class RunFailed(RuntimeError):
    """Training diverged (the message names the method, epoch and step, and what to do), or
    another process of a multi-process run ended."""


def _noise_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k) != current.get(k)]


def _check_noise(run_dir: RunDir, ckpt: dict[str, Any], exp: Experiment) -> None:
    saved = ckpt.get("noise") if isinstance(ckpt.get("noise"), dict) else {}
    current = exp.noise.to_dict()
    diff = _noise_differences(saved, current)
    if diff:
        raise UserError(
            f"the checkpoint in {run_dir} was trained on different noisy labels (differing "
            f"noise record keys: {', '.join(diff)}; labels sha256 "
            f"{str(saved.get('sha256', '?'))[:12]} then, {exp.noise.sha256[:12]} now); use "
            "another run_name=... or pass restart=true to start over"
        )


def _dataset_manifest(exp: Experiment) -> dict[str, Any] | None:
    """A real-noise dataset's manifest summary (name, manifest SHA-256, split sizes, missing
    images skipped; :func:`noisybench.data.realnoise.summary`), recorded in result.json's
    header and the checkpoint as ``dataset_manifest`` (issue 24): the images cannot be
    redistributed, so the manifest hash is what makes two groups' runs comparable. None for
    other datasets."""
    from noisybench.data.realnoise import RealNoiseData, summary

    return summary(exp.data) if isinstance(exp.data, RealNoiseData) else None


def _check_manifest(run_dir: RunDir, ckpt: dict[str, Any], exp: Experiment) -> None:
    """Refuse to resume a real-noise run on other files or labels than it started with (the
    checkpoint's manifest SHA-256 against the data read now); a checkpoint without one (an
    older run, another dataset) passes."""
    from noisybench.data.realnoise import RealNoiseData, check_manifest

    saved = ckpt.get("dataset_manifest")
    if isinstance(exp.data, RealNoiseData):
        check_manifest(saved if isinstance(saved, dict) else None, exp.data, str(run_dir))


def _loggers(cfg: DictConfig, run_dir: RunDir, header: dict[str, Any]) -> list[LoggerGuard]:
    """The ``logger`` group's callbacks, each in a :class:`LoggerGuard` (a failing logger is
    switched off, not the run); each is built with ``run_dir=`` and ``header=`` (the result
    file's header: config, noise record, seeds, ...)."""
    chosen = cfg.get("logger") or {}
    return [
        LoggerGuard(
            name,
            # _convert_="all": Hydra would otherwise hand ``header`` over as a DictConfig,
            # whose lists (e.g. KD's teacher_runs) TensorBoard's hparams cannot serialise
            instantiate(
                node,
                f"logger {name}",
                run_dir=run_dir,
                header=header,
                _recursive_=False,
                _convert_="all",
            ),
        )
        for name, node in chosen.items()
        if node is not None
    ]


def _diverged_message(exc: TrainingDiverged, cfg: DictConfig, run_dir: RunDir) -> str:
    where = (
        f"at epoch {exc.epoch}, step {exc.step}"
        if exc.step is not None
        else f"at every step of epoch {exc.epoch}"
    )
    if exc.checkpoint_kept:
        kept = (
            f"the checkpoint of the last good epoch is kept in {run_dir}: run the same command "
            "with nonfinite=skip to resume from it skipping such steps, or restart=true with a "
            "lower learning rate"
        )
    else:
        kept = (
            "no checkpoint was written yet (it diverged in its first epoch): lower the learning "
            "rate, or use nonfinite=skip to skip such steps"
        )
    return f"the loss of method {cfg.method.name} became non-finite {where}; {kept}"


def run_experiment(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume, or report) the experiment ``cfg`` describes in ``run_dir`` (default:
    ``out_dir/run_name``).

    Returns the content of the result file. Raises :class:`UserError` for bad input,
    :class:`RunFailed` when the loss diverged and :class:`Interrupted` when SIGTERM/SIGINT
    stopped training; in every case the run directory keeps its last good checkpoint and a
    readable result file.
    """
    check_config(cfg)
    config = resolved(cfg)
    dist_cfg = cfg.get("distributed") or {}
    distributed.init(str(dist_cfg.get("backend", "auto")), float(dist_cfg.get("timeout_s", 600.0)))
    rd = RunDir(run_dir if run_dir is not None else run_dir_for(cfg.out_dir, str(cfg.run_name)))
    rd.probe_writable()
    main = distributed.is_main()
    try:
        if main:
            rd.prepare()
        with rd.lock() if main else contextlib.nullcontext():
            return _run_locked(cfg, config, rd)
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        raise UserError(_disk_full_message(rd, full, None)) from None


def _disk_full_message(rd: RunDir, error: OSError | None, epochs_kept: int | None) -> str:
    """One line for a write that failed because the disk (or the quota) is full."""
    error = error or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    where = f" writing {Path(error.filename).name}" if error.filename else ""
    if epochs_kept:
        kept = (
            f"the checkpoint of epoch {epochs_kept} and a result file with the same epochs are kept"
        )
    else:
        kept = "nothing earlier was lost"
    return (
        f"the disk holding {rd} is full ({error.strerror or 'no space left'}{where}); {kept}: "
        f"free some space there (df -h {rd}) and run the same command again to resume, or "
        "choose an out_dir=... on a disk with room"
    )


def _run_locked(cfg: DictConfig, config: dict[str, Any], rd: RunDir) -> dict[str, Any]:
    """Build, restore, prepare the run directory, train, and write the result: the run
    directory is not touched until everything is built and the checkpoint is read."""
    state = rd.inspect(config, restart=bool(cfg.restart))
    if state.finished is not None:
        log.info("%s", rd.finished_message(state.finished))
        return state.finished
    exp = build(cfg)
    _log_noise(cfg, exp)
    ckpt = state.checkpoint
    if ckpt is not None:
        _check_noise(rd, ckpt, exp)
        _check_manifest(rd, ckpt, exp)
    parts = _callbacks(cfg, config, rd, exp)
    trainer = exp.trainer(parts.callbacks)
    start = _restore(trainer, ckpt, rd)
    parts.result_writer.history = list(trainer.history)
    _prepare_run_dir(rd, exp, resuming=ckpt is not None)
    if ckpt is not None:
        log.info("resuming %s at epoch %d, step %d", rd, start[0] + 1, start[1])
    try:
        _fit(cfg, rd, trainer, parts, start)
    finally:
        _close_all(parts.callbacks)
    return _finish(rd, parts)


def _log_noise(cfg: DictConfig, exp: Experiment) -> None:
    log.info(
        "noise %s (%s): nominal rate %.3f, realised %.4f, seed %d, labels sha256 %s",
        cfg.noise.name,
        exp.noise.variant,
        exp.noise.nominal_rate,
        exp.noise.realised_rate,
        exp.noise.seed,
        exp.noise.sha256[:16],
    )


@dataclass
class _Callbacks:
    """The run's callbacks, with the ones the loop and the result need by name."""

    callbacks: list[Any]
    result_writer: ResultWriter
    checkpointer: Checkpointer | None
    loggers: list[LoggerGuard]


def _callbacks(cfg: DictConfig, config: dict[str, Any], rd: RunDir, exp: Experiment) -> _Callbacks:
    """Checkpoints, the result file, loggers, snapshots and progress on the writing process;
    the result writer (which writes nothing there) and fault injection on the others."""
    main = distributed.is_main()
    faults = FaultInjection.from_env(distributed.rank())
    noise = exp.noise.to_dict()
    rule = resolve_selection(
        cfg.get("selection"), exp.validation is not None, exp.source.labels.clean_val is not None
    )
    manifest = _dataset_manifest(exp)
    extra = {} if manifest is None else {"dataset_manifest": manifest}
    header = {
        "run_dir": str(rd),
        "config": config,
        "code_version": code_version(),
        "seeds": {"train": int(cfg.seed), "noise": int(cfg.noise.seed)},
        "noise": noise,
        "validation": exp.validation,
        "device": str(exp.device),
        "num_parameters": sum(p.numel() for p in exp.model.parameters()),
        "train_images": len(exp.noisy_labels),  # per epoch: the cost's images per second
        "selection_rule": rule,  # the headline number's epoch, and selected.pt's
        "processes": distributed.world_size(),
        **extra,  # a real-noise dataset's manifest summary
    }
    background = resolve_auto(cfg.get("checkpoint_async", False), exp.device, "checkpoint_async")
    checkpointer = (
        Checkpointer(
            rd,
            {"config": config, "noise": noise, **extra},
            before_replace=None if faults is None else faults.before_checkpoint_replace,
            background=background,
        )
        if main
        else None
    )
    result_writer = ResultWriter(
        rd,
        header,
        write_file=main,
        min_interval_s=float(cfg.get("result_interval_s") or 0),
        checkpointer=checkpointer,
    )
    faulty = [faults] if faults is not None else []
    if not main:  # other processes write nothing
        return _Callbacks([*faulty, result_writer], result_writer, None, [])
    loggers = _loggers(cfg, rd, header)
    callbacks: list[Any] = [
        SelectedWeights(rd.path, rule),  # before the checkpointer (see its docstring)
        checkpointer,
        *faulty,
        result_writer,
        *loggers,
        *_snapshots(cfg, rd, exp),
        ConsoleProgress(bars=bool(cfg.progress)),
    ]
    return _Callbacks(callbacks, result_writer, checkpointer, loggers)


def _snapshots(cfg: DictConfig, rd: RunDir, exp: Experiment) -> list[Any]:
    """The prediction-snapshot writer when ``eval.snapshots.size`` > 0 (Figure 11)."""
    snapshots = cfg.eval.get("snapshots") or {}
    if int(snapshots.get("size") or 0) <= 0:
        return []
    writer = PredictionSnapshotWriter(
        rd,
        exp.source.images("train"),
        int(cfg.epochs),
        size=int(snapshots.size),
        every=int(snapshots.get("every") or 1),
        seed=int(snapshots.get("seed") or 0),
    )
    return [writer]


def _restore(trainer: Any, ckpt: dict[str, Any] | None, rd: RunDir) -> tuple[int, int, Any]:
    """Where to start: ``(epoch, step, running sums)`` from the checkpoint, or the start."""
    if ckpt is None:
        return 0, 0, None
    try:
        return trainer.load_state_dict(ckpt)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(
            f"the checkpoint in {rd} does not fit this version of noisybench or this config "
            f"({type(exc).__name__}: {reason}); pass restart=true to start over (old files "
            "go to previous/), or resume with the noisybench version that wrote it"
        ) from None


def _prepare_run_dir(rd: RunDir, exp: Experiment, resuming: bool) -> None:
    """From here on the run directory changes (rank 0 only, once every process has read
    it): earlier files moved aside, temporaries removed, the noisy labels (re)written."""
    distributed.barrier()
    if not distributed.is_main():
        return
    if not resuming:
        moved = rd.move_aside()
        if moved:
            log.info("earlier files of %s moved to %s", rd, moved)
    rd.clean_temporaries()
    if not rd.label_file.exists() or not rd.labels_match(exp.noise.sha256):
        if rd.label_file.exists():
            log.warning("%s was damaged or stale; rewritten from the noise record", rd.label_file)
        rd.save_labels(exp.noisy_labels)


def _fit(
    cfg: DictConfig, rd: RunDir, trainer: Any, parts: _Callbacks, start: tuple[int, int, Any]
) -> None:
    """Train; every way training can end becomes a result-file status and one error."""
    result_writer = parts.result_writer
    try:
        try:
            trainer.fit(*start)
        except BaseException:
            # a checkpoint being written in the background finishes first, so that the
            # result file below holds exactly the epochs of the newest checkpoint
            if parts.checkpointer is not None:
                parts.checkpointer.close()
            result_writer.follow(trainer)
            raise
    except Interrupted as exc:
        result_writer.write("interrupted", error=f"{exc} (run directory {rd})")
        raise Interrupted(f"{exc} (run directory {rd})", exc.signum) from None
    except KeyboardInterrupt:
        message = (
            "interrupted by a second SIGINT/SIGTERM during a step; the last checkpoint is kept: "
            "run the same command again to resume"
        )
        result_writer.write("interrupted", error=message)
        raise Interrupted(message, signal.SIGINT) from None
    except TrainingDiverged as exc:
        message = _diverged_message(exc, cfg, rd)
        result_writer.write("failed", error=message)
        raise RunFailed(message) from None
    except distributed.PeerFailed as exc:
        message = (
            f"{exc}; the last checkpoint in {rd} is kept: run the same command again (with the "
            "same number of processes) to resume"
        )
        result_writer.write("failed", error=message)
        raise RunFailed(message) from None
    except Exception as exc:
        if disk_full(exc) is None:
            result_writer.write("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        # The result file keeps the epochs the checkpoint holds (the ResultWriter's history
        # stops at the last epoch whose checkpoint was written); it may not fit on the disk.
        message = _disk_full_message(rd, disk_full(exc), len(result_writer.history))
        with contextlib.suppress(OSError):
            result_writer.write("failed", error=message)
        raise UserError(message) from None


def _finish(rd: RunDir, parts: _Callbacks) -> dict[str, Any]:
    """The finished result file (with the loggers' failures, if any)."""
    failures = [guard.failure for guard in parts.loggers if guard.failure is not None]
    result = parts.result_writer.write(
        "finished", **({"logger_failures": failures} if failures else {})
    )
    best, last = result["best"] or {}, result["last"] or {}
    log.info(
        "finished %s: last-epoch test acc %.4f, best %.4f at epoch %s (selected on the test set)",
        rd,
        last.get("test/acc", float("nan")),
        best.get("test/acc", float("nan")),
        best.get("epoch"),
    )
    for failure in failures:
        log.warning("%s: its output for %s is incomplete", failure, rd)
    return result


def _close_all(callbacks: list[Any]) -> None:
    """Close every callback that has ``close`` (all of them, even when one fails on a full
    disk: then the first error is raised once all are closed)."""
    first: BaseException | None = None
    for callback in callbacks:
        close = getattr(callback, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as exc:
            first = first or exc
    if first is not None and sys.exc_info()[1] is None:
        raise first


def selection_metric(result: dict[str, Any]) -> float:
    """The number a sweeper optimises: the validation accuracy at the epoch the run's
    ``selection`` picks; a test-set number only with ``tune_on_test=true``
    (:func:`noisybench.evaluation.selection.objective`)."""
    return objective(result)
