"""Figure 11 on the digits quickstart: temperature-adjusted KL between each epoch's
predictions and the final model's, on a fixed subset of the training set.

Until the engine saves prediction snapshots itself, this script trains through the real
``noisybench.run.run_experiment`` with ``Trainer`` replaced by a subclass whose
``epoch_record`` also calls :class:`noisybench.evaluation.dark_knowledge.PredictionSnapshots`
(exactly the call the engine is to make), then evaluates the runs with the ``dark_knowledge``
suite, which adds the KL curve to evaluation.json.

Usage: ``python benchmarks/dark_knowledge_quickstart.py OUT_DIR [--methods ce bsd]
[--seeds 0 1 2] [--size 500]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

import noisybench.run as run_module
from noisybench.engine import Trainer
from noisybench.evaluate import EvaluateOptions, evaluate_run
from noisybench.evaluation.dark_knowledge import PredictionSnapshots

CONF = Path(__file__).resolve().parents[1] / "conf"
SHOW = (1, 5, 10, 20, 30, 50, 75, 90, 100)


def snapshot_trainer(size: int, seed: int) -> type[Trainer]:
    class SnapshotTrainer(Trainer):
        def epoch_record(self, epoch, sums, epoch_time):  # type: ignore[no-untyped-def]
            record = super().epoch_record(epoch, sums, epoch_time)
            if not hasattr(self, "_snapshots"):
                self._snapshots = PredictionSnapshots(
                    self.run_dir, self.source.images("train"), self.epochs, size=size, seed=seed
                )
            self._snapshots(epoch, self.predict)
            return record

    return SnapshotTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--methods", nargs="+", default=["ce", "bsd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    run_module.Trainer = snapshot_trainer(args.size, seed=0)  # the script's only patch
    curves: dict[str, list[list[float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            overrides = ["experiment=quickstart", f"method={method}", f"seed={seed}"]
            overrides += ["progress=false", "logger=[]"]
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
                cfg = compose("config", overrides=overrides)
            run_dir = args.out_dir / method / f"seed{seed}"
            run_module.run_experiment(cfg, run_dir)
            out = evaluate_run(run_dir, ["dark_knowledge"], options=EvaluateOptions("cpu"))
            epochs = [int(e) for e in out["metrics"]["dark_knowledge/kl_epochs"]]
            kl = out["metrics"]["dark_knowledge/kl_to_final"]
            curves.setdefault(method, []).append([kl[epochs.index(e)] for e in SHOW])
    print("| method | " + " | ".join(f"ep {e}" for e in SHOW) + " |")
    print("|---|" + "---|" * len(SHOW))
    for method, runs in curves.items():
        cells = []
        for i in range(len(SHOW)):
            vals = [r[i] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    (args.out_dir / "kl_curves.json").write_text(json.dumps({"epochs": SHOW, "kl": curves}))


if __name__ == "__main__":
    main()
