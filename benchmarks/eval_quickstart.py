"""Mean ± std over seeds of the evaluation suites' numbers on the digits quickstart runs.

Reads every ``evaluation.json`` under RUNS (written by ``python -m noisybench.evaluate``),
groups them by method and prints Markdown tables: calibration before and after temperature
scaling (Table 2/7 style), OOD AUROC, corruption accuracy per corruption, and the three
selection rules. Std is the sample standard deviation (ddof = 1) over seeds.

Usage: ``python benchmarks/eval_quickstart.py RUNS [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

METHOD_ORDER = ("ce", "ls", "pskd", "bsd", "bsdplus")


def _ms(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _table(
    groups: dict[str, list[dict[str, Any]]], columns: list[tuple[str, str, float, int]]
) -> str:
    head = "| method | n | " + " | ".join(c[0] for c in columns) + " |"
    rule = "|---|---|" + "---|" * len(columns)
    rows = [head, rule]
    for method in sorted(groups, key=lambda m: ((*METHOD_ORDER, m)).index(m)):
        evals = groups[method]
        cells = []
        for _, key, scale, digits in columns:
            values = [float(e[key]) for e in evals if isinstance(e.get(key), int | float)]
            cells.append(_ms(values, scale, digits))
        rows.append(f"| {method} | {len(evals)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(args.runs.rglob("evaluation.json")):
        ev = json.loads(path.read_text())
        flat = dict(ev["metrics"])
        for rule, rec in (ev.get("selection") or {}).items():
            for key, value in rec.items():
                flat[f"selection/{rule}/{key}"] = value
        groups[str(ev["method"])].append(flat)
    pct = 100.0
    print("Calibration on the test set (last epoch; %):\n")
    print(
        _table(
            groups,
            [
                ("acc", "calibration/acc", pct, 2),
                ("ECE", "calibration/ece", pct, 2),
                ("SCE", "calibration/sce", pct, 2),
                ("ACE", "calibration/ace", pct, 2),
                ("ACE (Nixon)", "calibration/ace_classwise", pct, 2),
                ("NLL", "calibration/nll", 1.0, 3),
                ("Brier", "calibration/brier", 1.0, 3),
            ],
        )
    )
    print("\nTemperature scaling (T fitted on half the test set, metrics on the other half; %):\n")
    print(
        _table(
            groups,
            [
                ("T", "temperature/T", 1.0, 2),
                ("ECE raw", "temperature/ece_raw", pct, 2),
                ("ECE TS", "temperature/ece_ts", pct, 2),
                ("SCE TS", "temperature/sce_ts", pct, 2),
                ("ACE TS", "temperature/ace_ts", pct, 2),
                ("NLL raw", "temperature/nll_raw", 1.0, 3),
                ("NLL TS", "temperature/nll_ts", 1.0, 3),
                ("Brier TS", "temperature/brier_ts", 1.0, 3),
            ],
        )
    )
    print("\nOOD detection, AUROC of the max softmax probability (%):\n")
    print(
        _table(
            groups,
            [
                ("AUROC", "ood/sklearn_patches/auroc", pct, 2),
                ("mean MSP in", "ood/sklearn_patches/msp_in", 1.0, 3),
                ("mean MSP out", "ood/sklearn_patches/msp_out", 1.0, 3),
            ],
        )
    )
    names = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "contrast",
             "brightness", "defocus_blur"]  # fmt: skip
    print("\nCorruption accuracy, mean over severities 1-5 (%):\n")
    print(
        _table(
            groups,
            [("clean", "corruption/clean/acc", pct, 1)]
            + [(n, f"corruption/{n}/acc", pct, 1) for n in names]
            + [
                ("mean", "corruption/mean_acc", pct, 1),
                ("mean ECE", "corruption/mean_ece", pct, 1),
            ],
        )
    )
    print("\nCorruption accuracy by severity, mean over the 7 corruptions (%):\n")
    print(_table(groups, [(f"s{s}", f"corruption/s{s}/acc", pct, 1) for s in range(1, 6)]))
    print("\nDark knowledge over the training set (given labels):\n")
    print(
        _table(
            groups,
            [
                ("mu diag", "dark_knowledge/mu_diag_mean", 1.0, 3),
                ("mu off-diag", "dark_knowledge/mu_offdiag_mean", 1.0, 4),
                ("mean sum|delta|", "dark_knowledge/delta_l1_mean", 1.0, 3),
            ],
        )
    )
    print("\nTest accuracy by selection rule (%):\n")
    print(
        _table(
            groups,
            [
                ("last", "selection/last/test/acc", pct, 2),
                ("best (selected on test)", "selection/best_test/test/acc", pct, 2),
                ("best epoch", "selection/best_test/epoch", 1.0, 0),
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(groups, indent=1))


if __name__ == "__main__":
    main()
