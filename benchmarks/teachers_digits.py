"""Issue 27 experiment: students distilled from deterministic, ensemble, SWAG and MC-dropout
teachers under 50 % symmetric noise on the offline digits, next to cross-entropy and BSD.

    OMP_NUM_THREADS=1 python benchmarks/teachers_digits.py --out /tmp/teachers --seeds 0 1 2

Every run is the CLI's (``python -m noisybench experiment=quickstart ...``: digits, small_cnn,
sym50, Adam + one-cycle, ``cpu_threads=1``) with ``epochs`` epochs; a finished run is reported,
not rerun. Teachers per seed: ``method=swag`` (cross-entropy whose training the SWAG wrapper
does not change: it is the deterministic and the Laplace teacher too), ``method=ensemble``
(3 members) and ``method=ce ++model.dropout=0.2`` (MC dropout). Students per seed:
``method=kd`` with ``+teacher=deterministic|ensemble|swag|mc_dropout|laplace`` (all with
``store=true``: the teacher's predictive distribution on the plain view, computed once),
``method=ce`` and ``method=bsd``.

Printed and saved (``summary.json``): per student kind, over seeds, the last-epoch and the best
(selected on the test set: digits has no validation split) test accuracy, and the convergence
noise (across-step variance of the mini-batch loss and of the gradient norm, averaged over the
epochs); per teacher kind its test accuracy, ECE and NLL of the predictive distribution, the
passes over the training set its store costs, the seconds it took and its extra memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TEACHERS = {  # kind -> (teacher method overrides)
    "swag": ["method=swag"],
    "ensemble": ["method=ensemble"],
    "mc": ["method=ce", "++model.dropout=0.2"],
}
KINDS = {  # student teacher kind -> teacher run
    "deterministic": "swag",
    "ensemble": "ensemble",
    "swag": "swag",
    "mc_dropout": "mc",
    "laplace": "swag",
}


def cli(args: list[str], out: Path, name: str) -> Path:
    """Run (or report) one experiment in ``out/name``; returns its run directory."""
    cmd = [sys.executable, "-m", "noisybench", *args, f"out_dir={out}", f"run_name={name}"]
    cmd += ["progress=false", "logger=[]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return out / name


def base(epochs: int, seed: int) -> list[str]:
    return ["experiment=quickstart", f"epochs={epochs}", f"seed={seed}"]


def teacher_metrics(kind: str, run: Path, epochs: int, seed: int) -> dict[str, Any]:
    """The teacher's predictive distribution on the test set (acc, ECE, NLL) and its cost."""
    from noisybench import metrics
    from noisybench.build import build
    from noisybench.config import compose

    cfg = compose(
        [
            *base(epochs, seed),
            "method=kd",
            f"+teacher={kind}",
            "method.teacher.store=true",
            f"method.teacher_runs=[{run}]",
            "device=cpu",
        ]
    )
    exp = build(cfg)
    trainer = exp.trainer()
    teacher = exp.method.teacher

    def on_test(module: torch.nn.Module) -> torch.Tensor:
        was = module.training
        module.eval()
        try:
            return trainer.predict.outputs("test", module, lambda z: z.float())
        finally:
            module.train(was)

    begin = time.perf_counter()
    acc, count = None, 0
    with torch.random.fork_rng():
        torch.manual_seed(teacher.seed)
        for logits in teacher.sample_logits(on_test, trainer.evaluate_train):
            p = F.softmax(logits, dim=-1)
            acc = p if acc is None else acc + p
            count += 1
    seconds = time.perf_counter() - begin
    assert acc is not None
    m = metrics.classification_metrics((acc / count).clamp(min=1e-12).log(), exp.source.labels.test)
    params = sum(p.numel() for p in exp.model.parameters())
    extra = {"deterministic": 0, "ensemble": 2 * params, "mc_dropout": 0}
    head = exp.model.head  # Laplace: the N x H training features and 2 K (H + 1) floats
    extra["laplace"] = (
        exp.source.labels.train_given.numel() * head.in_features + 2 * head.weight.numel()
    )
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    swag_floats = sum(
        v.numel() for k, v in (ckpt.get("method") or {}).items() if k.startswith("swag_")
    )
    extra["swag"] = swag_floats
    return {
        **{k: float(v) for k, v in m.items()},
        "samples": count,
        "train_passes": teacher.passes(),
        "test_seconds": round(seconds, 3),
        "extra_memory_mb": round(extra[kind] * 4 / 2**20, 3),
    }


def summarise(result: dict[str, Any]) -> dict[str, float]:
    """Last and best test accuracy; the convergence noise averaged over the epochs, raw and
    relative (coefficient of variation: std / mean, comparable between losses of different
    scale such as KD's T^2-weighted KL and a cross-entropy)."""
    hist = result["history"]
    out = {"last_acc": result["last"]["test/acc"], "best_acc": result["best"]["test/acc"]}
    for name in ("loss_step", "grad_norm"):
        var = [h[f"train/{name}_var"] for h in hist]
        mean = [h[f"train/{name}_mean"] for h in hist]
        out[f"{name}_var"] = statistics.fmean(var)
        out[f"{name}_cv"] = statistics.fmean(v**0.5 / m for v, m in zip(var, mean, strict=True))
    for key in ("method/teacher_passes", "method/teacher_store_mb"):
        if key in hist[-1]:
            out[key.split("/")[1]] = hist[-1][key]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/teachers"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    out, E = args.out, args.epochs
    pool = ThreadPoolExecutor(args.jobs)
    teacher_runs: dict[tuple[str, int], Path] = {}
    futures = {
        (t, s): pool.submit(cli, [*base(E, s), *o], out, f"teacher_{t}_seed{s}")
        for s in args.seeds
        for t, o in TEACHERS.items()
    }
    student_futures = {}
    for s in args.seeds:
        for kind in ("ce", "bsd"):
            student_futures[(kind, s)] = pool.submit(
                cli, [*base(E, s), f"method={kind}"], out, f"student_{kind}_seed{s}"
            )
    for key, fut in futures.items():
        teacher_runs[key] = fut.result()
    for s in args.seeds:
        for kind, t in KINDS.items():
            over = [*base(E, s), "method=kd", f"+teacher={kind}", "method.teacher.store=true"]
            over.append(f"method.teacher_runs=[{teacher_runs[(t, s)]}]")
            student_futures[(f"kd_{kind}", s)] = pool.submit(
                cli, over, out, f"student_kd_{kind}_seed{s}"
            )
    students: dict[str, list[dict[str, float]]] = {}
    for (kind, _s), fut in sorted(student_futures.items()):
        result = json.loads((fut.result() / "result.json").read_text())
        students.setdefault(kind, []).append(summarise(result))
    teachers: dict[str, list[dict[str, Any]]] = {}
    for s in args.seeds:
        for kind, t in KINDS.items():
            teachers.setdefault(kind, []).append(teacher_metrics(kind, teacher_runs[(t, s)], E, s))
    summary = {"epochs": E, "seeds": args.seeds, "students": students, "teachers": teachers}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    def ms(values: list[float]) -> str:
        m = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{m:.4f} ± {sd:.4f}"

    print(f"students (digits, small_cnn, sym50, {E} epochs, seeds {args.seeds}; mean ± sd)")
    print(
        "| student | last acc | best acc (test-selected) | loss step var | loss step CV "
        "| grad-norm var | grad-norm CV |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, rows in students.items():
        cols = ["last_acc", "best_acc", "loss_step_var", "loss_step_cv"]
        cols += ["grad_norm_var", "grad_norm_cv"]
        print(f"| {kind} | " + " | ".join(ms([r[c] for r in rows]) for c in cols) + " |")
    print("\nteachers (predictive distribution on the test set)")
    print("| teacher | acc | ECE | NLL | samples | train passes | extra memory MB |")
    print("|---|---|---|---|---|---|---|")
    for kind, rows in teachers.items():
        cells = [ms([r[c] for r in rows]) for c in ("acc", "ece", "nll")]
        cells += [
            str(rows[0]["samples"]),
            str(rows[0]["train_passes"]),
            str(rows[0]["extra_memory_mb"]),
        ]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
