"""OT-Filter's cost: the per-epoch filter at N = 50,000 and a MixMatch step vs a cross-entropy step.

1. The filter (``baselines/otfilter.py`` ``filter_labels``: two label-regularised transports,
   five Sinkhorn solves each, float64) on random 128-d features of N = 50,000 samples with
   K = 10 and K = 100 classes (CIFAR-10 / CIFAR-100 sizes), on the chosen device.
2. One training step of the same network (the method's D -> 128 -> K head around ``--model``)
   and batch size B: cross-entropy on B samples vs OT-Filter's MixMatch step (B labelled with
   two strong views, B unlabelled with two strong and two weak views; two guessing forwards
   and one forward/backward of 4B mixed rows), each with SGD's step; median of ``--steps``
   steps after two warm-up steps; peak memory on CUDA (``max_memory_allocated``). Views are
   random tensors (the augmentation's cost is the loader's, not measured here).

Usage: ``python benchmarks/bench_otfilter.py [--device cpu] [--model small_cnn --size 8]``;
writes ``benchmarks/results/otfilter_cost.json`` and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from noisybench.baselines.otfilter import OTFilter, filter_labels
from omegaconf import OmegaConf

from noisybench.config import CONF_DIR
from noisybench.method import Batch, MethodContext

RESULTS = Path(__file__).resolve().parent / "results" / "otfilter_cost.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def filter_time(n: int, k: int, device: torch.device) -> float:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(n, 128, generator=gen).to(device)
    labels = torch.randint(0, k, (n,), generator=gen).to(device)
    _sync(device)
    start = time.perf_counter()
    filter_labels(feats, labels, k)
    _sync(device)
    return time.perf_counter() - start


def _model(name: str, k: int, device: torch.device) -> torch.nn.Module:
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    cfg = {key: v for key, v in OmegaConf.to_container(cfg).items() if key != "name"}
    return instantiate(cfg, num_classes=k)


def step_times(
    model_name: str, size: int, batch: int, k: int, steps: int, device: torch.device
) -> dict:
    out = {}
    gen = torch.Generator().manual_seed(0)
    channels = 3
    views = {
        v: torch.randn(2 * batch, channels, size, size, generator=gen).to(device)
        for v in ("weak", "weak_2", "strong", "strong_2")
    }
    target = torch.randint(0, k, (2 * batch,), generator=gen).to(device)
    for kind in ("ce", "otfilter"):
        method = OTFilter(warm_up=0 if kind == "otfilter" else 10, batch_size=batch)
        net = method.network(_model(model_name, k, device)).to(device)
        method.setup(MethodContext(2 * batch, k, target, 1, 1, device))
        method.to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        if kind == "ce":
            b = Batch(idx=torch.arange(batch), target=target[:batch],
                      views={v: t[:batch] for v, t in views.items()})  # fmt: skip
        else:
            b = Batch(idx=torch.arange(2 * batch), target=target, views=views,
                      parts=(("unlabelled", batch), ("labelled", batch)))  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            loss = method.training_step(net, b, epoch=1).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        out[kind] = {"step_s": statistics.median(times)}
        if device.type == "cuda":
            out[kind]["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["ratio"] = out["otfilter"]["step_s"] / out["ce"]["step_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--model", default=None, help="default: preact_resnet18_dividemix (CUDA), small_cnn (CPU)"
    )
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("preact_resnet18_dividemix" if cuda else "small_cnn")
    size = args.size or (32 if cuda else 8)
    if not cuda:
        torch.set_num_threads(1)
    record = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "filter_s": {f"N={args.n} K={k}": filter_time(args.n, k, device) for k in (10, 100)},
        "step": {
            "model": model,
            "image": size,
            "batch": args.batch,
            **step_times(model, size, args.batch, 10, args.steps, device),
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
