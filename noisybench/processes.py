"""How many processes train, behind one object: the few verbs the training loop needs.

:class:`SingleProcess` answers every verb locally (identity, no communication);
:class:`DataParallel` does the same over the processes of an initialised process group
(:mod:`noisybench.distributed`). The engine calls the verbs and never asks which kind it
holds, so the loop reads the same for one process and for many. Why the data-parallel verbs
give the single-process numbers is in the docstring of :mod:`noisybench.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from noisybench import distributed as dist
from noisybench.method import Batch, Method, StepOutput

__all__ = ["DataParallel", "Processes", "SingleProcess", "for_this_process"]

#: Every process's ``[share size, carried, leading size of each gathered state tensor]``
#: and the gathered state keys (None with one process).
Shares = tuple[list[list[int]], list[str]] | None


class Processes(Protocol):
    """The verbs of the training loop that depend on the number of processes."""

    world: int
    rank: int

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        """What ``method.training_step`` gets in place of ``model``."""
        ...

    def shares(self, batch: Batch, out: StepOutput, gathers_state: bool) -> Shares:
        """The sizes of every process's share of the global batch (host integers)."""
        ...

    def weight(self, loss: Tensor, shares: Shares) -> Tensor:
        """The loss whose averaged gradient is the global batch's mean gradient."""
        ...

    def fraction(self, shares: Shares) -> float:
        """This process's share of the global batch, ``n_r / n`` (a host number)."""
        ...

    def sum(self, values: Tensor) -> Tensor:
        """The sum of ``values`` over the processes (a new tensor when communicating)."""
        ...

    def average_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the processes (DDP does the model's)."""
        ...

    def global_step(self, batch: Batch, out: StepOutput, shares: Shares) -> tuple[Batch, Any]:
        """The global batch and step output for ``method.after_step``."""
        ...

    def any(self, value: int) -> int:
        """The largest host integer over the processes ("any process says stop")."""
        ...

    def first(self, step: Tensor) -> int:
        """The smallest non-negative device integer over the processes, or -1."""
        ...

    def reduce(self, values: Tensor, extras: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Sums over the processes of ``values``; ``extras`` averaged over them."""
        ...

    def total(self, count: int) -> int:
        """The sum of a host integer over the processes."""
        ...

    def block(self, n: int) -> tuple[int, int]:
        """This process's contiguous block of ``n`` evaluation samples."""
        ...

    def gather_rows(self, out: Tensor, n: int) -> Tensor:
        """Every process's block (see :meth:`block`) of ``n`` rows, in rank order."""
        ...

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics) before evaluating."""
        ...

    def ranked(self, mine: Callable[[], dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Every process's ``mine()`` (RNG states, running sums) for the checkpoint, or None
        with one process (then ``mine`` is not called)."""
        ...

    def own(self, ckpt: dict[str, Any], key: str) -> Any:
        """This process's entry of the checkpoint's ``key`` (``<key>_ranks`` when ranked)."""
        ...


class SingleProcess:
    """One process: every verb is local and communicates nothing."""

    world = 1
    rank = 0

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        return model

    def shares(self, batch: Batch, out: StepOutput, gathers_state: bool) -> Shares:
        return None

    def weight(self, loss: Tensor, shares: Shares) -> Tensor:
        return loss

    def fraction(self, shares: Shares) -> float:
        return 1.0

    def sum(self, values: Tensor) -> Tensor:
        return values

    def average_grads(self, params: Sequence[nn.Parameter]) -> None:
        return None

    def global_step(self, batch: Batch, out: StepOutput, shares: Shares) -> tuple[Batch, Any]:
        return batch, out

    def any(self, value: int) -> int:
        return int(value)

    def first(self, step: Tensor) -> int:
        return int(step)

    def reduce(self, values: Tensor, extras: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return values, extras

    def total(self, count: int) -> int:
        return int(count)

    def block(self, n: int) -> tuple[int, int]:
        return 0, n

    def gather_rows(self, out: Tensor, n: int) -> Tensor:
        return out

    def sync_buffers(self, model: nn.Module) -> None:
        return None

    def ranked(self, mine: Callable[[], dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    def own(self, ckpt: dict[str, Any], key: str) -> Any:
        return ckpt.get(key)


class DataParallel:
    """The processes of an initialised process group, each training on its share of every
    global batch with the model in ``DistributedDataParallel``."""

    def __init__(self) -> None:
        self.world = dist.world_size()
        self.rank = dist.rank()

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        """``DistributedDataParallel(model)``; the method's extra modules get rank 0's values,
        as DDP does for the model's."""
        from torch.nn.parallel import DistributedDataParallel

        extra = [t for m in method.extra_modules() for t in (*m.parameters(), *m.buffers())]
        with torch.no_grad():
            dist.broadcast_tensors([t.data for t in extra])
        device = next(model.parameters()).device
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def shares(self, batch: Batch, out: StepOutput, gathers_state: bool) -> Shares:
        keys = [k for k in sorted(out.state) if out.state[k].dim() >= 1] if gathers_state else []
        dims = [int(out.state[k].shape[0]) for k in keys]
        rows = dist.control_all_gather([int(batch.idx.shape[0]), int(batch.carried), *dims])
        if any(len(r) != len(rows[0]) for r in rows):
            raise RuntimeError(
                "the method returned different StepOutput.state keys on different processes"
            )
        return rows, keys

    def weight(self, loss: Tensor, shares: Shares) -> Tensor:
        assert shares is not None
        rows = shares[0]
        total = sum(r[0] for r in rows)
        if total != rows[self.rank][0] * self.world:  # unequal shares: weight by size
            return loss * (self.world * rows[self.rank][0] / total)
        return loss

    def fraction(self, shares: Shares) -> float:
        assert shares is not None
        rows = shares[0]
        return rows[self.rank][0] / sum(r[0] for r in rows)

    def sum(self, values: Tensor) -> Tensor:
        return dist.all_reduce_sum(values.clone())

    def average_grads(self, params: Sequence[nn.Parameter]) -> None:
        for p in params:
            if p.grad is not None:
                dist.all_reduce_sum(p.grad).div_(self.world)

    def global_step(self, batch: Batch, out: StepOutput, shares: Shares) -> tuple[Batch, Any]:
        """The rank-order concatenation of the shares, carried samples first (a state tensor
        with one row per sample is reordered the same way; others are concatenated)."""
        assert shares is not None
        rows, keys = shares
        sizes = [r[0] for r in rows]
        carried = [r[1] for r in rows]

        def global_order(parts: list[Tensor]) -> Tensor:
            head = [p[:c] for p, c in zip(parts, carried, strict=True)]
            tail = [p[c:] for p, c in zip(parts, carried, strict=True)]
            return torch.cat(head + tail)

        def gathered(t: Tensor) -> Tensor:
            return global_order(dist.all_gather_rows(t, sizes))

        state: dict[str, Tensor] = dict(out.state)
        for j, key in enumerate(keys):
            dims = [r[2 + j] for r in rows]
            parts = dist.all_gather_rows(out.state[key].detach(), dims)
            state[key] = global_order(parts) if dims == sizes else torch.cat(parts)
        g_batch = Batch(
            idx=gathered(batch.idx), target=gathered(batch.target), views={}, carried=sum(carried)
        )
        logits = gathered(out.logits.detach())
        return g_batch, StepOutput(loss=out.loss, logits=logits, extras=out.extras, state=state)

    def any(self, value: int) -> int:
        return dist.control_max(value)

    def first(self, step: Tensor) -> int:
        big = torch.full_like(step, 2**62)
        v = dist.all_reduce(torch.where(step < 0, big, step), "min")
        return -1 if int(v) == 2**62 else int(v)

    def reduce(self, values: Tensor, extras: dict[str, Tensor]) -> tuple[Tensor, dict]:
        reduced = dist.all_reduce_sum(values.to(torch.float64))
        mean = {
            k: dist.all_reduce_sum(v.detach().clone().float()) / self.world
            for k, v in sorted(extras.items())
        }
        return reduced, mean

    def total(self, count: int) -> int:
        return sum(r[0] for r in dist.control_all_gather([int(count)]))

    def block(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def gather_rows(self, out: Tensor, n: int) -> Tensor:
        bounds = [r * n // self.world for r in range(self.world + 1)]
        sizes = [bounds[r + 1] - bounds[r] for r in range(self.world)]
        return torch.cat(dist.all_gather_rows(out, sizes))

    def sync_buffers(self, model: nn.Module) -> None:
        dist.broadcast_tensors(list(model.buffers()))

    def ranked(self, mine: Callable[[], dict[str, Any]]) -> list[dict[str, Any]] | None:
        return dist.all_gather_object(mine())

    def own(self, ckpt: dict[str, Any], key: str) -> Any:
        if ckpt.get(key) is None:
            return None
        return ckpt[f"{key}_ranks"][self.rank]


def for_this_process() -> SingleProcess | DataParallel:
    """:class:`DataParallel` in an initialised group of several processes, else one."""
    return DataParallel() if dist.world_size() > 1 else SingleProcess()
