"""Training throughput on any device: a bare loop, noisybench's engine and the peers' pipeline.

PreAct ResNet-18 at batch 128 on CIFAR-10-shaped synthetic data (``dataset=synthetic``: 50,000
training and 10,000 test images of 3 x 32 x 32, uint8; nothing is downloaded). Measured, in
images per second of training:

* ``bare``: a bare PyTorch loop (zero_grad, forward, cross-entropy, backward, SGD step) on
  pre-made, normalised device batches: the ceiling, with the engine's precision, memory
  format, compile and optimizer settings; ``bare x3`` the same at batch 384, the compute of
  a BSD+ step (weak + 2 strong views in one forward pass);
* ``engine ce|bsd|bsdplus``: :class:`noisybench.engine.Trainer` steps of the method as built
  by :func:`noisybench.build.build`, including drawing and augmenting the batch on the device;
* ``peers``: the usual pipeline of the peers' code: torchvision's ``CIFAR10`` dataset class over
  the same uint8 arrays, PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize), a ``DataLoader`` with worker processes, feeding the same model;
* the loaders alone (weak view, BSD+'s weak + 2 strong views, the peers' DataLoader) and the
  evaluation forward passes, from which the augmentation's share of a step and the
  evaluation's share of an epoch follow, and the time of a full paper run (300 epochs of 50k
  images, test set of 10k evaluated every epoch, training-set diagnostics every
  ``eval.train_diagnostics_every`` epochs) is extrapolated.

Every configuration trains the same model object (CE's), so they differ only in what the
harness and the method add. Every measurement is ``--steps`` steps after ``--warmup`` steps;
all configurations are timed back to back (in alternating order) in each of ``--repeats``
rounds, and medians are reported (robust on a shared machine). Extra config overrides for
the engine go after ``--set``.

Usage: ``python benchmarks/bench_throughput.py --device auto``; writes
``benchmarks/results/throughput_<device>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from noisybench.baselines import CODE_DEFAULTS

from noisybench.build import (
    Experiment,
    build,
    eval_batch_size,
    optimizer_impl_kwargs,
    resolve_device,
)
from noisybench.config import compose
from noisybench.data.loader import plan_seed
from noisybench.engine import _EpochSums

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 128
METHODS = ("ce", "bsd", "bsdplus")
TARGETS = {  # issue 13: name -> (value key, comparison, bound)
    "engine CE / bare loop": ("ce_over_bare", ">=", 0.95),
    "loading+augmentation / CE step": ("aug_share_ce", "<=", 0.05),
    "loading+augmentation / BSD+ step": ("aug_share_bsdplus", "<=", 0.15),
    "BSD step / CE step": ("bsd_over_ce", "<=", 1.02),
    "BSD+ step / CE step": ("bsdplus_over_ce", "<=", 3.15),
    "evaluation / epoch (default settings)": ("eval_share", "<=", 0.05),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One timed configuration: ``step()`` does one unit of work (a training step, a batch
    drawn, or an evaluation batch) of ``items`` images; ``seconds`` holds one time per
    timed step, in the order they ran."""

    def __init__(self, name: str, step: Callable[[], Any], items: int) -> None:
        self.name, self.step, self.items = name, step, items
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process's CPU time (all its threads)

    def run_once(self, device: torch.device) -> None:
        synchronize(device)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        self.step()
        synchronize(device)
        self.seconds.append(time.perf_counter() - begin)
        self.cpu_seconds.append(time.process_time() - cpu_begin)

    @property
    def step_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_s(self) -> float:
        return self.items / self.step_s


def paired_ratio(a: Bench, b: Bench, cpu: bool = False) -> float:
    """Median over the steps of ``time(a) / time(b)``, step ``i`` of each run back to back (a
    machine whose load drifts slows both alike). ``cpu``: the process's CPU time instead of
    wall time (on a CPU shared with other jobs, much less sensitive to their load)."""
    xs, ys = (a.cpu_seconds, b.cpu_seconds) if cpu else (a.seconds, b.seconds)
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True))


def experiment(method: str, device: torch.device, sets: list[str]) -> Experiment:
    cfg = compose(
        [
            "dataset=synthetic",
            "model=preact_resnet18",
            "noise=sym50",  # any noise: BSD+'s lambda_c preset is per noise setting
            f"method={method}",
            *CODE_DEFAULTS.get(method, []),  # synthetic data: no per-setting authors' value
            f"batch_size={BATCH}",
            f"device={device}",
            "logger=[]",
            "progress=false",
            *sets,
        ]
    )
    return build(cfg, device=device)


def endless(exp: Experiment) -> Iterator[Any]:
    """Batches of epoch after epoch as the engine draws them: with the method's own plan when
    it lays its epochs out itself (DivideMix's reference loaders, OT-Filter, CSOT)."""
    for epoch in itertools.count():
        plan = exp.method.epoch_plan(epoch, plan_seed(exp.source.seed, epoch))
        yield from exp.source.epoch(epoch, 0, plan)


def engine_benches(method: str, exp: Experiment) -> tuple[Bench, Bench]:
    """The engine's training step (batch drawing included) and the batch drawing alone."""
    trainer = exp.trainer()
    trainer.model.train()
    trainer.method.train()
    sums = _EpochSums.zeros(exp.device)
    batches, drawn = endless(exp), endless(exp)
    counter = itertools.count()

    def step() -> None:
        trainer.train_step(next(batches), 0, next(counter) % len(exp.source), sums)

    def draw() -> None:
        next(drawn)

    return Bench(f"engine {method}", step, BATCH), Bench(f"loader {method}", draw, BATCH)


def eval_benches(exp: Experiment, images: int) -> tuple[Bench, Bench]:
    """Evaluation passes as the engine's built-in suites make them (``trainer.predict.split``,
    :class:`noisybench.evaluation.base.Predictor`): the test set (logits kept) and the
    training-set diagnostics (arg-max only), over the first ``images`` images of each."""
    trainer = exp.trainer()
    first = torch.arange(images, device=exp.device)

    def test() -> None:
        trainer.predict.split("test", lambda z: z.float(), first)

    def train() -> None:
        trainer.predict.split("train", lambda z: z.argmax(-1), first)

    return Bench("eval test", test, images), Bench("eval train", train, images)


def sgd(model: torch.nn.Module, exp: Experiment) -> torch.optim.Optimizer:
    impl = optimizer_impl_kwargs(
        str(exp.cfg.get("optimizer_impl", "default")), "torch.optim.SGD", exp.device
    )
    return torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4, **impl)


def train_step_fn(
    model: torch.nn.Module, exp: Experiment
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    opt = sgd(model, exp)
    amp = exp.amp_dtype
    device = exp.device

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


def memory_format(exp: Experiment) -> torch.memory_format:
    weight = next(p for p in exp.model.parameters() if p.dim() == 4)
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not (
        weight.is_contiguous()
    )
    return torch.channels_last if channels_last else torch.contiguous_format


def bare_bench(exp: Experiment, batch: int = BATCH, name: str = "bare") -> Bench:
    """A bare loop over 8 pre-made normalised device batches of ``batch`` images, same model
    settings. At ``3 * BATCH`` it is the compute floor of a BSD+ step (weak + 2 strong views
    in one forward pass), which on a CPU costs more per image than a batch of ``BATCH``."""
    torch.manual_seed(0)
    model = exp.model.train()  # the one network every configuration trains (see main)
    fmt = memory_format(exp)
    xs = [
        torch.randn(batch, 3, 32, 32, device=exp.device).contiguous(memory_format=fmt)
        for _ in range(8)
    ]
    ys = [torch.randint(0, 10, (batch,), device=exp.device) for _ in range(8)]
    step = train_step_fn(model, exp)
    counter = itertools.count()

    def run() -> None:
        i = next(counter) % len(xs)
        step(xs[i], ys[i])

    return Bench(name, run, batch)


def peers_benches(exp: Experiment, workers: int) -> tuple[Bench, Bench]:
    """torchvision CIFAR10 class over the same uint8 arrays + PIL transforms + DataLoader."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    data = exp.data
    mean, std = data.mean, data.std
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    # torchvision's own dataset class and __getitem__ (uint8 HWC array -> PIL -> transform),
    # with the arrays set directly instead of being read from the pickled files.
    dataset = CIFAR10.__new__(CIFAR10)
    dataset.data = np.ascontiguousarray(data.train_images.permute(0, 2, 3, 1).numpy())
    dataset.targets = data.train_labels.tolist()
    dataset.transform, dataset.target_transform = transform, None
    cuda = exp.device.type == "cuda"

    def loader() -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            pin_memory=cuda,
            drop_last=True,
            persistent_workers=workers > 0,
        )

    model = exp.model.train()  # the one network every configuration trains (see main)
    fmt = memory_format(exp)
    step = train_step_fn(model, exp)
    train_loader = loader()
    train_iter = iter(train_loader)

    def train() -> None:
        nonlocal train_iter
        try:
            x, y = next(train_iter)
        except StopIteration:
            train_iter = iter(train_loader)
            x, y = next(train_iter)
        x = x.to(exp.device, non_blocking=True).contiguous(memory_format=fmt)
        step(x, y.to(exp.device, non_blocking=True))

    # The loading alone, in one process: the CPU work of one batch (what the workers must
    # keep up with; a timed pull from the workers would read batches prefetched while the
    # previous step ran).
    from torch.utils.data import default_collate

    order = iter(itertools.cycle(torch.randperm(len(dataset)).tolist()))

    def load() -> None:
        x, _ = default_collate([dataset[next(order)] for _ in range(BATCH)])
        x.to(exp.device, non_blocking=True)

    return Bench("peers", train, BATCH), Bench("loader peers", load, BATCH)


def diagnostics_epochs(epochs: int, every: int) -> int:
    """Epochs with a training-set pass: every ``every``-th and the last (engine rule)."""
    return sum(1 for e in range(epochs) if (e + 1) % every == 0 or e + 1 == epochs)


def summarise(
    benches: dict[str, Bench], exp: Experiment, epochs: int, every: int
) -> dict[str, Any]:
    n_train = int(exp.data.train_images.shape[0])
    n_test = int(exp.data.test_images.shape[0])
    subset = exp.cfg.eval.get("train_diagnostics_subset")
    n_diag = n_train if subset is None else min(int(subset), n_train)
    s = {name: b.step_s for name, b in benches.items()}
    ips = {name: b.images_per_s for name, b in benches.items()}
    test_s = n_test / ips["eval test"]
    train_pass_s = n_diag / ips["eval train"]

    def eval_epoch_s(k: int) -> float:
        return test_s + train_pass_s * diagnostics_epochs(epochs, k) / epochs

    train_epoch_s = {m: n_train / ips[f"engine {m}"] for m in METHODS}
    ce_epoch = train_epoch_s["ce"]
    b = benches
    ratios = {
        "ce_over_bare": paired_ratio(b["bare"], b["engine ce"]),
        "aug_share_ce": paired_ratio(b["loader ce"], b["engine ce"]),
        "aug_share_bsdplus": paired_ratio(b["loader bsdplus"], b["engine bsdplus"]),
        "bsd_over_ce": paired_ratio(b["engine bsd"], b["engine ce"]),
        "bsdplus_over_ce": paired_ratio(b["engine bsdplus"], b["engine ce"]),
        # The compute floor of BSD+ (3 x 128 images per forward/backward) against the engine:
        "bsdplus_over_bare_x3": paired_ratio(b["engine bsdplus"], b["bare x3"]),
        "bare_x3_over_bare": paired_ratio(b["bare x3"], b["bare"]),
        "eval_share": eval_epoch_s(every) / (ce_epoch + eval_epoch_s(every)),
        "eval_share_every_epoch": eval_epoch_s(1) / (ce_epoch + eval_epoch_s(1)),
        "peers_over_engine_ce": paired_ratio(b["engine ce"], b["peers"]),
        # The same ratios in CPU time of this process (meaningful on device=cpu only; the
        # peers' worker processes are not in it).
        "cpu_time": {
            "ce_over_bare": paired_ratio(b["bare"], b["engine ce"], cpu=True),
            "aug_share_ce": paired_ratio(b["loader ce"], b["engine ce"], cpu=True),
            "aug_share_bsdplus": paired_ratio(b["loader bsdplus"], b["engine bsdplus"], cpu=True),
            "bsd_over_ce": paired_ratio(b["engine bsd"], b["engine ce"], cpu=True),
            "bsdplus_over_ce": paired_ratio(b["engine bsdplus"], b["engine ce"], cpu=True),
        },
        "peers_loader_share": paired_ratio(b["loader peers"], b["peers"]),
    }
    paper_run = {
        m: {
            "epoch_s": train_epoch_s[m] + eval_epoch_s(every),
            "run_h": epochs * (train_epoch_s[m] + eval_epoch_s(every)) / 3600,
        }
        for m in METHODS
    }
    paper_run["peers ce"] = {
        "epoch_s": n_train / ips["peers"] + eval_epoch_s(every),
        "run_h": epochs * (n_train / ips["peers"] + eval_epoch_s(every)) / 3600,
    }
    return {
        "images_per_s": ips,
        "step_s": s,
        "ratios": ratios,
        "eval_epoch_s": {"default": eval_epoch_s(every), "every_epoch": eval_epoch_s(1)},
        "paper_run": paper_run,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(result: dict[str, Any]) -> str:
    ips, ratios, run = result["images_per_s"], result["ratios"], result["paper_run"]
    s = result["settings"]
    lines = [
        f"Device: {s['device_name']} ({s['device']}); torch {s['torch']}; amp {s['amp']}, "
        f"channels_last {s['channels_last']}, compile {s['compile']}, deterministic "
        f"{s['deterministic']}, optimizer_impl {s['optimizer_impl']}; {s['steps']} steps x "
        f"{s['repeats']} rounds, interleaved (medians; ratios: median of back-to-back "
        f"pairs); load average {s['loadavg_before']} -> "
        f"{s['loadavg_after']}",
        "",
        "| pipeline | images/s | step (ms) | 300-epoch run (h) |",
        "|---|---:|---:|---:|",
        f"| bare PyTorch loop (pre-made device batches) | {ips['bare']:.0f} | "
        f"{1000 * result['step_s']['bare']:.0f} | |",
        f"| bare PyTorch loop, batch {3 * BATCH} (BSD+'s forward size) | "
        f"{ips['bare x3']:.0f} | {1000 * result['step_s']['bare x3']:.0f} | |",
    ]
    for m in METHODS:
        lines.append(
            f"| noisybench engine, {m} | {ips[f'engine {m}']:.0f} | "
            f"{1000 * result['step_s'][f'engine {m}']:.0f} | {run[m]['run_h']:.2f} |"
        )
    lines += [
        f"| peers: torchvision CIFAR10 + PIL transforms + DataLoader({s['workers']} workers), "
        f"ce | {ips['peers']:.0f} | {1000 * result['step_s']['peers']:.0f} | "
        f"{run['peers ce']['run_h']:.2f} |",
        f"| loader alone: weak view | {ips['loader ce']:.0f} | "
        f"{1000 * result['step_s']['loader ce']:.1f} | |",
        f"| loader alone: weak + 2 strong views (BSD+) | {ips['loader bsdplus']:.0f} | "
        f"{1000 * result['step_s']['loader bsdplus']:.1f} | |",
        f"| loader alone: peers' PIL transforms + collate, one process | "
        f"{ips['loader peers']:.0f} | "
        f"{1000 * result['step_s']['loader peers']:.1f} | |",
        f"| evaluation forward, test set (batch {s['eval_batch_size']}) | "
        f"{ips['eval test']:.0f} | | |",
        "",
        "| ratio | target | measured (wall time) | met | CPU time of the process |",
        "|---|---|---:|---|---:|",
    ]
    for label, (key, op, bound) in TARGETS.items():
        value = ratios[key]
        ok = value >= bound if op == ">=" else value <= bound
        cpu_value = ratios["cpu_time"].get(key)
        cpu_text = f"{cpu_value:.3f}" if cpu_value is not None else ""
        lines.append(
            f"| {label} | {op} {bound} | {value:.3f} | {'yes' if ok else 'no'} | {cpu_text} |"
        )
    lines += [
        f"| evaluation / epoch, diagnostics every epoch (before) | | "
        f"{ratios['eval_share_every_epoch']:.3f} | | |",
        f"| bare loop at batch {3 * BATCH} / bare loop at {BATCH} (BSD+'s floor) | | "
        f"{ratios['bare_x3_over_bare']:.3f} | | |",
        f"| BSD+ step / bare loop at batch {3 * BATCH} | | "
        f"{ratios['bsdplus_over_bare_x3']:.3f} | | |",
        f"| peers' pipeline / engine CE | | {ratios['peers_over_engine_ce']:.3f} | | |",
        f"| peers' loading (one process) / peers' step | | "
        f"{ratios['peers_loader_share']:.3f} | | |",
    ]
    return "\n".join(lines)


def measure(  # noqa: PLR0913
    device: torch.device,
    *,
    steps: int,
    warmup: int,
    repeats: int,
    workers: int,
    eval_images: int | None = None,
    epochs: int = 300,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Build, warm up and time every configuration (see the module docstring); the result
    dict that :func:`markdown` prints and ``main`` writes (also used by gpu_check.py)."""
    sets = list(sets or [])
    loadavg_before = os.getloadavg()
    exps = {m: experiment(m, device, sets) for m in METHODS}
    ce = exps["ce"]
    # Every configuration trains the same network object (CE's model, optimizer and
    # schedule): separately built copies of a model ran up to 6 % apart on the CPU (where
    # their parameters happen to lie in memory), which hid the methods' own costs.
    for m in METHODS:
        exps[m] = dataclasses.replace(
            exps[m], model=ce.model, optimizer=ce.optimizer, scheduler=ce.scheduler
        )
    eval_images = eval_images or int(ce.data.test_images.shape[0])
    benches: dict[str, Bench] = {
        "bare": bare_bench(ce),
        "bare x3": bare_bench(ce, 3 * BATCH, "bare x3"),
    }
    for m, exp in exps.items():
        benches[f"engine {m}"], benches[f"loader {m}"] = engine_benches(m, exp)
    benches["peers"], benches["loader peers"] = peers_benches(ce, workers)
    benches["eval test"], benches["eval train"] = eval_benches(ce, eval_images)

    for bench in benches.values():
        for _ in range(warmup if not bench.name.startswith("eval") else 1):
            bench.step()
    synchronize(device)
    # Interleaved: one step of every configuration in turn, so that each configuration's
    # i-th step ran next to the others' i-th step; the order is reversed every other turn, so
    # no configuration always runs after the same one (on the CPU a fixed order biased BSD /
    # CE by +4 %: tests of the same two steps in alternating order gave 0.97-1.02).
    turn = 0
    for _ in range(repeats):
        for i in range(steps):
            order = list(benches.values())
            for bench in order if turn % 2 == 0 else order[::-1]:
                if i == 0 or not bench.name.startswith("eval"):
                    bench.run_once(device)
            turn += 1

    every = int(ce.cfg.eval.get("train_diagnostics_every") or 1)
    result = summarise(benches, ce, epochs, every)
    result["settings"] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "amp": str(ce.amp_dtype).replace("torch.", "") if ce.amp_dtype else "off",
        "channels_last": memory_format(ce) == torch.channels_last,
        "compile": bool(ce.cfg.get("compile", False)),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "optimizer_impl": str(ce.cfg.get("optimizer_impl", "default")),
        "train_diagnostics_every": every,
        "eval_batch_size": eval_batch_size(ce.cfg.eval.batch_size, device),
        "eval_images_timed": eval_images,
        "batch_size": BATCH,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "workers": workers,
        "epochs": epochs,
        "overrides": sets,
        "loadavg_before": [round(v, 2) for v in loadavg_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "step_times_s": {name: b.seconds for name, b in benches.items()},
        "step_cpu_times_s": {name: b.cpu_seconds for name, b in benches.items()},
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--eval-images", type=int, default=None, help="images per eval pass")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of the paper run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--set", nargs="*", default=[], help="noisybench config overrides")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    result = measure(
        device,
        steps=args.steps or (3 if cpu else 50),
        warmup=args.warmup if args.warmup is not None else (1 if cpu else 10),
        repeats=args.repeats,
        workers=args.workers,
        eval_images=args.eval_images or (256 if cpu else None),
        epochs=args.epochs,
        sets=list(args.set),
    )
    out = args.out or RESULTS / f"throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
