"""Size and time of a run's checkpoint, written every epoch, at the paper's sizes.

A checkpoint is :meth:`noisybench.engine.Trainer.state_dict` (model, method state, optimizer,
scheduler, RNG states, history) written by :meth:`noisybench.rundir.RunDir.save_checkpoint`
(``torch.save`` to a temporary file, fsync, rename; the replaced one kept as ``.prev``) and
read back by :func:`noisybench.io.load_checkpoint` (``weights_only=True``), exactly as a run
does it. Cases (real objects, random weights):

* ``cifar10_bsd``: PreAct ResNet-18, SGD with momentum, BSD's store for N = 50,000, K = 10;
* ``cifar100_bsd``: the same with K = 100;
* ``imagenet_bsd``: ResNet-152 with the ImageNet stem (the ``table1_imagenet`` preset), SGD
  with momentum, BSD's store for N = 1,281,167, K = 1000 (float16 ``y`` + float32 ``A``), a
  90-epoch history.

``python benchmarks/bench_checkpoint.py [--dir DIR]`` writes
``benchmarks/results/checkpoint.json``; ``--dir`` puts the run directory on the disk to
measure (default: a temporary directory). Times are medians of ``--repeats`` saves (the
second and later ones replace a checkpoint, as every epoch after the first does). With
``checkpoint_async`` the training thread only waits for the copy of the state to CPU memory
(``async_blocking_s``; on a GPU the device-to-host copy), the write runs behind it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from noisybench.callbacks import Checkpointer
from noisybench.data.source import EvalLabels
from noisybench.engine import Trainer, TrainParts, TrainSettings
from noisybench.io import load_checkpoint
from noisybench.method import MethodContext
from noisybench.methods.bsd import BSD
from noisybench.models import create_model
from noisybench.rundir import RunDir
from noisybench.schedules import cosine

OUT = Path(__file__).resolve().parent / "results" / "checkpoint.json"
CASES = {  # name -> (model, N, K, epochs, BSD's (gamma, c, eps))
    "cifar10_bsd": ("preact_resnet18", 50_000, 10, 300, (0.85, 2000.0, 0.0)),
    "cifar100_bsd": ("preact_resnet18", 50_000, 100, 300, (0.85, 2000.0, 0.0)),
    "imagenet_bsd": ("resnet152", 1_281_167, 1000, 90, (0.99, 400.0, 0.05)),
}


def trainer_for(case: str) -> Trainer:
    """A trainer holding the case's model, optimizer, schedule and BSD store, at the last
    epoch of a run (a full history), on the CPU."""
    model_name, n, k, epochs, (gamma, c, eps) = CASES[case]
    overrides = {"imagenet_stem": True} if model_name == "resnet152" else {}
    model = create_model(model_name, k, **overrides)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():  # one step, so the momentum buffers exist as in a run
        p.grad = torch.zeros_like(p)
    optimizer.step()
    scheduler = cosine(optimizer, total_steps=epochs * 100, steps_per_epoch=100)
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(0))
    method = BSD(gamma=gamma, c=c, eps=eps, store_dtype="float16")
    method.setup(
        MethodContext(
            num_samples=n,
            num_classes=k,
            noisy_labels=labels,
            device=torch.device("cpu"),
            epochs=epochs,
            steps_per_epoch=100,
        )
    )
    empty = torch.zeros(0, dtype=torch.long)
    # a checkpoint never reads the data: labels only, no batches
    source = SimpleNamespace(labels=EvalLabels(empty, empty, labels))
    trainer = Trainer(
        TrainParts(model, method, optimizer, scheduler, source),  # type: ignore[arg-type]
        TrainSettings(epochs=epochs, device=torch.device("cpu")),
    )
    record = {"epoch": 0, "train/loss": 1.0, "test/acc": 0.5, "test/nll": 1.5, "test/ece": 0.1}
    trainer.history = [{**record, "epoch": e + 1} for e in range(epochs)]
    return trainer


def measure(case: str, root: Path, repeats: int) -> dict[str, Any]:
    trainer = trainer_for(case)
    run_dir = RunDir(root / case)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    saves, loads = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        run_dir.save_checkpoint(trainer.state_dict(trainer.epochs))
        saves.append(time.perf_counter() - start)
    size = run_dir.checkpoint_file.stat().st_size
    for _ in range(2):
        start = time.perf_counter()
        load_checkpoint(run_dir.checkpoint_file)
        loads.append(time.perf_counter() - start)
    on_disk = sum(f.stat().st_size for f in run_dir.path.iterdir() if f.is_file())
    # checkpoint_async: what the training thread waits for (the snapshot to CPU memory and
    # the thread's start), and the write behind it
    background = Checkpointer(run_dir, {}, background=True)
    blocking, total = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        background.on_epoch_end(trainer, trainer.epochs - 1, trainer.history[-1])
        blocking.append(time.perf_counter() - start)
        background.wait()
        total.append(time.perf_counter() - start)
    shutil.rmtree(run_dir.path)
    model_name, n, k, epochs, _ = CASES[case]
    return {
        "model": model_name,
        "n": n,
        "k": k,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "checkpoint_mib": size / 2**20,
        "run_dir_checkpoints_mib": on_disk / 2**20,  # checkpoint.pt + checkpoint.pt.prev
        "save_s": statistics.median(saves),
        "save_s_all": saves,
        "save_mib_per_s": size / 2**20 / statistics.median(saves),
        "load_s": min(loads),
        "async_blocking_s": statistics.median(blocking),
        "async_total_s": statistics.median(total),
        "epochs": epochs,
        "all_epochs_save_min": epochs * statistics.median(saves) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_checkpoint_"))
    try:
        results = {case: measure(case, root, args.repeats) for case in args.cases}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "cases": results,
        "settings": {
            "dir": str(args.dir or tempfile.gettempdir()),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(
        "| case | parameters | checkpoint (MiB) | save (s) | load (s) | all epochs (min) "
        "| checkpoint_async: training waits (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, r in results.items():
        print(
            f"| {case} | {r['parameters'] / 1e6:.1f}M | {r['checkpoint_mib']:.0f} | "
            f"{r['save_s']:.2f} | {r['load_s']:.2f} | {r['all_epochs_save_min']:.1f} | "
            f"{r['async_blocking_s']:.3f} |"
        )


if __name__ == "__main__":
    main()
