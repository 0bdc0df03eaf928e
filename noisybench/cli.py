"""Command line: ``noisybench [group=option ...] [key=value ...] [-m] [Hydra flags]`` (also
``python -m noisybench``), plus ``noisybench report RUNS ...`` (:mod:`noisybench.report`) and
``noisybench evaluate RUN_DIR ...`` (:mod:`noisybench.evaluate`). Nothing in the library
imports this module.

Hydra composes ``conf/config.yaml`` with the overrides and runs one experiment
(:func:`noisybench.run.run_experiment`) per job; ``-m`` sweeps through Hydra's sweepers and
launchers (basic, joblib, submitit, Optuna). Every Hydra flag works as Hydra documents it
(``--help``, ``--hydra-help``, ``--cfg``, ``--info``, ``-sc``, ``-cd``, ``-cn``, ``-cp``,
``--experimental-rerun``); the task returns the run's selection metric (last-epoch test
accuracy) so that optimising sweepers have a number.

Before Hydra creates or touches a run directory, every job is checked (these checks import
neither torch nor the data): each ``group=option`` must exist, the overrides must compose (a
misspelt or ``+``-added unknown key is refused with a "did you mean"), the values must be
valid, the run directory must stay inside ``out_dir`` and be writable, and one that already
holds a run must hold the same experiment. A finished run is reported and left alone (exit
status 0) unless ``restart=true``. Bad input ends in one line on stderr,
``noisybench: error: ...``, never a traceback wall.

Exit statuses: 0 done (or already finished); 1 training diverged, or some runs of a sweep
failed; 2 bad input; 128 + signal number when SIGINT (130) or SIGTERM (143) stopped a run
after writing a checkpoint. A sweep ends with one summary table on stdout (every job's run
directory, status and accuracy), whatever the launcher; its exit status is 1 when any run did
not finish.

Under torchrun or srun every process runs this command line; the processes other than rank 0
give Hydra no output subdirectory and no log file (``hydra.output_subdir=null``,
``hydra/job_logging=stdout`` at level WARNING), print errors only when they are their own (a
divergence or a signal is reported by rank 0), and write nothing into the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from noisybench.config import (
    CONF_DIR,
    GROUPS,
    check_config,
    compose,
    resolved,
    search_dirs,
    validate_choices,
)
from noisybench.distributed import env_world
from noisybench.errors import UserError
from noisybench.io import disk_full
from noisybench.rundir import RunDir, run_dir_for
from noisybench.safety import check_tree, take_command_line

__all__ = ["CONF_DIR", "GROUPS", "main", "validate_choices"]

log = logging.getLogger("noisybench")

# Flags after which Hydra does not run the task (help, config printing, completion, info),
# or that point Hydra at another config: the checks below are Hydra's then.
_PASS_THROUGH = {
    "-h",
    "--help",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "-sc",
    "--shell-completion",
    "--version",
    "-cd",
    "--config-dir",
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "--experimental-rerun",
}
_MULTIRUN = ("-m", "--multirun")
_MAX_CHECKED_JOBS = 2000


def _fail(message: str, status: int, quiet: bool = False) -> None:
    """Print the one-line error (unless ``quiet``: another process reports it) and exit."""
    # A Ctrl-C (or SIGTERM) arriving while the process exits would print a traceback from
    # an exit handler: the process is ending anyway, so later ones are ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(sig, signal.SIG_IGN)
    rank, world, _ = env_world()
    if not quiet:
        where = f" (process {rank} of {world})" if world > 1 and rank > 0 else ""
        print(f"noisybench: error{where}: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)  # no shutdown of a process group here: its peers may be gone


def _quiet_disk_full_in_threads(args: Any) -> None:
    """``threading.excepthook``: a background thread (TensorBoard's event writer, the
    checkpoint writer) that fails because the disk is full prints nothing more: the run's own
    one-line error already says so. Any other thread error goes to Python's default hook."""
    if disk_full(args.exc_value) is not None:
        return
    _DEFAULT_THREAD_HOOK(args)


_DEFAULT_THREAD_HOOK = threading.excepthook


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def _overrides(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


# ------------------------------------------------------------------------------ checks
def _job_run_dir(cfg: DictConfig) -> Path:
    """The run directory Hydra will use for a composed job (``out_dir/run_name``)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    out_dir = OmegaConf.select(cfg, "out_dir")
    name = OmegaConf.select(cfg, "run_name")
    return run_dir_for(str(out_dir or ""), str(name or ""))


# Run directories this command will create (absolute path -> the first directory of the path
# that does not exist yet): one whose run fails on bad input is removed again when it holds
# nothing but Hydra's own files (see _remove_skeleton).
_NEW_DIRS: dict[str, Path] = {}
_HYDRA_ONLY = {".hydra", "noisybench.log", ".lock"}


def _note_new_dir(path: Path) -> None:
    first = None
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        first, probe = probe, probe.parent
    if first is not None:
        _NEW_DIRS[os.path.abspath(path)] = first


def _remove_skeleton(run_dir: str | Path) -> None:
    """Remove a run directory this command created when a run failed on bad input and left
    only Hydra's records (``.hydra/``, ``noisybench.log``) and the lock, and the empty
    directories above it that this command created."""
    path = Path(os.path.abspath(run_dir))
    first = _NEW_DIRS.get(str(path))
    if first is None or not path.is_dir():
        return
    if any(entry.name not in _HYDRA_ONLY for entry in path.iterdir()):
        return
    shutil.rmtree(path, ignore_errors=True)
    parent = path.parent
    while path != first and parent != parent.parent:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            return
        path, parent = parent, parent.parent


def _check_job(overrides: Sequence[str], dirs: Sequence[Path]) -> tuple[RunDir, Any]:
    """Compose one job and refuse bad input before anything is written. Returns its run
    directory and the result of an already finished run there (None otherwise)."""
    cfg = compose(overrides, return_hydra_config=True, search_dirs=dirs[1:])
    check_tree(cfg)  # the job's _target_s and Hydra's (callbacks, launcher, logging handlers)
    run_dir = RunDir(_job_run_dir(cfg))
    _note_new_dir(run_dir.path)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_config(job)
    config = resolved(job)
    run_dir.probe_writable()
    if job.restart or not run_dir.path.is_dir():
        return run_dir, None
    # The result file only: the checkpoint (possibly gigabytes) is read once, by the run,
    # which compares its config again before resuming.
    return run_dir, run_dir.check_existing(config)


def _sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override list of every job of a basic sweep, in the order Hydra's basic sweeper
    launches them (the product of the comma-separated choices, the last key varying fastest;
    through Hydra's public override parser). None: another sweeper decides."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(o.split("=", 1)[0] == "hydra/sweeper" for o in overrides):
        return None
    try:
        choices = []
        for override in OverridesParser.create().parse_overrides(overrides=overrides):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices.append([f"{key}={override.get_value_element_as_str()}"])
            elif override.is_discrete_sweep():
                choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
            else:
                raise ValueError(f"{key}: a range or interval sweep needs a sweeper plugin")
    except (HydraException, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"cannot expand the sweep ({detail}); check the comma-separated values"
        ) from None
    return [list(job) for job in itertools.product(*choices)]


def _preflight_sweep(overrides: list[str], dirs: Sequence[Path]) -> list[RunDir] | None:
    jobs = _sweep_jobs(overrides)
    if jobs is None:
        return None
    run_dirs = []
    seen: dict[str, int] = {}
    for number, job in enumerate(jobs[:_MAX_CHECKED_JOBS]):
        try:
            run_dir = _check_job(job, dirs)[0]
        except UserError as exc:
            raise UserError(f"job {number} of the sweep ({' '.join(job)}): {exc}") from None
        # Two jobs in one directory: one would be refused (the directory is locked, or holds
        # the other experiment) and the summary would show the other's result as its own.
        key = os.path.abspath(run_dir.path)
        if key in seen:
            raise UserError(
                f"jobs {seen[key]} and {number} of the sweep both write to {run_dir.path}; give "
                "each job its own directory (leave run_name at its default, or put the swept "
                "keys into it, e.g. run_name=name/${seed})"
            )
        seen[key] = number
        run_dirs.append(run_dir)
    return run_dirs if len(jobs) <= _MAX_CHECKED_JOBS else None


# ------------------------------------------------------------------------------ summary
def _summary(run_dirs: Sequence[RunDir], failures: dict[str, str]) -> tuple[str, int]:
    """A Markdown table of the sweep's runs and the number that did not finish."""
    rows = ["| run directory | status | last test acc | best test acc |", "|---|---|---|---|"]
    bad = 0
    for rd in run_dirs:
        result = rd.read_result() or {}
        status = str(result.get("status") or "no result")
        if status != "finished":
            bad += 1

        def acc(entry: Any) -> str:
            value = entry.get("test/acc") if isinstance(entry, dict) else None
            return f"{value:.4f}" if isinstance(value, int | float) else "–"

        note = failures.get(str(rd.path)) or result.get("error")
        if status == "no result" and note is None:
            note = f"see {rd.path / 'noisybench.log'}"
        shown = status if not note else f"{status}: {' '.join(str(note).split())[:120]}"
        rows.append(
            f"| {rd.path} | {shown} | {acc(result.get('last'))} | {acc(result.get('best'))} |"
        )
    return "\n".join(rows), bad


# ------------------------------------------------------------------------------ entry points
_FAILURES: dict[str, str] = {}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from noisybench.distributed import PeerFailed
    from noisybench.engine import Interrupted
    from noisybench.run import RunFailed, run_experiment, selection_metric

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = HydraConfig.get().runtime.output_dir
    other_rank = env_world()[0] > 0
    if multirun:  # an optimising sweeper must not tune on the test set unless told
        from noisybench.evaluation.selection import check_tuning

        try:
            check_tuning(cfg, HydraConfig.get().sweeper.get("_target_"))
        except UserError as exc:
            # The sweeper created this job's directory: remove it and the empty ones above,
            # up to out_dir (rmdir only removes empty directories).
            path, out = Path(os.path.abspath(run_dir)), Path(os.path.abspath(cfg.out_dir))
            if out in path.parents:
                _NEW_DIRS.setdefault(str(path), out / path.relative_to(out).parts[0])
            _remove_skeleton(run_dir)
            _fail(str(exc), 2, quiet=other_rank)
    try:
        return selection_metric(run_experiment(cfg, run_dir=run_dir))
    except PeerFailed as exc:  # before training: another process failed to start
        _fail(f"{exc}; see its error above", 1, quiet=other_rank)
    except (UserError, RunFailed) as exc:
        if isinstance(exc, UserError):
            _remove_skeleton(run_dir)
        if not multirun:
            # rank 0 reports a divergence; any process reports its own bad input or a peer's end
            shared = isinstance(exc, RunFailed) and "another process" not in str(exc)
            _fail(str(exc), 2 if isinstance(exc, UserError) else 1, quiet=other_rank and shared)
        log.error("run %s failed: %s", run_dir, exc)
        _FAILURES[str(Path(run_dir))] = str(exc)
        return math.nan
    except Interrupted as exc:
        _fail(str(exc), 128 + exc.signum, quiet=other_rank)
    return math.nan


_SUBCOMMANDS = {
    "report": "noisybench.report",  # tables and figures over run directories
    "evaluate": "noisybench.evaluate",  # evaluation suites on finished runs
    "suite": "noisybench.suite",  # a named benchmark suite (conf/suite/NAME.yaml)
}


def _print_job_error(exc: BaseException) -> None:
    """Print an unexpected error of a job the way Hydra prints it without
    ``HYDRA_FULL_ERROR``: a configuration error as its message, any other error as its
    traceback from the job's frame (``run_job``) on, without Hydra's frames above it; then
    the hint that ``HYDRA_FULL_ERROR=1`` shows all of them."""
    import traceback

    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, CompactHydraException):
        print(exc, file=sys.stderr)
        if isinstance(exc.__cause__, OmegaConfBaseException):
            print(exc.__cause__, file=sys.stderr)
    else:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name != "run_job":
            tb = tb.tb_next
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # the job's own frames (Hydra's run_job itself left out)
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)
    print(
        "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
        file=sys.stderr,
    )


def _run_hydra(passthrough: bool) -> None:
    """Run Hydra; a full disk (even while Hydra writes its own records) ends in one line.

    With ``HYDRA_FULL_ERROR`` set here every error comes back to this function (Hydra
    would otherwise print it and exit): an unexpected one is printed as Hydra prints it
    (:func:`_print_job_error`) and ends the command with status 1; when the user set
    ``HYDRA_FULL_ERROR`` it is raised whole."""
    if passthrough:
        _hydra_main()
        return
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except Exception as exc:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        full = disk_full(exc)
        if full is not None:
            for path in list(_NEW_DIRS):
                _remove_skeleton(path)
            where = full.filename or (next(iter(_NEW_DIRS), None) if len(_NEW_DIRS) == 1 else "")
            disk = Path(where or ".")
            while not disk.exists() and disk != disk.parent:
                disk = disk.parent
            raise UserError(
                f"the disk is full ({full.strerror}{f' writing {where}' if where else ''}); "
                f"free some space (df -h {disk}) and run the same command "
                "again (finished runs are reported, interrupted ones resume), or choose an "
                "out_dir=... on a disk with room"
            ) from None
        if saved is not None:
            raise
        _print_job_error(exc)
        sys.exit(1)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def _help_page() -> str:
    """``noisybench --help``: the page of ``conf/hydra/help/noisybench.yaml`` as Hydra renders
    it (its template resolved, then ``string.Template`` with ``$$`` -> ``$``). Hydra's own
    ``app_help`` first loads every option of every group (about 100 config loads: 1-2 s) for a
    list that this page does not use (it lists the groups through ``${nb_groups:}``)."""
    import string

    template = OmegaConf.select(compose([], return_hydra_config=True), "hydra.help.template")
    return string.Template(str(template)).safe_substitute()


def main(argv: list[str] | None = None) -> None:  # noqa: C901
    """Entry point of the ``noisybench`` command and ``python -m noisybench``
    (``noisybench report ...`` and ``noisybench evaluate ...`` run those tools)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # allow_targets=[pkg.] / --allow-target pkg.: never a config key (a file could then
        # allow itself), an instruction of whoever types the command (noisybench.safety).
        args = take_command_line(args)
    except UserError as exc:
        _fail(str(exc), 2)
    if args and args[0] in _SUBCOMMANDS:
        import importlib

        tool = importlib.import_module(_SUBCOMMANDS[args[0]])
        sys.exit(tool.main(args[1:]))
    if args in (["--help"], ["-h"]):  # the common case, without Hydra's slow app_help
        print(_help_page())
        return
    _NEW_DIRS.clear()
    threading.excepthook = _quiet_disk_full_in_threads
    multirun = any(a in _MULTIRUN for a in args)
    passthrough = any(_flag_name(a) in _PASS_THROUGH for a in args)
    sweep_dirs: list[RunDir] | None = None
    try:
        if not any(_flag_name(a) in ("-cd", "--config-dir", "-cn", "--config-name") for a in args):
            validate_choices(args)
        if not passthrough:
            dirs = search_dirs(args)
            if multirun:
                sweep_dirs = _preflight_sweep(_overrides(args), dirs)
            else:
                run_dir, finished = _check_job(_overrides(args), dirs)
                if finished is not None:
                    if env_world()[0] == 0:
                        print(f"noisybench: {run_dir.finished_message(finished)}")
                    return
        _FAILURES.clear()
        # Hydra's parser wants every override after its flags: accept -m anywhere.
        flags = [a for a in args if a in _MULTIRUN]
        quiet = []
        if env_world()[0] > 0 and not passthrough:  # other processes: no Hydra files, no log
            quiet = [
                "hydra.output_subdir=null",
                "hydra/job_logging=stdout",
                "hydra.job_logging.root.level=WARNING",
            ]
        sys.argv = [sys.argv[0], *flags, *(a for a in args if a not in flags), *quiet]
        logging.raiseExceptions = False  # a log that cannot be written (full disk): no traceback
        _run_hydra(passthrough)
        # Leave the process group, if any: one exists only once torch.distributed is imported,
        # and a config-only command (--help, --cfg, -sc, --info) must not import torch here.
        if "torch.distributed" in sys.modules:
            sys.modules["noisybench.distributed"].shutdown()
    except UserError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail(
            "interrupted by SIGINT before training started or while a step was running; the "
            "last checkpoint is kept: run the same command again to resume",
            128 + signal.SIGINT,
        )
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if multirun and not passthrough:
        if sweep_dirs is None:
            print("noisybench: sweep finished (its jobs were chosen by the sweeper)")
            return
        table, bad = _summary(sweep_dirs, _FAILURES)
        print(f"noisybench: sweep summary ({len(sweep_dirs)} runs)\n{table}")
        if bad:
            first = next(iter(_FAILURES.values()), None)
            detail = f" (first: {first})" if first else ""
            _fail(
                f"{bad} of {len(sweep_dirs)} runs of the sweep did not finish{detail}; fix them "
                "and run the same command again: finished runs are reported, not rerun",
                1,
            )
