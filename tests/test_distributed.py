"""Data-parallel training (noisybench.distributed, the engine's multi-process path).

Two processes on the gloo backend on the CPU, started with ``torch.distributed.run`` (as
``torchrun`` does), are compared with one process training on the same global batches:

* the loader's shares partition every single-process batch (no processes needed);
* per-epoch metrics and the final model equal the single-process run's up to float rounding:
  DDP averages the two processes' gradients, ``(g_0 + g_1) / 2``, where one process sums the
  per-sample gradients of the whole batch in one backward pass, so float sums are taken in
  another order and differ in the last bits (observed: about 1e-7 relative). Tolerance:
  1e-5 relative (1e-6 absolute) on every float; accuracies (counts / N) exactly equal.
  The model is the BatchNorm-free ``small_mlp`` and random cropping is off, so nothing else
  differs between one and two processes;
* per-sample method state (BSD's targets and counts, DLB's carried logits, TE's and PS-KD's
  stores; the ensemble's second member, trained through the engine's gradient all-reduce) is
  bit-identical on the two processes and equal to the single-process state within the same
  tolerance;
* the command line under ``torch.distributed.run``: rank 0 alone writes the run directory;
  a SIGKILL of one process, then the same command again, resumes exactly (bit for bit the
  uninterrupted two-process run), and so does a SIGTERM sent to one process only (both stop
  at the same step boundary; the mid-epoch checkpoint carries both processes' RNG states
  and running sums).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_ENV, QUICK, ROOT, epoch_metrics, error_line, read_result

from noisybench.data.loader import DeviceLoader, folds_last_batch
from noisybench.errors import UserError

REL, ABS = 1e-5, 1e-6
EXACT_KEYS = ("test/acc", "test/err", "train/acc_given")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (KILL_ENV, "NOISYBENCH_TEST_KILL_RANK", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a process that aborts prints where (Python's stacks)
    env.update(extra)
    return env


def _torchrun(args: list[str], cwd: Path, env: dict[str, str] | None = None, nproc: int = 2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={_free_port()}",
        *args,
    ]
    return subprocess.run(
        cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=600
    )


# ------------------------------------------------------------------------------ loader
def _batches(loader: DeviceLoader, epoch: int) -> list[tuple[list[int], int]]:
    return [(b.idx.tolist(), b.carried) for b in loader.epoch(epoch)]


# N chosen so that no process is left one sample of the last batch: that batch is folded into
# the one before with 3 processes only (noisybench.data.loader.folds_last_batch), and then the
# processes' batches are, by design, not the single process's
@pytest.mark.parametrize(("batch_size", "carry", "n"), [(7, 0.0, 48), (8, 1.0, 46), (6, 0.5, 48)])
def test_shares_partition_the_single_process_batches(batch_size: int, carry: float, n: int) -> None:
    world = 3
    assert not folds_last_batch(n, batch_size, world, False)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)

    def loader(rank: int, size: int) -> DeviceLoader:
        return DeviceLoader(
            images, labels, batch_size, {"plain": lambda x: x.float()}, seed=3,
            carry_previous=carry, rank=rank, world_size=size,
        )  # fmt: skip

    single = loader(0, 1)
    shares = [loader(r, world) for r in range(world)]
    assert all(len(s) == len(single) for s in shares)
    for epoch in (0, 1):
        whole = _batches(single, epoch)
        parts = [_batches(s, epoch) for s in shares]
        for step, (idx, carried) in enumerate(whole):
            mine = [p[step] for p in parts]
            # carried chunks first, then fresh chunks, in rank order = the single batch
            head = [i for ids, c in mine for i in ids[:c]]
            tail = [i for ids, c in mine for i in ids[c:]]
            assert head + tail == idx
            assert sum(c for _, c in mine) == carried
            for sizes in ([c for _, c in mine], [len(ids) - c for ids, c in mine]):
                assert max(sizes) - min(sizes) <= 1  # near-equal chunks of each part
            assert min(len(ids) for ids, _ in mine) >= 1
            fresh = [set(ids[c:]) for ids, c in mine]
            assert sum(map(len, fresh)) == len(set().union(*fresh))  # disjoint


def test_a_last_batch_smaller_than_the_process_count_is_refused() -> None:
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.raises(UserError, match="fewer than the 3 processes"):
        DeviceLoader(images, labels, 4, {"plain": lambda x: x}, seed=0, rank=0, world_size=3)


# ------------------------------------------------------------------------------ engine
EXPERIMENTS = {
    # batch 99: shares of 50 and 49 samples, so the size weighting of the loss is exercised
    "bsd": "method=bsd batch_size=99 epochs=3",
    "dlb": "method=dlb batch_size=100 epochs=2",
    "te": "method=te batch_size=130 epochs=3 method.rampup_epochs=1",
    "pskd": "method=pskd batch_size=130 epochs=2",
    # extra trainable modules (the second member): gradients all-reduced by the engine
    "ensemble": "method=ensemble method.members=2 batch_size=130 epochs=2",
}
COMMON = "experiment=quickstart model=small_mlp dataset.augment.crop_padding=0 progress=false"


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal per-epoch numbers, NaN equal to NaN (e.g. a precision over an empty set)."""

    def key(h: dict) -> dict:
        return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in h.items()}

    return [key(h) for h in epoch_metrics(a)] == [key(h) for h in epoch_metrics(b)]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS) or (math.isnan(a) and math.isnan(b))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


@pytest.mark.cli
@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    specs = [f"{COMMON} {spec}" for spec in EXPERIMENTS.values()]
    _compare_with_one_process(tmp_path, list(EXPERIMENTS), specs)


@pytest.mark.cli
@pytest.mark.slow
def test_two_processes_stream_an_image_folder_like_one(tmp_path: Path) -> None:
    """The streaming reader under two processes: each decodes its own share of every batch
    (per-sample augmentation seeds, so the pixels are those of one process) and evaluates its
    own block of the test and training files (gathered); BSD's store and every metric equal
    the single-process run's."""
    from conftest import write_image_folder

    write_image_folder(tmp_path / "jpegs", classes=10, per_class=10, val_per_class=3)
    spec = (
        f"dataset=folder dataset.reader.root={tmp_path / 'jpegs'} dataset.reader.image_size=16 "
        "dataset.reader.resize=20 dataset.loader.workers=0 model=small_mlp noise=sym50 "
        "method=bsd epochs=2 batch_size=30 progress=false logger=[] eval.batch_size=16"
    )
    _compare_with_one_process(tmp_path, ["bsd folder"], [spec])


def _compare_with_one_process(tmp_path: Path, names: list[str], specs: list[str]) -> None:  # noqa: C901
    """Train ``specs`` under two gloo processes and in this process; compare (see the
    module docstring for the tolerances)."""
    from noisybench.build import build
    from noisybench.config import compose

    done = _torchrun([str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path), ";".join(specs)],
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    worst: dict[str, tuple[float, str]] = {}
    for number, (name, spec) in enumerate(zip(names, specs, strict=True)):
        r0 = torch.load(tmp_path / f"{number}.rank0.pt", weights_only=False)
        r1 = torch.load(tmp_path / f"{number}.rank1.pt", weights_only=False)
        assert r0["world"] == r1["world"] == 2
        # every process holds the same state, bit for bit
        assert r0["method"].keys() == r1["method"].keys()
        for key in r0["method"]:
            assert torch.equal(r0["method"][key], r1["method"][key]), (name, key)
        for key in r0["model"]:
            assert torch.equal(r0["model"][key], r1["model"][key]), (name, key)
        assert _same(r0["history"], r1["history"])

        exp = build(compose(spec.split()))
        history = exp.trainer().fit()
        single, double = epoch_metrics(history), epoch_metrics(r0["history"])
        assert len(single) == len(double)
        for one, two in zip(single, double, strict=True):
            assert one.keys() == two.keys()
            for key, value in one.items():
                if key in EXACT_KEYS:
                    assert value == two[key], (name, key)
                elif isinstance(value, float):
                    assert _close(value, two[key]), (name, key, value, two[key])
                    if value:
                        rel = abs(value - two[key]) / abs(value)
                        worst[name] = max(worst.get(name, (0.0, "")), (rel, key))
        state = exp.method.state_dict()
        for key, value in state.items():
            other = r0["method"][key]
            assert value.shape == other.shape and value.dtype == other.dtype, (name, key)
            if value.is_floating_point():
                gap = _max_abs(other, value)
                worst[f"{name} state"] = max(worst.get(f"{name} state", (0.0, "")), (gap, key))
                assert torch.allclose(value.double(), other.double(), rtol=REL, atol=ABS), (
                    name,
                    key,
                    _max_abs(other, value),
                )
            else:
                assert torch.equal(value, other), (name, key)
        for key, value in exp.model.state_dict().items():
            assert torch.allclose(value, r0["model"][key], rtol=1e-4, atol=1e-6), (name, key)
    for name, (gap, key) in worst.items():  # shown with pytest -s
        kind = "absolute" if name.endswith("state") else "relative"
        print(f"{name}: largest {kind} difference {gap:.2e} ({key})")


# ------------------------------------------------------------------------------ command line
def _cli(out: Path, *extra: str) -> list[str]:
    return ["-m", "noisybench", *QUICK, "model=small_mlp", "method=bsd", "epochs=3",
            f"out_dir={out}", *extra]  # fmt: skip


def _run_dir(out: Path) -> Path:
    found = [p.parent for p in out.rglob("noisy_labels.npy")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.cli
@pytest.mark.slow
def test_killed_or_stopped_process_resumes_exactly(tmp_path: Path) -> None:
    # Reference: an uninterrupted two-process run (random crops on, so every process's RNG
    # state matters for the resume).
    done = _torchrun(_cli(tmp_path / "ref"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ref_dir = _run_dir(tmp_path / "ref")
    ref = read_result(ref_dir)
    assert ref["status"] == "finished" and ref["processes"] == 2
    # rank 0 alone wrote: one Hydra record, no file of another process
    assert len(list((ref_dir / ".hydra").iterdir())) == 1

    # SIGKILL of process 1 before step 3 of epoch 2: the other ends too, the epoch-1
    # checkpoint stays, and the same command resumes from it.
    out = tmp_path / "kill"
    env = _env(**{KILL_ENV: "2:3:KILL", "NOISYBENCH_TEST_KILL_RANK": "1"})
    killed = _torchrun(_cli(out), cwd=tmp_path, env=env)
    assert killed.returncode != 0
    run_dir = _run_dir(out)
    assert read_result(run_dir)["status"] in ("failed", "running")
    assert len(read_result(run_dir)["history"]) == 1
    resumed = _torchrun(_cli(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert _same(read_result(run_dir)["history"], ref["history"])

    # SIGTERM to process 1 only, before step 4 of epoch 3: both stop at that boundary with a
    # mid-epoch checkpoint; the same command finishes the run exactly.
    out = tmp_path / "term"
    env = _env(**{KILL_ENV: "3:4:TERM", "NOISYBENCH_TEST_KILL_RANK": "1"})
    stopped = _torchrun(_cli(out), cwd=tmp_path, env=env)
    assert stopped.returncode != 0
    run_dir = _run_dir(out)
    result = read_result(run_dir)
    assert result["status"] == "interrupted"
    assert "stopped by SIGTERM at epoch 3, step 4" in result["error"]
    lines = [ln for ln in stopped.stderr.splitlines() if ln.startswith("noisybench: error")]
    assert len(lines) == 1 and "SIGTERM" in lines[0], stopped.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (2, 4, 2)
    assert len(ckpt["rng_ranks"]) == 2 and len(ckpt["epoch_sums_ranks"]) == 2
    # one process cannot resume it (the state is per process)
    single = subprocess.run([sys.executable, *_cli(out)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True)  # fmt: skip
    assert single.returncode == 2
    assert "written by 2 process(es)" in error_line(single.stderr)
    resumed = _torchrun(_cli(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _same(read_result(run_dir)["history"], ref["history"])


# ------------------------------------------------------------------------------ launchers
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_LOCALID",
    "SLURM_NTASKS",
    "MASTER_ADDR",
    "SLURM_LAUNCH_NODE_IPADDR",
)


def test_launcher_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    from noisybench import distributed

    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.env_world() == (0, 1, 0)
    assert distributed.init() is False and distributed.world_size() == 1
    assert distributed.device_for("auto") is None and distributed.is_main()
    # a batch script's own shell: the allocation has 8 tasks but no srun step
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert distributed.env_world() == (0, 1, 0)
    # srun: task 5 of 8, the second on its node
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.env_world() == (5, 8, 1)
    with pytest.raises(UserError, match="needs MASTER_ADDR and MASTER_PORT"):
        distributed.init("gloo")
    # torchrun's variables win (torchrun started by srun, one task per node)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.env_world() == (3, 4, 3)
    with pytest.raises(UserError, match="backend=mpi is unknown"):
        distributed.init("mpi")


@pytest.mark.cli
@pytest.mark.slow
def test_srun_environment_trains_two_processes(tmp_path: Path) -> None:
    """Two processes started as srun starts them (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
    SLURM_LOCALID; rendezvous at SLURM_LAUNCH_NODE_IPADDR), without torchrun."""
    spec = f"{COMMON} method=bsd batch_size=99 epochs=1 method.gamma=0.9 method.c=100"
    spec += " method.eps=0.5"
    srun = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1"}
    srun["MASTER_PORT"] = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path), spec],
            cwd=tmp_path,
            env=_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **srun),
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    r0 = torch.load(tmp_path / "0.rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "0.rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    assert torch.equal(r0["method"]["targets"], r1["method"]["targets"])
    assert torch.equal(r0["method"]["counts"], r1["method"]["counts"])
    # every sample was updated exactly once in the epoch (Eq. 5): A = gamma * A0 + 1 with
    # A0 = c + (K - 1) eps = 100 + 9 * 0.5 = 104.5, so A = 0.9 * 104.5 + 1 = 95.05
    expected = 95.05
    assert torch.allclose(r0["method"]["counts"], torch.full((1300,), expected))
