"""Command line: ``python -m noisybench [group=option ...] [key=value ...] [-m]``.

Hydra composes ``conf/config.yaml`` with the overrides and runs :func:`run_experiment`;
``-m`` sweeps through Hydra's launchers. Bad input ends in one line on stderr,
``noisybench: error: ...``, and a non-zero exit status, never a traceback wall.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from noisybench.engine import Interrupted, TrainingDiverged
from noisybench.errors import UserError

__all__ = ["CONF_DIR", "GROUPS", "main", "validate_choices"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "noise", "model", "method", "optim", "experiment")


def _fail(message: str, status: int) -> None:
    print(f"noisybench: error: {message}", file=sys.stderr)
    sys.exit(status)


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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from noisybench.run import run_experiment

    try:
        run_experiment(cfg)
    except UserError as exc:
        _fail(str(exc), 2)
    except TrainingDiverged as exc:
        _fail(str(exc), 1)
    except Interrupted as exc:
        _fail(str(exc), 130)


def _check_run_dir(argv: list[str]) -> None:
    """Compose the config once (single runs only) to refuse bad values and an unwritable
    run directory before Hydra creates it."""
    from hydra import compose, initialize_config_dir

    from noisybench.run import check_config

    overrides = [a for a in argv if not a.startswith("-")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    check_config(cfg)
    run_dir = Path(cfg.hydra.run.dir)
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(
            f"cannot create the run directory {run_dir}: {probe} is a file; "
            "choose another out_dir=... or run_name=..."
        )
    import os

    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write to {probe} for the run directory {run_dir}; "
            "choose a writable out_dir=..."
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m noisybench``."""
    args = sys.argv[1:] if argv is None else argv
    try:
        validate_choices(args)
        multirun = any(a in ("-m", "--multirun") for a in args)
        if not multirun and not any(a in ("-h", "--help", "--cfg", "-c", "--info") for a in args):
            _check_run_dir(args)
    except UserError as exc:
        _fail(str(exc), 2)
    sys.argv = [sys.argv[0], *args]
    _hydra_main()
