"""Named, versioned benchmark suites: ``noisybench suite NAME [overrides] [--dry-run]``.

A suite (``conf/suite/NAME.yaml``) states a whole comparison once: the fixed training protocol
(``fixed``: overrides every run gets, the selection rule among them), one or more grids (each
a product of datasets, models, noise settings, methods and seeds) and the reference method of
its leaderboard. Running it is one Hydra multirun per grid through noisybench's own command
line, so every launcher works unchanged (``hydra/launcher=joblib``, ``submitit_slurm``: pass
it as an override) and every check of a sweep applies; finished runs are reported, not
retrained (the run directory decides), so running the same command again resumes. It ends in
the leaderboard over the suite's runs (:mod:`noisybench.leaderboard`).

``--dry-run`` lists the runs, how many are finished, and the compute still needed, estimated
from the images per second that finished runs of the same dataset and model measured
(``cost`` in ``result.json``, schema 2).

Where a run lands is computed, not composed: ``out_dir/dataset/model/noise/method/<variant>/
seed<seed>`` with the variant of :func:`noisybench.config.run_variant` (the path of every run
in ``conf/config.yaml``'s ``run_name``); the first run's path is checked against Hydra's
composition, so expanding 10,000 runs stays a matter of milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisybench.config import conf_dir, run_variant
from noisybench.errors import UserError

__all__ = ["Job", "Suite", "expand", "load_suite", "main", "status"]

GRID_KEYS = ("dataset", "model", "noise", "method", "seed")


@dataclass(frozen=True)
class Job:
    """One run of a suite: its path groups, seed, and overrides."""

    dataset: str
    model: str
    noise: str
    method: str
    seed: int
    extra: tuple[str, ...]  # grid keys beyond the path groups (method.gamma=0.9)

    def overrides(self, fixed: Sequence[str]) -> list[str]:
        return [
            *fixed,
            f"dataset={self.dataset}",
            f"model={self.model}",
            f"noise={self.noise}",
            f"method={self.method}",
            f"seed={self.seed}",
            *self.extra,
        ]

    def run_dir(self, out_dir: Path, variant: str) -> Path:
        path = out_dir / self.dataset / self.model / self.noise / self.method
        return (path / variant if variant else path) / f"seed{self.seed}"


@dataclass
class Suite:
    name: str
    version: int
    description: str
    fixed: list[str]
    grids: list[dict[str, list[Any]]]
    reference: str
    out_dir: str


def _listed(value: Any, key: str, where: str) -> list[Any]:
    if isinstance(value, list | tuple) and value:
        return list(value)
    if isinstance(value, str | int | float):
        return [value]
    raise UserError(f"{where}: grid key {key!r} must be a non-empty list; fix the suite file")


def load_suite(name: str, search: Sequence[Path] = ()) -> Suite:
    """Read ``conf/suite/NAME.yaml`` (or ``NAME`` as a path to a YAML file)."""
    import yaml

    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [Path(d) / "suite" / f"{name}.yaml" for d in (*search, conf_dir())]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        known = sorted(p.stem for p in (conf_dir() / "suite").glob("*.yaml"))
        raise UserError(f"no suite {name!r}; use one of {', '.join(known)} or a path to a YAML")
    try:
        spec = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read suite {path} ({type(exc).__name__}); fix its YAML") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: not a mapping; see conf/suite/digits_mini.yaml")
    grids = spec.get("grids") or ([spec["grid"]] if "grid" in spec else [])
    if not grids or not all(isinstance(g, dict) for g in grids):
        raise UserError(f"{path}: needs 'grid' (a mapping) or 'grids' (a list of them)")
    parsed = []
    for grid in grids:
        missing = [k for k in GRID_KEYS if k not in grid]
        if missing:
            raise UserError(f"{path}: a grid lacks {', '.join(missing)}; name each of them")
        parsed.append({k: _listed(v, k, str(path)) for k, v in grid.items()})
    fixed = spec.get("fixed") or []
    if not isinstance(fixed, list) or not all(isinstance(x, str) and "=" in x for x in fixed):
        raise UserError(f"{path}: 'fixed' must be a list of key=value overrides")
    return Suite(
        name=str(spec.get("name", path.stem)),
        version=int(spec.get("version", 1)),
        description=str(spec.get("description", "")),
        fixed=list(fixed),
        grids=parsed,
        reference=str(spec.get("reference", "ce")),
        out_dir=str(spec.get("out_dir", f"./runs/suite/{path.stem}")),
    )


def expand(suite: Suite) -> Iterator[Job]:
    """Every run of the suite, grid by grid, in the product's order (seed fastest)."""
    for grid in suite.grids:
        extra_keys = [k for k in grid if k not in GRID_KEYS]
        axes = [grid[k] for k in ("dataset", "model", "noise", "method")]
        extras = [[f"{k}={v}" for v in grid[k]] for k in extra_keys]
        for dataset, model, noise, method in itertools.product(*axes):
            for extra in itertools.product(*extras):
                for seed in grid["seed"]:
                    yield Job(str(dataset), str(model), str(noise), str(method), int(seed), extra)


def _variant(suite: Suite, job: Job, user: Sequence[str]) -> str:
    """The run directory's variant as Hydra's run name makes it: from the task overrides only
    (Hydra's own, such as ``hydra/launcher=joblib``, name no run)."""
    task = [o for o in user if not o.lstrip("+~").startswith("hydra")]
    return run_variant([*suite.fixed, *job.extra, *task])


def _out_dir(suite: Suite, user: Sequence[str]) -> Path:
    given = [o.split("=", 1)[1] for o in user if o.startswith("out_dir=")]
    return Path(os.path.expanduser(given[-1] if given else suite.out_dir))


def status(suite: Suite, user: Sequence[str] = ()) -> list[tuple[Job, Path, dict | None]]:
    """Each run with its directory and its result (None when not finished)."""
    out = _out_dir(suite, user)
    rows = []
    variants: dict[tuple[str, ...], str] = {}
    for job in expand(suite):
        variant = variants.get(job.extra)
        if variant is None:
            variant = variants[job.extra] = _variant(suite, job, user)
        run_dir = job.run_dir(out, variant)
        result = None
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((run_dir / "result.json").read_text())
        finished = isinstance(result, dict) and result.get("status") == "finished"
        rows.append((job, run_dir, result if finished else None))
    return rows


def _check_path(suite: Suite, job: Job, run_dir: Path, user: Sequence[str]) -> None:
    """The computed run directory of the first job against Hydra's composition."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from noisybench.config import compose

    where = [f"out_dir={_out_dir(suite, user)}", *(o for o in user if not o.startswith("out_dir="))]
    cfg = compose([*job.overrides(suite.fixed), *where], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    name = OmegaConf.select(cfg, "run_name")
    composed = Path(os.path.expanduser(str(cfg.out_dir))) / str(name)
    if composed.resolve() != run_dir.resolve():
        raise UserError(
            f"suite {suite.name}: run directory {composed} differs from the computed "
            f"{run_dir}; name the dataset's and model's config names as their .name"
        )


def _estimate(rows: Sequence[tuple[Job, Path, dict | None]], epochs: int | None) -> str:
    """Compute left: per (dataset, model, method) the measured images per second of finished
    runs (else per dataset and model), times the epochs and training images still to do."""
    rates: dict[tuple[str, ...], list[float]] = {}
    images: dict[str, int] = {}
    for job, _, result in rows:
        if result is None:
            continue
        cost = result.get("cost") or {}
        if isinstance(cost.get("images_per_s"), int | float) and cost["images_per_s"] > 0:
            rates.setdefault((job.dataset, job.model, job.method), []).append(cost["images_per_s"])
            rates.setdefault((job.dataset, job.model), []).append(cost["images_per_s"])
        if isinstance(result.get("train_images"), int):
            images[job.dataset] = result["train_images"]
    seconds, unknown = 0.0, 0
    for job, _, result in rows:
        if result is not None:
            continue
        rate = rates.get((job.dataset, job.model, job.method)) or rates.get(
            (job.dataset, job.model)
        )
        if not rate or job.dataset not in images or epochs is None:
            unknown += 1
            continue
        seconds += epochs * images[job.dataset] / (sum(rate) / len(rate))
    text = f"about {seconds / 3600:.2f} h of training" if seconds else "nothing measured yet"
    if unknown:
        text += f"; {unknown} run(s) not estimated (no finished run of their dataset and model)"
    return text


def _epochs(suite: Suite, user: Sequence[str]) -> int | None:
    for override in reversed([*suite.fixed, *user]):
        key, _, value = override.partition("=")
        if key == "epochs":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="noisybench suite",
        description="Run a named suite (conf/suite/NAME.yaml) and print its leaderboard.",
    )
    parser.add_argument("name", help="suite name (conf/suite/NAME.yaml) or a YAML path")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, do not train")
    parser.add_argument(
        "--format", default="md", help="the leaderboard's format (md, latex, csv, json, html)"
    )
    parser.add_argument("--output", help="write the leaderboard to this file")
    return parser.parse_known_args(argv)


def _main(argv: Sequence[str] | None) -> int:
    args, user = _parse(argv)
    bad = [o for o in user if "=" not in o or o.startswith("-")]
    if bad:
        raise UserError(f"unknown argument {bad[0]!r}; pass key=value overrides or --dry-run")
    suite = load_suite(args.name)
    began = time.perf_counter()
    rows = status(suite, user)
    took = time.perf_counter() - began
    if not rows:
        raise UserError(f"suite {suite.name} expands to no run; check its grid")
    _check_path(suite, rows[0][0], rows[0][1], user)
    done = sum(r is not None for _, _, r in rows)
    print(
        f"noisybench suite {suite.name} v{suite.version}: {len(rows)} runs, {done} finished, "
        f"{len(rows) - done} to run ({_estimate(rows, _epochs(suite, user))}); expanded in "
        f"{took:.2f} s"
    )
    if args.dry_run:
        for job, run_dir, result in rows:
            mark = "finished" if result is not None else "to run"
            print(f"- {mark}: {' '.join(job.overrides([]))} -> {run_dir}")
        return 0
    status_code = 0
    for grid in suite.grids:
        sweep = [
            "-m",
            *suite.fixed,
            *(f"{k}={','.join(str(v) for v in grid[k])}" for k in grid),
            f"out_dir={_out_dir(suite, user)}",
            *(o for o in user if not o.startswith("out_dir=")),
        ]
        # The command line in its own process: its checks, summary and exit status as a user
        # gets them; a sweep with failed runs still ends in the leaderboard of what finished.
        done_sweep = subprocess.run([sys.executable, "-m", "noisybench", *sweep], check=False)
        status_code = max(status_code, done_sweep.returncode)
    from noisybench.report import main as report_main

    finished = [str(d) for _, d, _ in status(suite, user) if (d / "result.json").is_file()]
    if not finished:
        raise UserError(f"suite {suite.name}: no run finished; see the errors above")
    report = [*finished, "--leaderboard", "--reference", suite.reference, "--format", args.format]
    if args.output:
        report += ["--output", args.output]
    return max(status_code, report_main(report))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``noisybench suite``; bad input is one line and status 2."""
    try:
        return _main(argv)
    except UserError as exc:
        print(f"noisybench suite: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
