"""Per-step time of cross-entropy, BSD and BSD+ (joint and separate forward) on one batch.

A step is what the engine does per mini-batch: ``training_step`` (forward, loss), backward,
an SGD step, and ``after_step`` (BSD's Eq. 5 target update). All methods see the same model
architecture, the same batch and the same random views. Also measured:

* ``update_ms``: BSD's ``after_step`` alone (the Eq. 5 update for one batch);
* ``weak_tv_joint_vs_separate``: mean total-variation distance between the weak-view
  predictions of BSD+'s joint pass (BatchNorm statistics over weak + strong images) and of a
  weak-only pass, at the same weights (0 for models without BatchNorm).

Cases: ``small_cnn`` on 8x8 one-channel images, batch 128, and ``preact_resnet18`` on 32x32
RGB, batch 32; both 10 classes.

Usage: ``python benchmarks/bench_methods_bsd.py [--reps 10] [--threads 1] [--skip-resnet]``;
writes ``benchmarks/results/bsd_step_time.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from noisybench.method import Batch, Method, MethodContext, StepOutput
from noisybench.methods.bsd import BSD
from noisybench.methods.bsdplus import BSDPlus
from noisybench.models import create_model

NUM_CLASSES = 10
NUM_SAMPLES = 5000


class _CE(Method):
    """``F.cross_entropy`` on the weak view, the reference cost."""

    views = ("weak",)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        return StepOutput(loss=F.cross_entropy(logits.float(), batch.target), logits=logits)


def _methods() -> dict[str, Callable[[], Method]]:
    return {
        "ce": _CE,
        "bsd": lambda: BSD(gamma=0.85, c=2000.0, tau=0.8),
        "bsdplus_joint": lambda: BSDPlus(lambda_c=7.0, cutmix_prob=0.5, joint_forward=True),
        "bsdplus_separate": lambda: BSDPlus(lambda_c=7.0, cutmix_prob=0.5, joint_forward=False),
    }


def _batch(views: tuple[str, ...], size: int, shape: tuple[int, ...], labels: torch.Tensor):
    idx = torch.randperm(NUM_SAMPLES)[:size]
    return Batch(idx=idx, target=labels[idx], views={v: torch.randn(size, *shape) for v in views})


def _time_case(model_name: str, in_ch: int, hw: int, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,))
    ctx = MethodContext(NUM_SAMPLES, NUM_CLASSES, labels, 1, 1, torch.device("cpu"))
    shape = (in_ch, hw, hw)
    all_views = ("weak", "strong_1", "strong_2")
    data = _batch(all_views, batch, shape, labels)
    out: dict = {"model": model_name, "batch": batch, "image": list(shape), "methods": {}}
    steps: dict[str, Callable[[], None]] = {}
    for name, factory in _methods().items():
        torch.manual_seed(1)
        model = create_model(model_name, NUM_CLASSES, in_ch).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        method = factory()
        method.setup(ctx)
        b = Batch(data.idx, data.target, {v: data.views[v] for v in method.views})

        def step(method=method, model=model, opt=opt, b=b) -> None:
            res = method.training_step(model, b, 0)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()
            method.after_step(b, res, 0)

        for _ in range(2):
            step()
        steps[name] = step
    # round-robin over the methods, so that load changes on a shared machine hit all alike
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        out["methods"][name] = {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts)}
    # Eq. 5 update alone
    method = BSD(gamma=0.85, c=2000.0)
    method.setup(ctx)
    probs = torch.softmax(torch.randn(batch, NUM_CLASSES), -1)
    res = StepOutput(loss=torch.zeros(()), logits=probs, state={"probs": probs})
    method.after_step(data, res, 0)
    t0 = time.perf_counter()
    for _ in range(100):
        method.after_step(data, res, 0)
    out["update_ms"] = 1e3 * (time.perf_counter() - t0) / 100
    # BN effect of the joint pass on the weak prediction (same weights, train mode)
    torch.manual_seed(1)
    model = create_model(model_name, NUM_CLASSES, in_ch).train()
    with torch.no_grad():
        joint = model(torch.cat([data.views[v] for v in all_views]))[:batch].softmax(-1)
        alone = model(data.views["weak"]).softmax(-1)
    out["weak_tv_joint_vs_separate"] = float(0.5 * (joint - alone).abs().sum(-1).mean())
    ce = out["methods"]["ce"]["median_ms"]
    for res_m in out["methods"].values():
        res_m["vs_ce"] = res_m["median_ms"] / ce
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("small_cnn", 1, 8, 128)]
    if not args.skip_resnet:
        cases.append(("preact_resnet18", 3, 32, 32))
    results = {
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "note": "median over reps; CPU shared with other jobs, so compare ratios, not ms",
        "cases": [_time_case(*case, reps=args.reps) for case in cases],
    }
    path = Path(__file__).resolve().parent / "results" / "bsd_step_time.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    for case in results["cases"]:
        print(f"{case['model']} batch {case['batch']} image {case['image']}")
        for name, r in case["methods"].items():
            print(f"  {name:18s} {r['median_ms']:9.2f} ms  (x{r['vs_ce']:.2f} of CE)")
        print(f"  Eq. 5 update alone {case['update_ms']:9.3f} ms")
        print(f"  weak-view TV, joint vs weak-only pass: {case['weak_tv_joint_vs_separate']:.4f}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
