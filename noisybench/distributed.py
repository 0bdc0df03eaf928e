"""Data-parallel helpers over ``torch.distributed``: no-ops in a single process.

The same small set of helpers torchvision's reference scripts use (``references/
classification/utils.py``): initialise from the launcher's environment, the process's rank
and world size, whether it is the main process, sums over processes, a barrier and a
broadcast of a Python object. Every helper does nothing (or returns its input) when the run
is a single process, so the engine calls them unconditionally.

Launchers:

* ``torchrun --nproc_per_node=N -m noisybench ...`` sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* SLURM (``srun`` with ``--ntasks-per-node=N``) sets ``SLURM_PROCID``,
  ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID``; the rendezvous address is
  ``MASTER_ADDR``/``MASTER_PORT`` when set, else the node that ran ``srun``
  (``SLURM_LAUNCH_NODE_IPADDR``) and a port derived from the job id.

Backend: ``nccl`` on CUDA, ``gloo`` on the CPU (``distributed.backend`` may name one). Each
process trains on its own device, ``cuda:LOCAL_RANK``. Control messages that the host needs
(the stop flag at step boundaries, the sizes of every process's share of a batch) travel over
a second, CPU (gloo) group, so reading them never waits for the GPU. torch is imported only
when a helper needs it, so the command line can ask for the rank without importing it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from noisybench.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "PeerFailed",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "control_all_gather",
    "control_max",
    "device_for",
    "env_world",
    "guard_backward",
    "init",
    "is_active",
    "is_main",
    "local_rank",
    "rank",
    "rank_seed",
    "shutdown",
    "world_size",
]

_CONTROL: Any = None  # the CPU (gloo) group for host-side control messages


class PeerFailed(RuntimeError):
    """A collective failed because another process of the run ended (error, signal, kill)."""


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` the launcher set in the environment, or
    ``(0, 1, 0)`` for a plain single-process run (torchrun first, then SLURM)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    # SLURM_STEP_NUM_TASKS is set by srun only: a batch script's own shell (SLURM_NTASKS of
    # the allocation, no srun) stays a single process.
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in env and tasks > 1:
        return int(env["SLURM_PROCID"]), tasks, int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def is_active() -> bool:
    """Whether this process is one of several of an initialised process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_active() else 1


def local_rank() -> int:
    return env_world()[2] if is_active() else 0


def is_main() -> bool:
    """Rank 0 (the only process that writes the run directory)."""
    return rank() == 0


def device_for(setting: str) -> torch.device | None:
    """The device of this process in a multi-process run (``cuda:LOCAL_RANK`` when the
    setting allows CUDA and a GPU is visible, else the CPU); None in a single process
    (the config's ``device`` decides then).

    Raises:
        UserError: ``device=cuda:N`` with several processes (each takes its own GPU).
    """
    import torch

    if not is_active():
        return None
    setting = str(setting)
    if setting not in ("auto", "cpu", "cuda"):
        raise UserError(
            f"device={setting} names one device but the run has {world_size()} processes; use "
            "device=auto or device=cuda (each process takes cuda:LOCAL_RANK) or device=cpu"
        )
    if setting == "cpu" or not torch.cuda.is_available():
        if setting == "cuda":
            raise UserError("device=cuda but no GPU is visible; use device=auto or device=cpu")
        return torch.device("cpu")
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise UserError(
            f"process with LOCAL_RANK={index} has no GPU of its own ({torch.cuda.device_count()} "
            "visible); start at most one process per GPU (torchrun --nproc_per_node=<GPUs>)"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init(backend: str = "auto", timeout_s: float = 600.0) -> bool:
    """Join the process group the launcher describes (idempotent). Returns whether the run
    is multi-process.

    Raises:
        UserError: an unknown backend, nccl without a GPU, or a SLURM job of several tasks
            whose rendezvous address cannot be found.
    """
    import torch
    import torch.distributed as dist

    global _CONTROL
    r, w, lr = env_world()
    if w <= 1:
        return False
    if dist.is_initialized():
        return True
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise UserError(f"distributed.backend={backend} is unknown; use auto, nccl or gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError("distributed.backend=nccl needs a GPU; use distributed.backend=gloo")
    env = os.environ
    if "MASTER_ADDR" not in env:
        if "SLURM_LAUNCH_NODE_IPADDR" not in env:
            raise UserError(
                "a multi-process run needs MASTER_ADDR and MASTER_PORT; start it with torchrun, "
                "or export MASTER_ADDR=<first node> MASTER_PORT=<free port> before srun"
            )
        env["MASTER_ADDR"] = env["SLURM_LAUNCH_NODE_IPADDR"]
    if "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    env.setdefault("RANK", str(r))
    env.setdefault("WORLD_SIZE", str(w))
    env.setdefault("LOCAL_RANK", str(lr))
    if backend == "nccl":
        torch.cuda.set_device(lr)
    timeout = datetime.timedelta(seconds=float(timeout_s))
    dist.init_process_group(
        backend=backend, init_method="env://", rank=r, world_size=w, timeout=timeout
    )
    _CONTROL = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return True


def shutdown() -> None:
    """Leave the process group (at the end of a run; harmless when there is none). All
    processes first meet at a barrier, so that none tears down its connections while another
    is still using them. Unreachable objects (a finished run's DDP wrapper and its gradient
    reducer) are collected first, while the group they hold work of still exists, rather than
    during the interpreter's exit."""
    import gc

    import torch.distributed as dist

    global _CONTROL
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        try:
            if dist.get_world_size() > 1:
                dist.barrier()
        finally:
            dist.destroy_process_group()
    _CONTROL = None


_PEER_GONE = ("gloo", "nccl", "peer", "connection", "socket", "timed out", "timeout")


def _guard(what: str, any_error: bool = True) -> Any:
    """Turn a collective's failure (a peer process ended) into :class:`PeerFailed`; with
    ``any_error=False`` (around ``backward``, where DDP's all-reduce runs) only errors of the
    communication backend, so that a process's own error keeps its message."""
    import torch
    import torch.distributed as dist

    class _Guard:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
            if exc is None or isinstance(exc, PeerFailed):
                return False
            backend = isinstance(exc, dist.DistError) or (
                isinstance(exc, RuntimeError)
                and not isinstance(exc, torch.OutOfMemoryError)
                and any(word in str(exc).lower() for word in _PEER_GONE)
            )
            if backend or (any_error and isinstance(exc, RuntimeError)):
                raise PeerFailed(
                    f"another process of the run ended ({what} failed: {type(exc).__name__})"
                ) from exc
            return False

    return _Guard()


def guard_backward() -> Any:
    """Context manager around ``backward``: a failure of DDP's gradient all-reduce because
    another process ended becomes :class:`PeerFailed` (no-op in a single process)."""
    import contextlib

    if not is_active():
        return contextlib.nullcontext()
    return _guard("the gradient all-reduce", any_error=False)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (in place; returned). Single process: as is."""
    return all_reduce(tensor, "sum")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """``tensor`` reduced over all processes with ``op`` (sum, min or max), in place."""
    import torch.distributed as dist

    if is_active():
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        with _guard("a reduction"):
            dist.all_reduce(tensor, op=ops[op])
    return tensor


def broadcast_tensors(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite every tensor with rank ``src``'s values (in place)."""
    import torch.distributed as dist

    if is_active():
        with _guard("a broadcast"):
            for t in tensors:
                dist.broadcast(t, src=src)


def rank_seed(seed: int, rank_: int) -> int:
    """The seed of process ``rank_``'s global generators (augmentations, dropout) after the
    model is built; rank 0 keeps the stream of a single-process run."""
    import numpy as np

    state = np.random.SeedSequence([int(seed), 1_000_003, int(rank_)]).generate_state(2)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def barrier() -> None:
    import torch.distributed as dist

    if is_active():
        with _guard("a barrier"):
            dist.barrier(group=_CONTROL)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (picklable objects only)."""
    import torch.distributed as dist

    if not is_active():
        return obj
    box = [obj]
    with _guard("a broadcast"):
        dist.broadcast_object_list(box, src=src, group=_CONTROL)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (over the CPU group)."""
    import torch.distributed as dist

    if not is_active():
        return [obj]
    out: list[Any] = [None] * world_size()
    with _guard("a gather"):
        dist.all_gather_object(out, obj, group=_CONTROL)
    return out


def control_all_gather(values: Sequence[int]) -> list[list[int]]:
    """Every process's list of ``len(values)`` integers, in rank order, on the host (one
    small collective over the CPU group; no device synchronisation)."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return [list(values)]
    mine = torch.tensor(list(values), dtype=torch.int64)
    out = [torch.empty_like(mine) for _ in range(world_size())]
    with _guard("the exchange of batch sizes"):
        dist.all_gather(out, mine, group=_CONTROL)
    return [t.tolist() for t in out]


def control_max(value: int) -> int:
    """The largest ``value`` over all processes, on the host (CPU group)."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    with _guard("the stop-flag exchange"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL)
    return int(t.item())


def all_gather_rows(tensor: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Every process's ``tensor`` (equal trailing shape and dtype, leading size
    ``sizes[r]`` on rank ``r``, known on the host), in rank order, on this device."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return [tensor]
    most = max(sizes)
    if most == 0:
        return [tensor[:0] for _ in sizes]
    if tensor.dtype == torch.bool:  # not every backend reduces booleans
        return [t.bool() for t in all_gather_rows(tensor.to(torch.uint8), sizes)]
    padded = tensor
    if tensor.shape[0] < most:
        pad = tensor.new_zeros((most - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    out = [torch.empty_like(padded) for _ in sizes]
    with _guard("a gather"):
        dist.all_gather(out, padded.contiguous())
    return [t[:s] for t, s in zip(out, sizes, strict=True)]
