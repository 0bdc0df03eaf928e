"""Operator counts per training step: a device-independent proxy for kernel launches.

On a GPU a CIFAR-sized step of PreAct ResNet-18 is short enough that the host's work per
operator (Python, the dispatcher, the kernel launch: a few microseconds each) can bound the
speed, so the number of operators a step issues matters there even when it does not on a CPU.
This counts, with ``torch.profiler`` on the CPU, the innermost ATen operators that do work on
tensor data (metadata-only operators such as ``view``, ``as_strided`` or ``empty`` excluded)
in one training step (:meth:`noisybench.engine.Trainer.train_step`: forward, loss, backward,
optimizer and schedule, the method's ``after_step``) and in the drawing of one batch (the
loader's views), for every method in ``conf/method/``, at batch 128 on CIFAR-shaped data
(``dataset=synthetic``) with PreAct ResNet-18. On CUDA most counted operators are one kernel
each; fused optimizer kernels (``optimizer_impl=auto`` there) issue fewer than counted here.

    python benchmarks/bench_ops.py        # -> benchmarks/results/ops_per_step.json
"""

from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_throughput import experiment
from torch.profiler import ProfilerActivity, profile

from noisybench.config import CONF_DIR
from noisybench.data.loader import plan_seed
from noisybench.engine import _EpochSums

OUT = Path(__file__).resolve().parent / "results" / "ops_per_step.json"
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem != "kd")
# Operators that only make tensor metadata or allocate (no pass over the data).
METADATA = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::as_strided",
    "aten::view",
    "aten::_unsafe_view",
    "aten::reshape",
    "aten::expand",
    "aten::permute",
    "aten::transpose",
    "aten::t",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::select",
    "aten::slice",
    "aten::detach",
    "aten::alias",
    "aten::resize_",
    "aten::lift_fresh",
    "aten::result_type",
    "aten::set_",
    "aten::unbind",
    "aten::split",
    "aten::split_with_sizes",
    "aten::chunk",
    "aten::narrow",
    "aten::flatten",
    "aten::view_as",
    "aten::expand_as",
    "aten::_reshape_alias",
    "aten::is_nonzero",
    "aten::to",  # innermost only when it returns its input (a conversion runs _to_copy)
    "aten::as_strided_",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::contiguous",  # likewise: a real copy shows as clone/copy_ below it
}


def count_ops(fn: Callable[[], Any]) -> tuple[int, collections.Counter[str]]:
    """Innermost ATen operators run by ``fn`` that touch tensor data, and their names."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::") and not e.cpu_children and e.name not in METADATA
    ]
    return len(names), collections.Counter(names)


def measure(method: str) -> dict[str, Any]:
    # the throughput benchmark's experiment (same model, data shape, noise, batch), smaller
    exp = experiment(
        method,
        torch.device("cpu"),
        ["dataset.reader.num_train=1024", "dataset.reader.num_test=128"],
    )
    trainer = exp.trainer()
    trainer.model.train()
    trainer.method.train()
    sums = _EpochSums.zeros(exp.device)
    # the epoch as the engine draws it: the method's own plan if it lays epochs out itself
    plan = trainer.method.epoch_plan(1, plan_seed(exp.source.seed, 1))
    batches = iter(exp.source.epoch(1, 0, plan))
    trainer.train_step(next(batches), 1, 0, sums)  # lazy state (momentum buffers) first
    drawn: list[Any] = []
    load, load_names = count_ops(lambda: drawn.append(next(batches)))
    step, step_names = count_ops(lambda: trainer.train_step(drawn[0], 1, 1, sums))
    return {
        "step_ops": step,
        "batch_drawing_ops": load,
        "views": list(exp.source.loader.views),
        "top_step_ops": dict(step_names.most_common(8)),
        "top_drawing_ops": dict(load_names.most_common(8)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {m: measure(m) for m in args.methods}
    out = {
        "methods": results,
        "settings": {
            "model": "preact_resnet18",
            "batch_size": 128,
            "data": "synthetic 3x32x32",
            "torch": torch.__version__,
            "counted": "innermost aten ops, metadata-only ops excluded (see METADATA)",
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    ce = results.get("ce", {}).get("step_ops")
    print("| method | views | ops per step | ops per batch drawn | total / CE step |")
    print("|---|---|---:|---:|---:|")
    for m, r in results.items():
        ratio = f"{(r['step_ops'] + r['batch_drawing_ops']) / ce:.2f}" if ce else ""
        views = ", ".join(r["views"])
        print(f"| {m} | {views} | {r['step_ops']} | {r['batch_drawing_ops']} | {ratio} |")


if __name__ == "__main__":
    main()
