"""Per-step training time of every method relative to cross-entropy, through the real engine.

For each ``conf/method/*.yaml`` this runs the offline quickstart (digits, small CNN, batch
128, one CPU thread) for a few epochs with evaluation diagnostics off, and takes the median
training time of an epoch (forward, loss, backward, optimizer step and the method's
``after_step``; evaluation is not included) divided by the steps per epoch. The first epoch is
dropped as warm-up. ``kd`` distils a one-epoch cross-entropy run made first.

Usage: ``python benchmarks/bench_methods.py [--epochs 6]``; writes
``benchmarks/results/method_step_time.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from noisybench.baselines import CODE_DEFAULTS

from noisybench.config import CONF_DIR
from noisybench.run import run_experiment

RESULTS = Path(__file__).resolve().parent / "results" / "method_step_time.json"


def _run(overrides: list[str], run_dir: Path) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    return run_experiment(cfg, run_dir=run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = [
        "experiment=quickstart",
        "progress=false",
        "logger=[]",
        "eval.train_diagnostics=false",
    ]
    methods = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        _run([*base, "method=ce", "epochs=1"], teacher)
        for name in methods:
            extra = [f"method.teacher_runs=[{teacher}]"] if name == "kd" else []
            extra += CODE_DEFAULTS.get(name, [])  # digits: no per-setting authors' value
            result = _run(
                [*base, f"method={name}", f"epochs={args.epochs}", *extra], Path(tmp) / name
            )
            n = len(np.load(Path(tmp) / name / "noisy_labels.npy"))
            steps = math.ceil(n / result["config"]["batch_size"])
            times = [h["epoch_time_s"] / steps for h in result["history"][1:]]
            rows[name] = {"ms_per_step": 1000 * statistics.median(times)}
    ce = rows["ce"]["ms_per_step"]
    for row in rows.values():
        row["relative_to_ce"] = row["ms_per_step"] / ce
    out = {
        "setup": "digits quickstart, small_cnn, batch 128, 1 CPU thread, median over epochs",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "methods": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print("| method | ms / step | relative to CE |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['ms_per_step']:.1f} | {row['relative_to_ce']:.2f} |")


if __name__ == "__main__":
    main()
