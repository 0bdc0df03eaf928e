"""Time the augmentation views and measure the diversity of the strong view per chunk size.

Kornia's AutoAugment draws one sub-policy per call, so the strong view calls it on chunks of
``strong_chunk`` images (noisybench/data/views.py). This script measures, on one batch of 128
CIFAR-sized images on the CPU:

* the time of the plain and weak views, and of the strong view for several chunk sizes;
* diversity per chunk size, over a batch of 128 copies of ONE image with only AutoAugment
  active (no crop, flip or erasing): the number of distinct sub-policies used per batch, the
  fraction of image pairs that got different sub-policies (0.96 = 1 - 1/25 would be fully
  per-image), and the number of distinct outputs.

Usage: ``python benchmarks/bench_views.py [--reps 5] [--threads N]``; writes
``benchmarks/results/views.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import kornia
import torch

from noisybench.data.views import build_views

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CHUNKS = (1, 8, 16, 32, 128)
BATCH = 128


def _time(fn, x: torch.Tensor, reps: int) -> dict[str, float]:
    fn(x)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def _diversity(chunk: int, reps: int) -> dict[str, float]:
    view = build_views(
        ["strong"],
        {"crop_padding": 0, "hflip": False, "erasing_p": 0.0, "strong_chunk": chunk},
        CIFAR_MEAN,
        CIFAR_STD,
        32,
    )["strong"]
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    x = one.repeat(BATCH, 1, 1, 1)
    subpolicies, pair_diff, outputs = [], [], []
    for _ in range(reps):
        out = view(x)
        names = view.last_subpolicies
        per_image = [names[i // chunk] for i in range(BATCH)]
        subpolicies.append(len(set(names)))
        same = sum(per_image[i] == per_image[j] for i in range(BATCH) for j in range(i))
        pair_diff.append(1 - same / (BATCH * (BATCH - 1) / 2))
        q = torch.round(out * 1e3).to(torch.int64).flatten(1)
        outputs.append(len({tuple(r.tolist()) for r in q}))
    return {
        "distinct_subpolicies_per_batch": statistics.mean(subpolicies),
        "pairs_with_different_subpolicy": statistics.mean(pair_diff),
        "distinct_outputs_of_128_identical": statistics.mean(outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "views.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8)
    augment = {"crop_padding": 4, "hflip": True, "erasing_p": 0.5}

    timing = {}
    for key in ("plain", "weak"):
        view = build_views([key], augment, CIFAR_MEAN, CIFAR_STD, 32)[key]
        timing[key] = _time(view, x, args.reps)
    strong = {}
    for chunk in CHUNKS:
        view = build_views(
            ["strong"], {**augment, "strong_chunk": chunk}, CIFAR_MEAN, CIFAR_STD, 32
        )["strong"]
        strong[str(chunk)] = {**_time(view, x, args.reps), **_diversity(chunk, args.reps)}

    result = {
        "batch": [BATCH, 3, 32, 32],
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "reps": args.reps,
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "machine": platform.processor() or platform.machine(),
        "note": "CPU shared with other jobs; timings are indicative. Diversity measured on "
        "128 copies of one image with only AutoAugment active.",
        "views": timing,
        "strong_by_chunk": strong,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"views on {BATCH}x3x32x32 uint8, CPU, {result['torch_threads']} threads")
    for key, t in timing.items():
        print(f"  {key:<8} {t['median_ms']:8.1f} ms (median of {args.reps})")
    print("  strong   chunk   ms/batch  subpolicies/batch  pairs-differ  distinct-outputs")
    for chunk, r in strong.items():
        print(
            f"           {chunk:>5} {r['median_ms']:9.1f} "
            f"{r['distinct_subpolicies_per_batch']:18.1f} "
            f"{r['pairs_with_different_subpolicy']:13.3f} "
            f"{r['distinct_outputs_of_128_identical']:17.1f}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
