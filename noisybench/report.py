"""Tables of mean ± std over seeds from run directories.

``python -m noisybench.report runs/`` finds every ``result.json`` below the given
directories, groups runs that differ only in their seeds, and prints a Markdown table of the
last-epoch and best-epoch test accuracy (the best epoch is selected on the test set, as the
BSD paper's Table 4 reports it) with the sample standard deviation over seeds.

Unfinished runs (status "running", "interrupted", "failed") are listed separately and left
out of the means unless ``--include-unfinished`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from noisybench.config import flatten

__all__ = ["collect", "format_table", "load_results", "main", "mean_std"]

# Config keys that do not change what a run computes, or that vary within one table cell.
_NOT_PART_OF_GROUP = (
    "seed",
    "noise.seed",
    "run_name",
    "out_dir",
    "data_dir",
    "restart",
    "progress",
    "tensorboard",
    "device",
    "cpu_threads",
    "eval",
    "dataset.reader.root",
    "dataset.reader.download",
    "dataset.reader.verify",
    # KD's teachers are per-seed runs by construction (e.g. .../ensemble/seed${seed}).
    "method.teacher_runs",
)
# column -> (entry of the result, key): "final" is the last epoch's full history record.
_METRICS = {
    "last": ("last", "test/acc"),
    "best": ("best", "test/acc"),
    "ece": ("last", "test/ece"),
    "fit_given": ("final", "memorisation/fit_given"),
    "recovered": ("final", "recovery/recovered"),
}


def load_results(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every readable ``result.json`` below ``roots`` (``previous/`` copies excluded)."""
    results = []
    for root in roots:
        root = Path(root)
        paths = [root] if root.is_file() else sorted(root.rglob("result.json"))
        for path in paths:
            if "previous" in path.parts:
                continue
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                print(f"noisybench.report: skipping unreadable {path}", file=sys.stderr)
                continue
            problem = _shape_problem(result)
            if problem is not None:
                print(
                    f"noisybench.report: skipping {path}: not a noisybench result ({problem})",
                    file=sys.stderr,
                )
                continue
            result.setdefault("run_dir", str(path.parent))
            results.append(result)
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _shape_problem(result: Any) -> str | None:
    """Why ``result`` (parsed JSON) does not have the shape of a result file, or None."""
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not an object"
    for key in ("config", "seeds", "noise"):
        if not isinstance(result.get(key, {}), dict):
            return f"'{key}' is not an object"
    for group in ("dataset", "model", "noise", "method"):
        if not isinstance(result.get("config", {}).get(group, {}), dict):
            return f"'config.{group}' is not an object"
    history = result.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "'history' is not a list of objects"
    for key in ("last", "best"):
        if result.get(key) is not None and not isinstance(result.get(key), dict):
            return f"'{key}' is not an object"
    for entry in [*history, result.get("last") or {}, result.get("best") or {}]:
        for name in {key for _, key in _METRICS.values()}:
            value = entry.get(name)
            if value is not None and (isinstance(value, bool) or not _is_number(value)):
                return f"'{name}' is not a number"
    return None


def _group_key(result: dict[str, Any]) -> str:
    flat = {k: json.dumps(v, sort_keys=True) for k, v in flatten(result.get("config", {})).items()}
    kept = {
        k: v
        for k, v in flat.items()
        if not any(k == p or k.startswith(p + ".") for p in _NOT_PART_OF_GROUP)
    }
    return json.dumps(kept, sort_keys=True)


def _entry(result: dict[str, Any], where: str) -> dict[str, Any] | None:
    if where == "final":
        history = result.get("history") or []
        return history[-1] if history else None
    return result.get(where)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def collect(
    results: Sequence[dict[str, Any]], include_unfinished: bool = False
) -> list[dict[str, Any]]:
    """One row per group of runs that differ only in their seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.get("status") != "finished" and not include_unfinished:
            continue
        groups.setdefault(_group_key(result), []).append(result)
    rows = []
    for members in groups.values():
        cfg = members[0].get("config", {})
        row: dict[str, Any] = {
            "dataset": cfg.get("dataset", {}).get("name"),
            "model": cfg.get("model", {}).get("name"),
            "noise": cfg.get("noise", {}).get("name"),
            "method": cfg.get("method", {}).get("name"),
            "epochs": cfg.get("epochs"),
            "seeds": sorted(m.get("seeds", {}).get("train") for m in members),
            "realised_noise": statistics.fmean(
                m.get("noise", {}).get("realised_rate") or 0.0 for m in members
            ),
        }
        for name, (where, key) in _METRICS.items():
            entries = [_entry(m, where) for m in members]
            values = [float(e[key]) for e in entries if e and e.get(key) is not None]
            row[name] = mean_std(values) if values else (math.nan, math.nan)
        rows.append(row)
    rows.sort(key=lambda r: tuple(str(r[k]) for k in ("dataset", "model", "noise", "method")))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: accuracies and ECE in percent, mean ± sample std over seeds."""
    header = (
        "| dataset | model | noise | method | epochs | seeds | last acc (%) | best acc (%)* "
        "| last ECE (%) | noisy labels fitted (%)** | noisy labels recovered (%)** |"
    )
    lines = [header, "|" + "---|" * 11]

    def pct(pair: tuple[float, float]) -> str:
        mean, std = pair
        return "n/a" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"

    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['noise']} | {r['method']} | {r['epochs']} "
            f"| {len(r['seeds'])} | {pct(r['last'])} | {pct(r['best'])} | {pct(r['ece'])} "
            f"| {pct(r['fit_given'])} | {pct(r['recovered'])} |"
        )
    lines.append("")
    lines.append("\\* best epoch selected on the test set, as the paper reports it (Table 4).")
    lines.append(
        "\\*\\* last epoch, on the noisily-labelled training samples: predicted as the given "
        "wrong label (memorisation/fit_given); target arg-max equal to the true label "
        "(recovery/recovered, for methods with per-sample targets)."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noisybench.report",
        description="Mean ± std over seeds of noisybench runs, as a Markdown table.",
    )
    parser.add_argument("roots", nargs="+", help="run directories or folders holding them")
    parser.add_argument(
        "--include-unfinished", action="store_true", help="also average unfinished runs"
    )
    args = parser.parse_args(argv)
    results = load_results(args.roots)
    if not results:
        print(
            f"noisybench.report: error: no result.json below {', '.join(args.roots)}; "
            "pass the out_dir of your runs",
            file=sys.stderr,
        )
        return 2
    unfinished = [r for r in results if r.get("status") != "finished"]
    print(format_table(collect(results, args.include_unfinished)))
    if unfinished:
        print(f"\n{len(unfinished)} unfinished run(s):")
        for r in unfinished:
            done = len(r.get("history", []))
            print(f"- {r['run_dir']}: {r.get('status')} after {done} epoch(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
