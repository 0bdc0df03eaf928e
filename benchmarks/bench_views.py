"""Time the augmentation views and check the strong view's AutoAugment against torchvision.

On one batch of 128 CIFAR-sized (3x32x32) uint8 images on the CPU (or ``--device``):

* time of the plain, weak and strong views and of AutoAugment alone, next to one PreAct
  ResNet-18 training step (forward, backward, SGD step) on the same batch;
* distinct AutoAugment sub-policies per batch of 128 (expected 25 (1 - (24/25)^128) = 24.9
  when every image draws its own);
* per operation over many draws: how often it is applied per image, the share of positive
  signs, and the set of absolute magnitudes, for noisybench's batched AutoAugment and for
  torchvision's per-image ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` sampling (its own
  ``get_params`` and ``_augmentation_space``).

Usage: ``python benchmarks/bench_views.py [--reps 5] [--threads N] [--device cpu]``; writes
``benchmarks/results/views.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from noisybench.data.autoaugment import OPS, BatchedAutoAugment
from noisybench.data.views import build_views
from noisybench.models import create_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
BATCH = 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, reps: int, device: torch.device) -> dict[str, float]:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def _op_stats(ops: torch.Tensor, mags: torch.Tensor, images: int) -> dict[str, dict]:
    out = {}
    for i, name in enumerate(OPS):
        m = mags[ops == i]
        out[name] = {
            "applied_per_image": len(m) / images,
            "positive_share": (m > 0).float().mean().item() if len(m) else None,
            "abs_magnitudes": sorted({round(v, 3) for v in m.abs().tolist()}),
        }
    return out


def _ours(batches: int, device: torch.device) -> tuple[dict, float]:
    aa = BatchedAutoAugment()
    ops, mags, distinct = [], [], []
    for _ in range(batches):
        policy, op, mag, apply = aa.sample(BATCH, 32, 32, device)
        ops.append(op[apply].cpu())
        mags.append(mag[apply].cpu())
        distinct.append(len(torch.unique(policy)))
    stats = _op_stats(torch.cat(ops), torch.cat(mags), batches * BATCH)
    return stats, statistics.mean(distinct)


def _torchvision(batches: int) -> tuple[dict, float]:
    tv = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = tv._augmentation_space(10, (32, 32))
    ops, mags, distinct = [], [], []
    for _ in range(batches):
        pids = set()
        for _ in range(BATCH):
            pid, probs, signs = tv.get_params(len(tv.policies))
            pids.add(pid)
            for i, (name, p, b) in enumerate(tv.policies[pid]):
                if probs[i] <= p:
                    values, signed = space[name]
                    m = float(values[b].item()) if b is not None else 0.0
                    if signed and signs[i] == 0:
                        m = -m
                    ops.append(OPS.index(name))
                    mags.append(m)
        distinct.append(len(pids))
    stats = _op_stats(torch.tensor(ops), torch.tensor(mags), batches * BATCH)
    return stats, statistics.mean(distinct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--draws", type=int, default=200, help="batches of 128 for the stats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "views.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, device=device)
    augment = {"crop_padding": 4, "hflip": True, "erasing_p": 0.5}

    timing = {}
    for key in ("plain", "weak", "strong"):
        view = build_views([key], augment, CIFAR_MEAN, CIFAR_STD, 32)[key].to(device)
        timing[key] = _time(lambda v=view: v(x), args.reps, device)
    aa = BatchedAutoAugment().to(device)
    xf = x.float()
    timing["autoaugment_only"] = _time(lambda: aa(xf), args.reps, device)

    model = create_model("preact_resnet18", num_classes=10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    inputs = torch.randn(BATCH, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (BATCH,), device=device)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        opt.step()

    timing["preact_resnet18_train_step"] = _time(train_step, max(2, args.reps // 2), device)
    step = timing["preact_resnet18_train_step"]["median_ms"]
    ratios = {
        k: v["median_ms"] / step for k, v in timing.items() if k != "preact_resnet18_train_step"
    }

    torch.manual_seed(1)
    ours, ours_distinct = _ours(args.draws, device)
    torch.manual_seed(2)
    ref, ref_distinct = _torchvision(args.draws)

    result = {
        "batch": [BATCH, 3, 32, 32],
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "reps": args.reps,
        "draws": args.draws * BATCH,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "CPU shared with other jobs; timings are indicative.",
        "timing": timing,
        "relative_to_preact_resnet18_step": ratios,
        "distinct_subpolicies_per_batch": {"ours": ours_distinct, "torchvision": ref_distinct},
        "per_op": {"ours": ours, "torchvision": ref},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"batch {BATCH}x3x32x32 on {device}, {result['torch_threads']} threads")
    for key, t in timing.items():
        rel = f"  ({ratios[key]:.3f} x a PreAct ResNet-18 step)" if key in ratios else ""
        print(f"  {key:<28} {t['median_ms']:8.1f} ms{rel}")
    print(
        f"distinct sub-policies per batch: ours {ours_distinct:.2f}, torchvision {ref_distinct:.2f}"
    )
    print(
        "op            applied/img (ours, tv)   positive share (ours, tv)   |magnitudes| ours == tv"
    )
    for name in OPS:
        a, b = ours[name], ref[name]
        pa = "-" if a["positive_share"] is None else f"{a['positive_share']:.3f}"
        pb = "-" if b["positive_share"] is None else f"{b['positive_share']:.3f}"
        same = a["abs_magnitudes"] == b["abs_magnitudes"]
        print(
            f"  {name:<12} {a['applied_per_image']:.4f} {b['applied_per_image']:.4f}"
            f"        {pa:>6} {pb:>6}        {same}  {a['abs_magnitudes']}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
