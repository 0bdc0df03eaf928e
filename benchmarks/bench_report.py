"""Speed of suites and reports at scale (issue 22 item 6): expanding a 10,000-run suite
(with its dry-run status: every run's directory and whether it finished) and reporting over
10,000 result files (table and leaderboard), on generated files in a temporary folder.

Each result file is schema 2 with a 100-epoch history (test accuracy, ECE, NLL, validation
accuracy, epoch time), the size of a real CIFAR run's file without evaluation suites.

    PYTHONPATH=$PWD python benchmarks/bench_report.py   # -> benchmarks/results/report.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NOISES = (
    [f"sym{r}" for r in (20, 50, 80)]
    + [f"asym{r}" for r in (10, 20, 30, 40)]
    + [
        "none",
        "pairflip45",
        "idn40",
    ]
)
METHODS = ["ce", "ls", "sce", "gce", "mixup", "elr", "te", "coteaching", "bsd", "bsdplus"]


def _suite_yaml(seeds: int) -> str:
    return json.dumps(
        {
            "name": "bench10k",
            "fixed": ["experiment=quickstart", "epochs=10"],
            "grid": {
                "dataset": ["digits"],
                "model": ["small_cnn"],
                "noise": NOISES,
                "method": METHODS,
                "seed": list(range(seeds)),
            },
        }
    )


def _write_results(root: Path, n: int, epochs: int) -> None:
    rng = random.Random(0)
    per = n // (len(NOISES) * len(METHODS))
    count = 0
    for noise in NOISES:
        for method in METHODS:
            for seed in range(per):
                run = root / noise / method / f"seed{seed}"
                run.mkdir(parents=True)
                history = [
                    {
                        "epoch": e + 1,
                        "test/acc": rng.random(),
                        "test/ece": rng.random() / 10,
                        "test/nll": rng.random(),
                        "val/acc": rng.random(),
                        "epoch_time_s": 1.0,
                    }
                    for e in range(epochs)
                ]
                body = {
                    "schema_version": 2,
                    "status": "finished",
                    "config": {
                        "seed": seed,
                        "epochs": epochs,
                        "dataset": {"name": "digits"},
                        "model": {"name": "small_cnn"},
                        "noise": {"name": noise, "seed": seed},
                        "method": {"name": method},
                    },
                    "seeds": {"train": seed, "noise": seed},
                    "noise": {"sha256": f"{noise}{seed}", "realised_rate": 0.5},
                    "history": history,
                    "selection_rule": "noisy_val",
                    "cost": {"train_time_s": epochs, "images_per_s": 500.0},
                    "environment": {"device_name": "cpu"},
                }
                (run / "result.json").write_text(json.dumps(body))
                count += 1
    assert count == n, count


def _timed(fn) -> tuple[float, object]:
    begin = time.perf_counter()
    out = fn()
    return time.perf_counter() - begin, out


def _cpu_timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process and its finished children) of ``fn()``: on
    a machine shared with other jobs the CPU time is what the report itself costs."""
    import resource

    def cpu() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    begin, cpu_begin = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - begin, cpu() - cpu_begin


class _Numbers(dict):
    """The results so far, written to ``path`` after every stage (a slow machine that stops
    the benchmark early still leaves the stages it finished)."""

    def __init__(self, path: Path, **first: object) -> None:
        super().__init__(first)
        self.path = path

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        self.path.write_text(json.dumps(self, indent=1) + "\n")
        print(f"{key}: {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "report.json"))
    args = parser.parse_args()

    from noisybench import report, suite

    numbers = _Numbers(
        Path(args.out),
        runs=args.runs,
        epochs_per_history=args.epochs,
        python=platform.python_version(),
        machine=platform.machine(),
        note="shared machine (2 cores for several processes): wall-clock seconds, one pass",
    )
    numbers["load_average_at_start"] = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="nb_bench_report_") as tmp:
        tmp_path = Path(tmp)
        seeds = args.runs // (len(NOISES) * len(METHODS))
        (tmp_path / "bench10k.yaml").write_text(_suite_yaml(seeds))
        loaded = suite.load_suite(str(tmp_path / "bench10k.yaml"))
        t, jobs = _timed(lambda: list(suite.expand(loaded)))
        numbers["suite_expand_s"] = round(t, 4)
        numbers["suite_jobs"] = len(jobs)
        t, _ = _timed(lambda: suite.status(loaded, [f"out_dir={tmp_path / 'empty'}"]))
        numbers["suite_status_s"] = round(t, 4)  # run dirs + result.json probes (none exist)

        results_root = tmp_path / "results"
        t, _ = _timed(lambda: _write_results(results_root, args.runs, args.epochs))
        numbers["generate_s"] = round(t, 2)
        size = sum(p.stat().st_size for p in results_root.rglob("result.json"))
        numbers["result_files_mib"] = round(size / 2**20, 1)
        t, results = _timed(lambda: report.load_results([results_root]))
        numbers["load_s"] = round(t, 3)
        t, groups = _timed(lambda: report.collect(results))
        numbers["collect_s"] = round(t, 3)
        numbers["groups"] = len(groups)
        t, table = _timed(lambda: report.build_table(groups))
        numbers["table_s"] = round(t, 3)
        t, _ = _timed(lambda: report.render(table, "md"))
        numbers["render_md_s"] = round(t, 3)
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            t, status = _timed(lambda: report.main([str(results_root)]))
        numbers["report_cli_total_s"] = round(t, 3)
        with contextlib.redirect_stdout(sink):
            t, status = _timed(lambda: report.main([str(results_root), "--leaderboard"]))
        numbers["leaderboard_cli_total_s"] = round(t, 3)
        assert status == 0
        # End to end as a user runs it: a fresh interpreter (start, imports, report).
        for name, extra in (("report", []), ("leaderboard", ["--leaderboard"])):
            cmd = [sys.executable, "-m", "noisybench.report", str(results_root), *extra]
            run = functools.partial(subprocess.run, cmd, capture_output=True, check=True)
            wall, cpu = _cpu_timed(run)
            numbers[f"{name}_process_s"] = round(wall, 3)
            numbers[f"{name}_process_cpu_s"] = round(cpu, 3)
    numbers["load_average_at_end"] = list(os.getloadavg())


if __name__ == "__main__":
    main()
