"""Cost of methods against cross-entropy on the same model and batch (issue 23): step time,
peak memory and, with ``--epoch-start N``, the time of the per-epoch pass at N samples.

For every method named (CE is always measured too, as the reference) the experiment is built
as a run builds it (:func:`noisybench.build.build`: the method's ``network()``, ``setup``, the
optimizer), the method's ``on_epoch_start`` is run at ``--epoch`` with the real training-set
pass (so its state is that of a run at that epoch: past every warm-up by default, the last
epoch of ``--epochs``), its ``epoch_plan`` is taken, and the first batch of that epoch is
drawn. Then ``training_step`` + ``backward`` (under the engine's autocast, gradients set to
None before each step, as the engine does) runs ``--warmup`` times untimed and ``--steps``
times timed on that same batch; the number is the median. The optimizer step, ``after_step``
and the batch drawing are not included: they are the same code for every method.

Peak memory of those timed steps:

* CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak before the steps, given
  as the peak and as the peak above what was allocated before the steps (activations,
  gradients, the method's temporaries);
* CPU: the process's peak resident set (``VmHWM`` of ``/proc/self/status``), reset before the
  steps by writing 5 to ``/proc/self/clear_refs`` (Linux), minus the resident set before the
  steps: what the steps added at their peak. Where the peak cannot be reset, ``ru_maxrss``
  minus the resident set before, a lower bound (flagged in the file). tracemalloc is not
  used: it does not see the memory torch's allocator takes. The CPU number is coarse (memory
  freed and reused within the steps, or cached by the C allocator, is not seen again); the
  CUDA number counts every tensor byte.

Either way the window opens before the first (warm-up) step, and every method is measured in
a process of its own (this script again, ``--only METHOD``), so that no method reuses memory
that an earlier one left with the allocator.

``--epoch-start N``: each method is built again on ``dataset=synthetic`` with N training
images (random CIFAR-shaped data: N = 50,000 is CIFAR-10's size without CIFAR) and timed in
``on_epoch_start`` at ``--epoch`` with ``evaluate_train`` stubbed: the stub returns a fixed
random ``(N, D)`` float tensor (seeded normal values; D found by running the module the method
passes on two images), so what is timed is the method's own per-epoch work (OT solves, GMM
fits, ...), not N forward passes. The stub's own time is measured and given beside it.

Usage (the numbers go to ``benchmarks/results/method_cost_<device>.json`` and ``.md``)::

    python benchmarks/bench_method_cost.py --methods ce,bsdplus,dividemix
    python benchmarks/bench_method_cost.py --methods otfilter,csot,dulc,bsdplus \\
        --dataset synthetic --model preact_resnet18_dividemix --batch-size 128 \\
        --epoch-start 50000 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------ building
def overrides(method: str, args: argparse.Namespace, dataset: Sequence[str]) -> list[str]:
    """The composition of one measured experiment (the method's authors' code defaults
    where its presets have no value for these data)."""
    from noisybench.baselines import CODE_DEFAULTS

    return [
        *dataset,
        f"model={args.model}",
        f"noise={args.noise}",
        f"method={method}",
        *CODE_DEFAULTS.get(method, []),
        f"batch_size={args.batch_size}",
        f"epochs={args.epochs}",
        f"device={args.device}",
        f"cpu_threads={args.threads}",
        "logger=[]",
        "progress=false",
        "eval.train_diagnostics=false",
        *args.set,
    ]


def build_for(method: str, args: argparse.Namespace, dataset: Sequence[str]) -> Any:
    from noisybench.build import build
    from noisybench.config import compose

    return build(compose(overrides(method, args, dataset)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(trainer: Any) -> contextlib.AbstractContextManager[Any]:
    dtype = trainer.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(trainer.device.type, dtype=dtype)


# ------------------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """The peak memory of what runs between :meth:`start` and :meth:`stop` (see the module
    docstring for what is measured on each device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset = True

    def start(self) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            self.reset = _reset_peak_rss()
            self.base = _rss_bytes()

    def stop(self) -> dict[str, Any]:
        synchronize(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak, "peak_over_base_bytes": peak - self.base}
        peak = _peak_rss_bytes()
        out = {"peak_bytes": peak, "peak_over_base_bytes": max(peak - self.base, 0)}
        if not self.reset:
            out["lower_bound"] = True  # the peak could not be reset before the steps
        return out


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            "CUDA torch.cuda.max_memory_allocated over the warm-up and timed steps (peak reset "
            "before them); peak_over_base = peak minus memory allocated before the steps; one "
            "process per method"
        )
    return (
        "CPU resident set: peak_bytes = VmHWM of /proc/self/status over the warm-up and timed "
        "steps (peak reset through /proc/self/clear_refs before them), peak_over_base = that "
        "minus the resident set before the steps; one process per method. Coarse: the "
        "allocator reuses memory freed within the process (the CUDA number is exact)"
    )


# ------------------------------------------------------------------------------ measuring
def measure_step(exp: Any, epoch: int, warmup: int, steps: int) -> dict[str, Any]:
    """Median time and peak memory of ``training_step`` + ``backward`` on the first batch of
    ``epoch``, with the method's state after its real ``on_epoch_start`` at ``epoch``."""
    from noisybench.data.loader import plan_seed

    trainer = exp.trainer()
    method, model = trainer.method, trainer.train_model
    method.on_epoch_start(trainer.model, epoch, trainer.evaluate_train)
    plan = method.epoch_plan(epoch, plan_seed(exp.source.seed, epoch))
    batch = next(iter(exp.source.epoch(epoch, 0, plan)))
    model.train()
    method.train()
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]

    def one() -> None:
        for p in params:
            p.grad = None
        with _autocast(trainer):
            out = method.training_step(model, batch, epoch)
        out.loss.backward()

    memory = PeakMemory(exp.device)
    memory.start()  # before the first step: what the steps allocate, not what they reuse
    for _ in range(warmup):
        one()
    seconds, cpu_seconds = [], []
    for _ in range(steps):
        synchronize(exp.device)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        one()
        synchronize(exp.device)
        seconds.append(time.perf_counter() - begin)
        cpu_seconds.append(time.process_time() - cpu_begin)
    mem = memory.stop()
    return {
        "step_ms": 1000 * statistics.median(seconds),
        "step_ms_all": [round(1000 * s, 3) for s in seconds],
        # the process's CPU time: on a CPU shared with other jobs, much less sensitive to
        # their load than the wall clock (on a GPU it is only the host's share)
        "step_cpu_ms": 1000 * statistics.median(cpu_seconds),
        "batch_rows": int(batch.idx.shape[0]),
        **mem,
    }


class StubTrain:
    """``evaluate_train`` for :meth:`Method.on_epoch_start` without the pass over the
    training set: fixed random ``(N, D)`` outputs (standard normal, seed 0), D taken from
    the module the method passes (run on two training images)."""

    def __init__(self, trainer: Any, n: int) -> None:
        self.trainer, self.n = trainer, n
        self.cache: dict[int, Tensor] = {}
        self.seconds = 0.0
        self.dims: list[int] = []

    def __call__(self, module: nn.Module) -> Tensor:
        begin = time.perf_counter()
        was_training = module.training
        module.eval()
        try:
            first = torch.arange(2, device=self.trainer.device)
            probe = self.trainer.predict.outputs("train", module, lambda z: z.float(), first)
        finally:
            module.train(was_training)
        dim = int(probe.shape[1])
        if dim not in self.cache:
            gen = torch.Generator().manual_seed(0)
            self.cache[dim] = torch.randn(self.n, dim, generator=gen).to(self.trainer.device)
        self.dims.append(dim)
        out = self.cache[dim].clone()
        synchronize(self.trainer.device)
        self.seconds += time.perf_counter() - begin
        return out


def measure_epoch_start(exp: Any, n: int, epoch: int, warmup: int, repeats: int) -> dict:
    """Median time of ``on_epoch_start`` at ``epoch`` over ``n`` samples (stubbed pass)."""
    trainer = exp.trainer()
    stub = StubTrain(trainer, n)
    call: Callable[[], None] = lambda: trainer.method.on_epoch_start(trainer.model, epoch, stub)  # noqa: E731
    for _ in range(warmup):
        call()
    seconds, cpu_seconds, stub_seconds = [], [], []
    for _ in range(repeats):
        stub.seconds = 0.0
        synchronize(exp.device)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        call()
        synchronize(exp.device)
        seconds.append(time.perf_counter() - begin)
        cpu_seconds.append(time.process_time() - cpu_begin)
        stub_seconds.append(stub.seconds)
    return {
        "seconds": statistics.median(seconds),
        "seconds_all": [round(s, 4) for s in seconds],
        "cpu_seconds": statistics.median(cpu_seconds),  # this process's CPU time
        "stub_seconds": statistics.median(stub_seconds),
        "evaluate_train_calls": len(stub.dims) // max(warmup + repeats, 1),
        "output_dims": sorted(set(stub.dims)),
    }


def _free(exp: Any) -> None:
    device = exp.device
    del exp
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ output
def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [
        f"Method cost on {s['device_name']} ({s['device']}): {s['dataset']}, {s['model']}, "
        f"batch {s['batch_size']}, epoch {s['epoch']} of {s['epochs']}; training_step + "
        f"backward, median of {s['steps']} steps after {s['warmup']}; torch {s['torch']}, "
        f"{s['threads']} CPU thread(s). Memory: {s['memory_kind']}.",
        "",
        "| method | step (ms) | x CE | step, CPU time (ms) | x CE | peak memory (MiB) "
        "| added by the steps (MiB) | x CE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["methods"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {row['step_ms']:.2f} | {_ratio(row.get('step_over_ce'))} | "
            f"{row['step_cpu_ms']:.2f} | {_ratio(row.get('step_cpu_over_ce'))} | "
            f"{row['peak_bytes'] / 2**20:.1f} | {row['peak_over_base_bytes'] / 2**20:.1f} | "
            f"{_ratio(row.get('memory_over_ce'))} |"
        )
    start = result.get("epoch_start")
    if start:
        lines += [
            "",
            f"on_epoch_start at N = {start['n']} samples ({start['dataset']}, {s['model']}, "
            f"epoch {s['epoch']}), evaluate_train stubbed with fixed random outputs; median of "
            f"{start['repeats']} after {start['warmup']}:",
            "",
            "| method | on_epoch_start (s) | CPU time (s) | of which the stub (s) | outputs D |",
            "|---|---|---|---|---|",
        ]
        for name, row in start["methods"].items():
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error']} | | | |")
                continue
            dims = ", ".join(map(str, row["output_dims"])) or "(no pass)"
            lines.append(
                f"| {name} | {row['seconds']:.3f} | {row['cpu_seconds']:.3f} | "
                f"{row['stub_seconds']:.3f} | {dims} |"
            )
    return "\n".join(lines) + "\n"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ce,bsdplus,dividemix", help="comma-separated")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--noise", default="sym50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=300, help="the run's length (schedules)")
    parser.add_argument("--epoch", type=int, default=None, help="default: the last epoch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epoch-start", type=int, default=0, metavar="N", help="0: not timed")
    parser.add_argument("--epoch-start-repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (cpu_threads)")
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides")
    parser.add_argument("--dry", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--out", default=None, help="JSON path (default: results/...)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one method, here
    args = parser.parse_args(argv)
    if args.dry:
        args.warmup, args.steps, args.epoch_start_repeats = 1, 2, 1
        args.batch_size = min(args.batch_size, 16)
        args.epochs = min(args.epochs, 20)
        args.epoch_start = min(args.epoch_start, 300) if args.epoch_start else 0
    if args.epoch is None:
        args.epoch = args.epochs - 1
    return args


def _one_method(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The step measurement of one method in this process (``--only``)."""
    exp = build_for(name, args, [f"dataset={args.dataset}"])
    row = measure_step(exp, args.epoch, args.warmup, args.steps)
    device = exp.device
    row["device"] = str(device)
    row["device_name"] = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    _free(exp)
    return row


def _isolated(name: str, argv: Sequence[str], tmp: Path) -> dict[str, Any]:
    """:func:`_one_method` in a fresh process (this script with ``--only``): its peak
    memory is its own, not the memory an earlier method left to the allocator to reuse."""
    import subprocess

    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", name, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()] or ["no output"]
        return {"error": lines[-1][:300]}
    return json.loads(out.read_text())


def _ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Each method's step time and added memory over CE's (memory: None where CE's steps
    added less than 1 MiB, too little to divide by)."""
    ce = rows.get("ce", {})
    if "error" in ce or not ce:
        return
    for row in rows.values():
        if "error" in row:
            continue
        row["step_over_ce"] = row["step_ms"] / ce["step_ms"]
        row["step_cpu_over_ce"] = row["step_cpu_ms"] / ce["step_cpu_ms"]
        base = ce["peak_over_base_bytes"]
        row["memory_over_ce"] = row["peak_over_base_bytes"] / base if base >= 2**20 else None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.only:  # a child of _isolated
        row = _one_method(args.only, args)
        Path(args.out).write_text(json.dumps(row))
        return row
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = ["ce", *[m for m in names if m != "ce"]]  # the reference, measured first
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="nb_cost_") as tmp:
        for name in names:
            rows[name] = _isolated(name, argv, Path(tmp))
            row = rows[name]
            print(f"{name}: {row.get('step_ms', row.get('error'))} ms/step", file=sys.stderr)
    ok = [r for r in rows.values() if "error" not in r]
    if not ok:
        raise SystemExit("no method could be measured: " + json.dumps(rows))
    device = torch.device(ok[0].pop("device"))
    device_name = ok[0].pop("device_name")
    for r in ok:
        r.pop("device", None), r.pop("device_name", None)
    _ratios(rows)
    result: dict[str, Any] = {
        "setup": {
            "dataset": args.dataset,
            "model": args.model,
            "noise": args.noise,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "epoch": args.epoch,
            "warmup": args.warmup,
            "steps": args.steps,
            "device": str(device),
            "device_name": device_name,
            "threads": args.threads,
            "torch": torch.__version__,
            "memory_kind": memory_kind(device),
            "load_average": list(os.getloadavg()),
            "overrides": list(args.set),
            "dry": args.dry,
        },
        "methods": rows,
    }
    if args.epoch_start:  # in this process: times only, no memory
        n = args.epoch_start
        synthetic = ["dataset=synthetic", f"dataset.reader.num_train={n}"]
        synthetic.append("dataset.reader.num_test=64")
        starts: dict[str, dict[str, Any]] = {}
        for name in names:
            try:
                exp = build_for(name, args, synthetic)
            except Exception as exc:
                starts[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                continue
            starts[name] = measure_epoch_start(exp, n, args.epoch, 1, args.epoch_start_repeats)
            print(f"{name}: on_epoch_start {starts[name]['seconds']:.3f} s", file=sys.stderr)
            _free(exp)
        result["epoch_start"] = {
            "n": n,
            "dataset": f"synthetic ({n} random 3x32x32 images)",
            "warmup": 1,
            "repeats": args.epoch_start_repeats,
            "methods": starts,
        }
    out = Path(args.out) if args.out else RESULTS / f"method_cost_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
