"""Command line: ``python -m noisybench [group=option ...] [key=value ...] [-m]``.

Hydra composes ``conf/config.yaml`` with the overrides and runs :func:`run_experiment`;
``-m`` sweeps through Hydra's launchers. Bad input ends in one line on stderr,
``noisybench: error: ...``, and a non-zero exit status, never a traceback wall.

A single run is checked before Hydra creates or touches its run directory (these checks
import neither torch nor the data): every ``group=option`` must exist, the overrides must
compose, the values must be valid (:func:`check_config`), the run directory must be
writable, and a run directory that already holds a run must hold the same configuration
(:func:`check_existing_run`). A finished run is reported and left alone (exit status 0)
unless ``restart=true``.

Exit statuses: 0 done (or already finished); 1 training diverged, or some runs of a sweep
failed; 2 bad input; 128 + signal number when SIGINT (130) or SIGTERM (143) stopped a run
after writing a checkpoint.

In a sweep (``-m``) a run whose loss diverges or whose input is bad is recorded as failed
(its ``result.json`` says so where it got that far), the sweep goes on, and the command ends
with one summary line and status 1; SIGINT/SIGTERM stop the whole sweep.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from noisybench.errors import UserError
from noisybench.io import CHECKPOINT_FILE, flatten, read_json
from noisybench.recorder import RESULT_FILE

__all__ = [
    "CONF_DIR",
    "GROUPS",
    "RESUME_IGNORED",
    "check_config",
    "check_existing_run",
    "config_differences",
    "describe_differences",
    "finished_message",
    "main",
    "refuse_other_config",
    "validate_choices",
]

log = logging.getLogger("noisybench")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "noise", "model", "method", "optim", "experiment")

# Keys that may differ between a run directory's config and the command that resumes or
# re-reports it: they change where files are, how progress is shown, how the run reacts to a
# non-finite loss (resuming with nonfinite=skip after a stop is the intended recovery), or
# which hardware computes it (bitwise results may then differ), not the experiment itself.
RESUME_IGNORED = (
    "restart",
    "progress",
    "tensorboard",
    "nonfinite",
    "device",
    "cpu_threads",
    "data_dir",
    "out_dir",
    "dataset.reader.root",
    "dataset.reader.download",
    "dataset.reader.verify",
    "eval.batch_size",
)


def _fail(message: str, status: int) -> None:
    print(f"noisybench: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


# ------------------------------------------------------------------------- choices and values
def _search_dirs(argv: list[str]) -> list[Path]:
    """The primary config directory plus ``hydra.searchpath=[...]`` directories from argv."""
    dirs = [CONF_DIR]
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for entry in value.strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                dirs.append(Path(entry[len("file://") :]))
            elif entry and "://" not in entry:
                dirs.append(Path(entry))
    return dirs


def validate_choices(argv: list[str]) -> None:
    """Check every ``group=option`` on the command line names an existing config file.

    Raises:
        UserError: naming the unknown option, the valid ones, and how to add one.
    """
    dirs = _search_dirs(argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key not in GROUPS or "(" in value:  # sweep functions (range/choice/glob): Hydra's
            continue
        for option in (v.strip() for v in value.split(",")):
            if option in ("", "null") or any((d / key / f"{option}.yaml").is_file() for d in dirs):
                continue
            known = sorted({p.stem for d in dirs for p in (d / key).glob("*.yaml")})
            raise UserError(
                f"unknown {key} '{option}'; choose one of: {', '.join(known)} "
                f"(or add {key}/{option}.yaml to conf/ or a hydra.searchpath directory)"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings with one actionable line each (before anything is built
    or any file is touched).

    Raises:
        UserError: naming the bad key and value and what to set instead.
    """
    from noisybench.data.noise import ASYM_MAPS, NOISE_VARIANTS

    def positive(key: str, example: str) -> None:
        value = OmegaConf.select(cfg, key)
        if not _is_int(value) or value < 1:
            raise UserError(f"{key}={value} is invalid; set {key} to a positive integer, {example}")

    positive("epochs", "e.g. epochs=100")
    positive("batch_size", "e.g. batch_size=128")
    positive("eval.batch_size", "e.g. eval.batch_size=1024")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise UserError(f"seed={cfg.seed} is invalid; set seed to a non-negative integer")
    if cfg.get("cpu_threads") is not None and (not _is_int(cfg.cpu_threads) or cfg.cpu_threads < 1):
        raise UserError(
            f"cpu_threads={cfg.cpu_threads} is invalid; set a positive integer or null (torch's "
            "default)"
        )
    for key in ("restart", "progress", "tensorboard", "deterministic", "eval.train_diagnostics"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):
            raise UserError(f"{key}={value} is not a boolean; set {key}=true or {key}=false")
    if cfg.nonfinite not in ("stop", "skip"):
        raise UserError(f"nonfinite={cfg.nonfinite} is unknown; use nonfinite=stop or skip")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise UserError(f"amp={cfg.amp} is unknown; use amp=auto, off, bf16 or fp16")

    noise = cfg.noise
    rate = noise.rate
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not 0.0 <= float(rate) < 1.0
        or math.isnan(float(rate))
    ):
        raise UserError(
            f"noise.rate={rate} is not a number in [0, 1); choose a rate like noise.rate=0.4"
        )
    if not _is_int(noise.seed) or noise.seed < 0:
        raise UserError(f"noise.seed={noise.seed} is invalid; set a non-negative integer")
    if noise.variant not in NOISE_VARIANTS:
        known = ", ".join(sorted(NOISE_VARIANTS))
        raise UserError(f"noise.variant={noise.variant} is unknown; use one of {known}")
    label_file = noise.get("label_file")
    if label_file is not None and not Path(str(label_file)).expanduser().is_file():
        raise UserError(
            f"noise.label_file={label_file} does not exist; give the path of a saved "
            "noisy_labels.npy, or set noise.label_file=null to generate the noise"
        )
    uses_map = getattr(NOISE_VARIANTS[noise.variant], "uses_asym_map", False)
    if uses_map and label_file is None and float(rate) > 0:
        asym_map = noise.get("asym_map") or cfg.dataset.get("asym_map")
        if asym_map is None:
            raise UserError(
                f"noise variant {noise.variant} needs a class map but dataset "
                f"{cfg.dataset.name} has none (dataset.asym_map is null); set "
                f"noise.asym_map to one of {', '.join(sorted(ASYM_MAPS))}, or choose "
                "symmetric noise (e.g. noise=sym50)"
            )
        if asym_map not in ASYM_MAPS:
            raise UserError(
                f"asymmetric map {asym_map} is unknown; set noise.asym_map to one of "
                f"{', '.join(sorted(ASYM_MAPS))}"
            )


# ------------------------------------------------------------------------- existing runs
def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESUME_IGNORED)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (ignoring
    :data:`RESUME_IGNORED`)."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if not _ignored(k) and _jsonish(a.get(k)) != _jsonish(b.get(k))]


def _jsonish(value: Any) -> Any:
    """A value as it reads back from the result file (tuples are lists, NaN/inf are null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple | list):
        return [_jsonish(v) for v in value]
    return value


def describe_differences(
    keys: list[str], saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 8
) -> str:
    """``key (saved: X, now: Y), ...`` for the first ``limit`` differing keys."""
    a, b = flatten(saved), flatten(current)

    def show(flat: dict[str, Any], key: str) -> str:
        return json.dumps(flat[key]) if key in flat else "absent"

    parts = [f"{k} (saved {show(a, k)}, now {show(b, k)})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def finished_message(run_dir: Path, result: Mapping[str, Any]) -> str:
    """One line reporting a finished run."""
    last, best = result.get("last") or {}, result.get("best") or {}

    def acc(entry: Mapping[str, Any]) -> str:
        value = entry.get("test/acc")
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"{run_dir} already finished: last-epoch test acc {acc(last)}, best {acc(best)} at "
        f"epoch {best.get('epoch')} (selected on the test set); pass restart=true to run it "
        "again"
    )


def check_existing_run(run_dir: Path, resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    """Compare the run already in ``run_dir`` (if any) with the ``resolved`` config.

    Returns the result of a finished run with the same config (to report, not rerun), or None
    when the run is to start or resume. Reads only ``result.json``; the checkpoint's own
    config is compared again when the run resumes.

    Raises:
        UserError: the directory holds a finished run or a checkpoint made with another
            config (naming the differing keys).
    """
    result = read_json(run_dir / RESULT_FILE)
    result = result if isinstance(result, dict) else None
    status = result.get("status") if result else None
    holds_run = status == "finished" or any(
        (run_dir / name).exists() for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + ".prev")
    )
    if holds_run and result is not None and isinstance(result.get("config"), dict):
        what = "finished run" if status == "finished" else "run"
        refuse_other_config(result["config"], resolved, run_dir, what)
    return result if status == "finished" else None


def refuse_other_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path, what: str
) -> None:
    """Raise a one-line :class:`UserError` naming the differing keys when the ``what``
    (finished run, run, checkpoint) in ``run_dir`` was made with another config."""
    diff = config_differences(saved, current)
    if diff:
        raise UserError(
            f"the {what} in {run_dir} was made with a different config (differing keys: "
            f"{describe_differences(diff, saved, current)}); use another run_name=... or pass "
            "restart=true to start over (old files go to previous/)"
        )


# ------------------------------------------------------------------------- entry points
_SWEEP: dict[str, Any] = {"multirun": False, "runs": 0, "failed": []}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from noisybench.engine import Interrupted, TrainingDiverged
    from noisybench.run import run_experiment

    _SWEEP["runs"] += 1
    try:
        run_experiment(cfg)
    except (UserError, TrainingDiverged) as exc:
        if not _SWEEP["multirun"]:
            _fail(str(exc), 2 if isinstance(exc, UserError) else 1)
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
        log.error("run %s failed: %s", run_dir, exc)
        _SWEEP["failed"].append(f"{run_dir}: {exc}")
    except Interrupted as exc:
        _fail(str(exc), 128 + exc.signum)


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"cannot apply the command-line overrides ({detail}); check the key names and "
            "values (python -m noisybench --cfg job shows the full config)"
        ) from None


def _preflight(argv: list[str]) -> tuple[Path, dict[str, Any] | None]:
    """Compose the config once (single runs only) and refuse bad values, an unwritable run
    directory and a config that does not match the run already there, before Hydra creates
    or writes anything. Returns the run directory and the result of an already finished run
    there (None otherwise)."""
    cfg = _compose([a for a in argv if not a.startswith("-")])
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_config(job)
    run_dir = Path(str(cfg.hydra.run.dir))
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(
            f"cannot create the run directory {run_dir}: {probe} is a file; "
            "choose another out_dir=... or run_name=..."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write to {probe} for the run directory {run_dir}; "
            "choose a writable out_dir=..."
        )
    if job.restart or not run_dir.is_dir():
        return run_dir, None
    resolved = OmegaConf.to_container(job, resolve=True)
    assert isinstance(resolved, dict)
    return run_dir, check_existing_run(run_dir, resolved)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m noisybench``."""
    args = sys.argv[1:] if argv is None else argv
    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        validate_choices(args)
        if not multirun and not any(
            a in ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info", "-i") for a in args
        ):
            run_dir, finished = _preflight(args)
            if finished is not None:
                print(f"noisybench: {finished_message(run_dir, finished)}")
                return
        _SWEEP.update(multirun=multirun, runs=0, failed=[])
        # Hydra's parser wants every override after its flags: accept -m anywhere.
        flags = [a for a in args if a in ("-m", "--multirun")]
        sys.argv = [sys.argv[0], *flags, *(a for a in args if a not in flags)]
        _hydra_main()
    except UserError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail(
            "interrupted by SIGINT before training started or while a step was running; the "
            "last checkpoint is kept: run the same command again to resume",
            128 + signal.SIGINT,
        )
    failed = _SWEEP["failed"]
    if failed:
        _fail(
            f"{len(failed)} of {_SWEEP['runs']} runs of the sweep failed (first: {failed[0]}); "
            "fix them and run the same command again: finished runs are reported, not rerun",
            1,
        )
