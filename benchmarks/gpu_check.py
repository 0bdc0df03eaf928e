"""The device check (issue 26): every CUDA path of noisybench run once, and the speed table
measured, by one command in at most eight minutes on one H100-class GPU.

    python benchmarks/gpu_check.py          # CUDA machine -> benchmarks/results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --dry    # any machine: every phase once, tiny model, no timing

Phases, each with its own time budget (:data:`BUDGETS_S`): a phase that runs out of time stops
before its next item and lists the items it did not reach, and an alarm ends a phase that
overruns by half or would leave the later phases less than their budgets before
:data:`TOTAL_S`, so the whole check stays inside eight minutes:

1. ``methods``: every ``conf/method/*.yaml`` trains PreAct ResNet-18 on CIFAR-shaped synthetic
   data at batch 128 through :func:`noisybench.run.run_experiment` with the CUDA defaults
   (bf16 autocast, channels-last, fused optimizer, cudnn.benchmark, checkpoints written in the
   background), is stopped by SIGTERM in its last epoch (the test suite's kill hook), and is
   run again: it must resume from the checkpoint (no restart) and finish with finite losses.
2. ``sync``: every method's step path (batch drawing, forward, loss, backward, optimizer,
   schedule, ``after_step``) under ``torch.cuda.set_sync_debug_mode("error")`` after warm-up
   steps, through a :class:`noisybench.engine.Callback`, so that a host synchronisation fails
   with its place (the GPU counterpart of ``tests/test_engine_host_sync.py``).
3. ``throughput``: ``bench_throughput.measure`` (bare loop, engine CE / BSD / BSD+, the peers'
   PIL + DataLoader pipeline, loaders alone, evaluation share) and its targets, and the
   extrapolated wall time of a 300-epoch CIFAR-10 run.
4. ``compile``: engine CE with ``compile=true``: the warm-up's seconds and images per second.
5. ``ops``: ATen operators (``bench_ops.count_ops``) and CUDA kernels per training step.
6. ``jpeg``: a folder of JPEG files through the streaming reader decoded on the GPU
   (``decode_device=cuda``) and on the CPU: equal centre crops within one grey level, and
   images per second of each.
7. ``nccl``: a two-process run (torchrun, NCCL) when the machine has two GPUs, else skipped.

``--dry`` (``tests/test_gpu_check.py``) runs every phase with a tiny model, tiny data and one
step where the full check times many, so the script cannot rot between GPU runs; on a machine
without CUDA the sync phase runs its steps without the debug mode, the JPEG phase compares the
CPU decoders, compile and NCCL are skipped (said so in the output).

noisybench names this script relies on (public unless marked): ``config.compose``,
``config.CONF_DIR``, ``build.build``, ``build.resolve_device``, ``Experiment.trainer``,
``Trainer.fit``, ``engine.Callback``, ``engine.Interrupted``, ``run.run_experiment``,
``callbacks.TEST_KILL_ENV`` (test hook), ``data.folder.load_folder``,
``data.folder.FolderLoader``; and, through bench_throughput / bench_ops,
``Trainer._train_step`` (``train_step`` after the seams refactor), ``engine._EpochSums``,
``Trainer.predict.split`` and ``Experiment.loader`` (internal; the two benchmarks follow them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import noisybench

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_throughput, bench_ops

import bench_ops
import bench_throughput as bt
from noisybench.baselines import CODE_DEFAULTS

from noisybench.build import build, resolve_device
from noisybench.callbacks import TEST_KILL_ENV
from noisybench.config import CONF_DIR, compose
from noisybench.engine import Callback, Interrupted, Trainer
from noisybench.method import Method
from noisybench.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Where noisybench's own code lives (the package and its in-tree baselines), for error places.
PACKAGE_DIRS = (str(Path(noisybench.__file__).resolve().parent), str(ROOT / "baselines"))
# Seconds per phase on one H100 (460 in all); TOTAL_S bounds the phases together, leaving the
# start (imports) and the report inside eight minutes.
TOTAL_S = 465
BUDGETS_S = {
    "methods": 130,
    "sync": 60,
    "throughput": 90,
    "compile": 70,
    "ops": 30,
    "jpeg": 30,
    "nccl": 50,
}
HARD_FACTOR = 1.5  # a phase still running at 1.5 x its budget is ended (see check())
# The paper's methods first, so that a phase short of time has checked them.
FIRST = ("ce", "bsd", "bsdplus")
# Overrides a method needs for its whole step path to run in two short epochs.
# Synthetic data has no per-setting authors' value (conf/baseline_presets.yaml): their codes'
# defaults (noisybench.baselines.CODE_DEFAULTS), then this check's own settings.
METHOD_EXTRA = {
    **CODE_DEFAULTS,
    "dividemix": [*CODE_DEFAULTS["dividemix"], "method.warm_up=1"],  # epoch 2: co-divide + MixMatch
    # epoch 2: the OT division and its two streams of B / 2 each (warm-up batches of B: the
    # profile's steps per epoch; epoch 2 at least as many)
    "csot": [*CODE_DEFAULTS["csot"], "method.warm_up=1", f"method.batch_size={bt.BATCH // 2}"],
    "gce": ["method.truncated=true", "method.start_prune=2", "method.prune_every=1"],
}
GOALS_MIN = {"ce": 6.0, "bsdplus": 15.0}  # issue 26: 300-epoch CIFAR-10 run on one H100


@dataclass(frozen=True)
class Profile:
    """The sizes of one kind of check: the full GPU check or the dry run."""

    dry: bool
    model: list[str]  # config overrides naming the network
    steps_per_epoch: int  # in the methods and sync phases
    sync_warmup: int  # steps before host synchronisations become errors
    thr_steps: int  # bench_throughput: timed steps per round
    thr_warmup: int
    thr_repeats: int
    thr_workers: int  # the peers' DataLoader workers
    thr_sets: list[str] = field(default_factory=list)
    eval_images: int | None = None
    compile_steps: int = 20
    jpeg_images: int = 256
    jpeg_batch: int = 32
    jpeg_workers: int = 8


FULL = Profile(
    dry=False,
    model=["model=preact_resnet18"],
    steps_per_epoch=12,
    sync_warmup=3,
    thr_steps=30,
    thr_warmup=10,
    thr_repeats=2,
    thr_workers=4,  # the peers' usual DataLoader(num_workers=4)
)
DRY = Profile(
    dry=True,
    model=["model=small_cnn"],
    steps_per_epoch=2,
    sync_warmup=1,
    thr_steps=1,
    thr_warmup=0,
    thr_repeats=1,
    thr_workers=0,
    thr_sets=["model=small_cnn", "dataset.reader.num_train=256", "dataset.reader.num_test=64"],
    eval_images=32,
    jpeg_images=8,
    jpeg_batch=4,
    jpeg_workers=0,
)
BATCH = bt.BATCH  # 128


def methods() -> list[str]:
    names = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    rest = [m for m in names if m not in FIRST and m != "kd"]
    return [*[m for m in FIRST if m in names], *rest, *(["kd"] if "kd" in names else [])]


def base_overrides(profile: Profile, device: torch.device, out_dir: Path) -> list[str]:
    """CIFAR-shaped synthetic data sized to ``steps_per_epoch`` batches of 128, the config's
    defaults for the device (amp, channels_last, optimizer_impl, checkpoint_async: auto)."""
    return [
        "dataset=synthetic",
        *profile.model,
        "noise=sym50",
        f"batch_size={BATCH}",
        f"dataset.reader.num_train={BATCH * profile.steps_per_epoch}",
        "dataset.reader.num_test=256",
        "eval.train_diagnostics_subset=256",
        "epochs=2",
        f"device={device}",
        "logger=[]",
        "progress=false",
        f"out_dir={out_dir}",
    ]


# --------------------------------------------------------------------------- phases, budgets
class PhaseTimeout(Exception):
    """The phase's hard deadline passed (an alarm)."""


@dataclass
class Phase:
    """One phase's record: its items (one per method, ...), what it skipped, its status."""

    name: str
    budget_s: float
    begin: float = field(default_factory=time.perf_counter)
    items: dict[str, Any] = field(default_factory=dict)
    not_reached: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    end: float | None = None

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.begin)

    def each(self, names: list[str], dry: bool) -> Iterator[str]:
        """The names to run, stopping (and recording the rest) when the time left is less
        than the longest item so far; with ``dry`` every item runs."""
        longest = 0.0
        for i, name in enumerate(names):
            if not dry and self.left_s() < longest:
                self.not_reached = names[i:]
                self.notes.append(f"out of time before {', '.join(names[i:])}")
                return
            begin = time.perf_counter()
            yield name
            longest = max(longest, time.perf_counter() - begin)

    def attempt(self, item: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """``self.items[item] = fn()``; an exception fails the item (recorded with its place)
        and the phase goes on with the next one, except the phase's own deadline."""
        try:
            self.items[item] = fn()
        except PhaseTimeout:
            raise
        except Exception as exc:
            self.items[item] = {"ok": False, **failure(exc)}
            self.status = "failed"
            return None
        return self.items[item]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "seconds": round((self.end or time.perf_counter()) - self.begin, 2),
            "budget_s": self.budget_s,
            "items": self.items,
            "not_reached": self.not_reached,
            "notes": self.notes,
        }


def failure(exc: BaseException) -> dict[str, Any]:
    """The error's first line and its place: the innermost frames in noisybench's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(PACKAGE_DIRS)]
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (ours or frames)[-4:]]
    message = (str(exc).strip().splitlines() or [""])[0][:400]
    return {"error": f"{type(exc).__name__}: {message}", "where": where}


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`PhaseTimeout` in the main thread after ``seconds`` (SIGALRM, POSIX)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise PhaseTimeout(f"still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_phase(
    name: str, budget_s: float, body: Callable[[Phase], None], hard_s: float = math.inf
) -> Phase:
    """Run ``body`` as phase ``name`` (ended by an alarm after ``hard_s`` seconds): an
    exception fails the phase (recorded with its place) and the check goes on."""
    phase = Phase(name, budget_s)
    print(f"[gpu_check] {name} (budget {budget_s:.0f} s)", flush=True)
    try:
        with alarm(hard_s) if math.isfinite(hard_s) else contextlib.nullcontext():
            body(phase)
    except PhaseTimeout as exc:
        phase.status = "timeout"
        phase.notes.append(str(exc))
    except Exception as exc:
        phase.status = "failed"
        phase.notes.append(json.dumps(failure(exc)))
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        phase.end = time.perf_counter()
    print(f"[gpu_check] {name}: {phase.status} in {phase.to_dict()['seconds']} s", flush=True)
    return phase


# --------------------------------------------------------------------------------- 1 methods
def losses(history: list[dict[str, Any]]) -> list[float]:
    return [float(h.get("train/loss", float("nan"))) for h in history]


def check_method(
    method: str, profile: Profile, device: torch.device, out: Path, teacher: Path | None
) -> dict[str, Any]:
    """Train two epochs, stopped by SIGTERM at step ``steps_per_epoch // 3`` of the second,
    then run again: the second run must resume (the earlier files stay in place, none moved
    to ``previous/``) and finish with both epochs' losses finite."""
    extra = list(METHOD_EXTRA.get(method, []))
    if method == "kd":
        if teacher is None:
            raise RuntimeError("kd needs the ce run of this phase as its teacher; ce did not run")
        extra.append(f"method.teacher_runs=['{teacher}']")
    cfg = compose([*base_overrides(profile, device, out), f"method={method}", *extra])
    kill_step = max(1, profile.steps_per_epoch // 3)
    os.environ[TEST_KILL_ENV] = f"2:{kill_step}:TERM"
    begin = time.perf_counter()
    try:
        run_experiment(cfg)
    except Interrupted:
        pass
    else:
        raise AssertionError("the run was not stopped by SIGTERM at its kill point")
    finally:
        os.environ.pop(TEST_KILL_ENV, None)
    first_s = time.perf_counter() - begin
    begin = time.perf_counter()
    result = run_experiment(cfg)
    second_s = time.perf_counter() - begin
    run_dir = Path(result["run_dir"])
    values = losses(result["history"])
    assert result["status"] == "finished", result["status"]
    assert len(values) == 2, f"{len(values)} epochs in the result, expected 2"
    assert all(math.isfinite(v) for v in values), f"non-finite losses {values}"
    assert not (run_dir / "previous").exists(), "the second run restarted instead of resuming"
    return {
        "ok": True,
        "losses": [round(v, 4) for v in values],
        "stopped_at": f"epoch 2, step {kill_step}",
        "first_run_s": round(first_s, 2),
        "resumed_run_s": round(second_s, 2),
        "run_dir": str(run_dir),
    }


def phase_methods(phase: Phase, profile: Profile, device: torch.device, work: Path) -> None:
    teacher: Path | None = None
    for method in phase.each(methods(), profile.dry):
        item = phase.attempt(
            method, lambda m=method, t=teacher: check_method(m, profile, device, work / "runs", t)
        )
        if method == "ce" and item is not None:
            teacher = Path(item["run_dir"])


# ------------------------------------------------------------------------------------ 2 sync
class SyncDebug(Callback):
    """Host synchronisations are errors inside every step from step ``after`` on (the batch
    is drawn inside the step); evaluation and epoch-end work run outside, in the default
    mode. Without CUDA the steps are only counted."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.steps = 0
        self.checked = 0
        self.cuda = torch.cuda.is_available()

    def on_step_start(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self.steps >= self.after:
            self.checked += 1
            if self.cuda:
                torch.cuda.set_sync_debug_mode("error")

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        self.steps += 1


def check_sync(
    method: str, profile: Profile, device: torch.device, out: Path, teacher: Path | None
) -> dict[str, Any]:
    extra = list(METHOD_EXTRA.get(method, []))
    if method == "kd":
        if teacher is None:
            raise RuntimeError("kd needs a teacher run (the methods phase's ce run)")
        extra.append(f"method.teacher_runs=['{teacher}']")
    exp = build(compose([*base_overrides(profile, device, out), f"method={method}", *extra]))
    spy = SyncDebug(after=profile.sync_warmup)
    trainer = exp.trainer([spy])
    try:
        trainer.fit()
    finally:
        if spy.cuda:
            torch.cuda.set_sync_debug_mode("default")
    expected = 2 * profile.steps_per_epoch - profile.sync_warmup
    if type(exp.method).epoch_plan is not Method.epoch_plan:  # it lays out its own epochs
        assert spy.steps >= 2 * profile.steps_per_epoch, f"{spy.steps} steps in 2 epochs"
        expected = spy.steps - profile.sync_warmup
    assert spy.checked == expected, f"{spy.checked} steps checked, expected {expected}"
    return {"ok": True, "steps_checked": spy.checked, "debug_mode": spy.cuda}


def phase_sync(
    phase: Phase, profile: Profile, device: torch.device, work: Path, teacher: Path | None
) -> None:
    if device.type != "cuda":
        phase.notes.append("no CUDA: the steps ran without torch.cuda.set_sync_debug_mode")
    for method in phase.each(methods(), profile.dry):
        phase.attempt(
            method, lambda m=method: check_sync(m, profile, device, work / "sync", teacher)
        )


# ------------------------------------------------------------------------------ 3 throughput
def phase_throughput(phase: Phase, profile: Profile, device: torch.device) -> dict[str, Any]:
    result = bt.measure(
        device,
        steps=profile.thr_steps,
        warmup=profile.thr_warmup,
        repeats=profile.thr_repeats,
        workers=profile.thr_workers,
        eval_images=profile.eval_images,
        sets=list(profile.thr_sets),
    )
    for name, bench in result["images_per_s"].items():
        assert math.isfinite(bench) and bench > 0, f"{name}: {bench} images/s"
    targets = {}
    for label, (key, op, bound) in bt.TARGETS.items():
        value = float(result["ratios"][key])
        met = value >= bound if op == ">=" else value <= bound
        targets[label] = {"value": round(value, 4), "target": f"{op} {bound}", "met": met}
    run_min = {m: result["paper_run"][m]["run_h"] * 60 for m in (*bt.METHODS, "peers ce")}
    goals = {
        m: {"minutes": round(run_min[m], 2), "goal_minutes": g, "met": run_min[m] <= g}
        for m, g in GOALS_MIN.items()
    }
    phase.items = {"targets": targets, "paper_run_minutes": goals}
    if profile.dry:
        phase.notes.append("dry run: the numbers are not measurements")
    return result


# --------------------------------------------------------------------------------- 4 compile
def phase_compile(
    phase: Phase, profile: Profile, device: torch.device, eager_ips: float | None
) -> None:
    if profile.dry or device.type != "cuda":
        phase.status = "skipped"
        phase.notes.append(
            "needs CUDA and the full check (inductor's build takes minutes on a CPU)"
        )
        return
    exp = bt.experiment("ce", device, ["compile=true"])
    step, _ = bt.engine_benches("ce", exp)
    bt.synchronize(device)
    begin = time.perf_counter()
    step.step()  # compiles
    bt.synchronize(device)
    first = time.perf_counter() - begin
    for _ in range(5):
        step.step()
    for _ in range(profile.compile_steps):
        step.run_once(device)
    ips = step.images_per_s
    phase.items = {
        "first_step_s": round(first, 2),
        "images_per_s": round(ips, 1),
        "eager_images_per_s": None if eager_ips is None else round(eager_ips, 1),
        "compiled_over_eager": None if not eager_ips else round(ips / eager_ips, 3),
    }


# ------------------------------------------------------------------------------------- 5 ops
def count_kernels(fn: Callable[[], Any]) -> int:
    """CUDA kernels (and memory copies / sets) that ``fn`` launches."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def phase_ops(phase: Phase, profile: Profile, device: torch.device) -> None:
    sets = ["dataset.reader.num_train=1024", "dataset.reader.num_test=128", *profile.thr_sets]
    names = [m for m in methods() if m != "kd"]  # as bench_ops (kd needs a teacher run)
    for method in phase.each(names, profile.dry):
        phase.attempt(method, lambda m=method: count_step(m, device, sets))


def count_step(method: str, device: torch.device, sets: list[str]) -> dict[str, Any]:
    """Operators (and on CUDA kernels) of one training step and of one batch drawn."""
    exp = bt.experiment(method, device, sets)
    step, draw = bt.engine_benches(method, exp)  # step: draws its batch, then trains
    for _ in range(2):  # lazy state (momentum buffers, cudnn's choice) first
        step.step()
    total, _ = bench_ops.count_ops(step.step)
    drawing, _ = bench_ops.count_ops(draw.step)
    item: dict[str, Any] = {"step_ops": total - drawing, "batch_drawing_ops": drawing}
    if device.type == "cuda":
        drawn = count_kernels(draw.step)
        item["step_kernels"] = count_kernels(step.step) - drawn
        item["batch_drawing_kernels"] = drawn
    return item


# ------------------------------------------------------------------------------------ 6 jpeg
def write_jpegs(root: Path, count: int) -> None:
    """ImageNet-sized JPEG files (500 x 375, quality 90, smooth content plus noise, so that
    they compress like photographs) in the ImageFolder layout, 4 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for split, n in (("train", count), ("val", 4)):
        for j in range(n):
            folder = root / split / f"n{j % 4:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            f = rng.uniform(0.005, 0.05, 3)
            base = np.stack(
                [127 + 100 * np.sin(f[k] * xx + f[(k + 1) % 3] * yy + k) for k in range(3)],
                axis=-1,
            )
            pix = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pix).save(folder / f"img{j:04d}.JPEG", quality=90)


def phase_jpeg(phase: Phase, profile: Profile, device: torch.device, work: Path) -> None:
    """The reader's plain view with ``resize`` = the images' shorter side is decoding plus a
    centre crop (no interpolation), so both decoders must agree to one grey level."""
    from noisybench.data.folder import FolderLoader, load_folder

    root = work / "jpeg"
    write_jpegs(root, profile.jpeg_images)
    data = load_folder(str(root), image_size=224, resize=375)
    labels = data.train_labels.to(device)
    cuda = device.type == "cuda"
    # (name, decoder, decode_device): without CUDA, torchvision's CPU decoder against PIL's
    ways: list[tuple[str, str, str | None]] = [("cpu", "torchvision", None)]
    if cuda:
        ways.append(("cuda", "torchvision", "cuda"))
    else:
        ways.append(("pil", "pil", None))
        phase.notes.append("no CUDA: torchvision's CPU decoder compared with PIL's")
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255.0

    def loader(view: str, decoder: str, decode_device: str | None) -> FolderLoader:
        return FolderLoader(
            data,
            labels,
            profile.jpeg_batch,
            (view,),
            seed=0,
            device=device,
            workers=profile.jpeg_workers,
            decoder=decoder,
            decode_device=decode_device,
        )

    plain = {}
    for name, decoder, dd in ways:
        plain[name] = [b.views["plain"] for b in loader("plain", decoder, dd).epoch(0)]
    a, b = (plain[name] for name, _, _ in ways)
    diff = torch.cat([((x - y).abs() * std).flatten() for x, y in zip(a, b, strict=True)])
    grey = float(diff.max())
    rates = {}
    for name, decoder, dd in ways:
        weak = loader("weak", decoder, dd)
        for _ in weak.epoch(0):  # warm-up: the decoder's start, the workers' first batch
            break
        bt.synchronize(device)
        begin = time.perf_counter()
        count = sum(int(batch.idx.shape[0]) for batch in weak.epoch(1))
        bt.synchronize(device)
        rates[name] = count / (time.perf_counter() - begin)
    phase.items = {
        "images": profile.jpeg_images,
        "image_size": "500x375 JPEG q90; crops 224 (plain: centre; weak: RandomResizedCrop)",
        "workers": profile.jpeg_workers,
        "max_grey_level_difference": round(grey, 4),
        "within_one_grey_level": grey <= 1.0 + 1e-3,
        "mean_grey_level_difference": round(float(diff.mean()), 4),
        "share_of_values_over_one_level": round(float((diff > 1.0 + 1e-3).float().mean()), 6),
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
    }
    if grey > 1.0 + 1e-3:
        phase.status = "failed"
        phase.notes.append(f"decoders differ by {grey:.2f} grey levels (> 1)")


# ------------------------------------------------------------------------------------ 7 nccl
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phase_nccl(phase: Phase, profile: Profile, device: torch.device, work: Path) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if profile.dry or gpus < 2:
        phase.status = "skipped"
        phase.notes.append(f"needs 2 GPUs and the full check; this machine has {gpus}")
        return
    out = work / "nccl"
    overrides = [o for o in base_overrides(profile, device, out) if not o.startswith("device=")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "noisybench",
        *overrides,
        "device=cuda",
        "method=bsd",
        "distributed.backend=nccl",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    begin = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=max(phase.left_s(), 10.0),
        check=False,
        cwd=work,
        env=env,
    )
    seconds = time.perf_counter() - begin
    results = list(out.rglob("result.json"))
    result = json.loads(results[0].read_text()) if results else {}
    ok = proc.returncode == 0 and result.get("status") == "finished"
    ok = ok and result.get("processes") == 2
    phase.items = {
        "returncode": proc.returncode,
        "seconds": round(seconds, 2),
        "status": result.get("status"),
        "processes": result.get("processes"),
        "losses": losses(result.get("history", [])),
    }
    if not ok:
        phase.status = "failed"
        phase.notes.append(proc.stderr[-1500:])


# ---------------------------------------------------------------------------------- report
def settings(device: torch.device, profile: Profile, total_s: float) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": bt.device_name(device),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "dry": profile.dry,
        "total_s": round(total_s, 1),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "budgets_s": BUDGETS_S,
    }


NOT_RUN = {"status": "not run", "seconds": "", "budget_s": "", "items": {}, "notes": []}


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    phases = {name: report["phases"].get(name, NOT_RUN) for name in BUDGETS_S}
    lines = [
        f"# GPU check{' (dry run: no measurement)' if s['dry'] else ''}",
        "",
        f"Device: {s['device_name']} ({s['device']}, {s['gpus']} GPU); torch {s['torch']}, "
        f"CUDA {s['cuda']}, cuDNN {s['cudnn']}; {s['cpus']} CPUs; total {s['total_s']} s; "
        f"load average {s['loadavg']}.",
        "",
        "| phase | status | seconds | budget (s) | notes |",
        "|---|---|---:|---:|---|",
    ]
    for name, p in phases.items():
        notes = "; ".join(n.replace("\n", " ")[:200] for n in p["notes"])
        lines.append(f"| {name} | {p['status']} | {p['seconds']} | {p['budget_s']} | {notes} |")
    lines += ["", "## Methods: train, stop, resume; host syncs on the step path", ""]
    lines += [
        "| method | losses | first run (s) | resumed run (s) | sync-checked steps | result |",
        "|---|---|---:|---:|---:|---|",
    ]
    runs, sync = phases["methods"]["items"], phases["sync"]["items"]
    for m in [*runs, *(m for m in sync if m not in runs)]:
        item, si = runs.get(m, {}), sync.get(m, {})
        bad = [x for x in (item, si) if x and not x.get("ok", False)]
        verdict = (
            "ok" if not bad else "; ".join(f"{b.get('error')} at {b.get('where')}" for b in bad)
        )
        lines.append(
            f"| {m} | {item.get('losses', '')} | {item.get('first_run_s', '')} | "
            f"{item.get('resumed_run_s', '')} | {si.get('steps_checked', '')} | {verdict} |"
        )
    thr = report.get("throughput")
    if thr is not None:
        lines += ["", "## Throughput (benchmarks/bench_throughput.py)", "", bt.markdown(thr)]
        goals = phases["throughput"]["items"].get("paper_run_minutes", {})
        lines += ["", "| 300-epoch CIFAR-10 run | minutes | goal | met |", "|---|---:|---:|---|"]
        for m, g in goals.items():
            met = "yes" if g["met"] else "no"
            lines.append(f"| {m} | {g['minutes']} | <= {g['goal_minutes']} | {met} |")
    comp = phases["compile"]["items"]
    if comp:
        lines += ["", "## compile=true (engine CE)", "", "| | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in comp.items()]
    ops = phases["ops"]["items"]
    if ops:
        lines += [
            "",
            "## Operators per step",
            "",
            "| method | ATen ops / step | ops / batch drawn | CUDA kernels / step | "
            "kernels / batch drawn |",
            "|---|---:|---:|---:|---:|",
        ]
        for m, o in ops.items():
            lines.append(
                f"| {m} | {o.get('step_ops', '')} | {o.get('batch_drawing_ops', '')} | "
                f"{o.get('step_kernels', '')} | {o.get('batch_drawing_kernels', '')} |"
            )
    jpeg = phases["jpeg"]["items"]
    if jpeg:
        lines += ["", "## JPEG decoding (streaming reader)", "", "| | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in jpeg.items()]
    lines += ["", f"NCCL: {phases['nccl']['status']} {'; '.join(phases['nccl']['notes'])[:300]}"]
    return "\n".join(lines) + "\n"


def check(profile: Profile, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """Every phase in turn; the report (also written as JSON and Markdown to ``out_dir``).

    Each phase's hard deadline is 1.5 x its budget, cut so that the later phases' budgets
    still fit before :data:`TOTAL_S` (so the whole check ends in time even when one phase
    overruns); a dry run has no deadlines (a loaded CPU is slow, and nothing is timed).
    """
    begin = time.perf_counter()
    report: dict[str, Any] = {}
    phases: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)

        def teacher() -> Path | None:
            ce = phases["methods"].items.get("ce", {})
            return Path(ce["run_dir"]) if ce.get("ok") else None

        def throughput(p: Phase) -> None:
            report["throughput"] = phase_throughput(p, profile, device)

        def eager() -> float | None:
            return (report.get("throughput") or {}).get("images_per_s", {}).get("engine ce")

        bodies: dict[str, Callable[[Phase], None]] = {
            "methods": lambda p: phase_methods(p, profile, device, work),
            "sync": lambda p: phase_sync(p, profile, device, work, teacher()),
            "throughput": throughput,
            "compile": lambda p: phase_compile(p, profile, device, eager()),
            "ops": lambda p: phase_ops(p, profile, device),
            "jpeg": lambda p: phase_jpeg(p, profile, device, work),
            "nccl": lambda p: phase_nccl(p, profile, device, work),
        }
        names = list(bodies)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i, name in enumerate(names):
            budget = BUDGETS_S[name]
            hard = math.inf
            if not profile.dry:
                later = sum(BUDGETS_S[n] for n in names[i + 1 :] if n != "nccl" or gpus > 1)
                left = TOTAL_S - (time.perf_counter() - begin) - later
                hard = max(min(budget * HARD_FACTOR, left), 5.0)
            phases[name] = run_phase(name, min(budget, hard), bodies[name], hard)
            # written after every phase: a check cut short by an outer timeout keeps its findings
            report["settings"] = settings(device, profile, time.perf_counter() - begin)
            report["phases"] = {n: p.to_dict() for n, p in phases.items()}
            report["ok"] = len(phases) == len(names) and all(
                p.status in ("ok", "skipped") for p in phases.values()
            )
            write_report(report, out_dir, "gpu_check_dry" if profile.dry else "gpu_check")
    return report


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="every phase once, tiny, untimed")
    parser.add_argument("--device", default=None, help="default: cuda (dry: cpu)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profile = DRY if args.dry else FULL
    device = resolve_device(args.device or ("cpu" if args.dry else "cuda"))
    if device.type != "cuda" and not profile.dry:
        print("gpu_check: no CUDA device; run with --dry for the CPU rehearsal", file=sys.stderr)
        return 2
    report = check(profile, device, args.out_dir)
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
