"""One per-sample store for the methods that keep a row of K numbers per training sample
(BSD's Dirichlet targets ``y`` and counts ``A``, PS-KD's last-epoch predictions, TE's
ensemble and epoch predictions).

A :class:`SampleStore` keeps its tensor as a *buffer of the owning method* under a given
name, so checkpoints keep the method's ``state_dict`` keys (``targets``, ``counts``,
``predictions``, ``ensemble`` ...) and ``Method.to(device)`` moves it. Every write goes
through :meth:`SampleStore.write`, which then calls :meth:`SampleStore.sync_`: the single
hook point where a data-parallel run can all-gather ``(idx, rows)`` from the other
processes and apply them too (a no-op in a single process).

Memory: one ``(N, K)`` tensor in the store's dtype (``N K bytes(dtype)``); nothing here
makes an ``(N, K)`` float32 temporary: :func:`label_rows` builds a prior in place and
:meth:`SampleStore.chunks` walks the rows in float32 chunks for diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from noisybench.errors import UserError

__all__ = ["DTYPES", "SampleStore", "label_rows", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DEFAULT_CHUNK_ROWS = 65536


def resolve_dtype(name: str, allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """The torch dtype of a per-sample store for ``method.store_dtype=name`` (the one table
    and the one knob name of every method's ``(N, K)`` store); a one-line
    :class:`UserError` for anything else."""
    if name not in allowed:
        raise UserError(
            f"method.store_dtype={name!r} is not supported; use one of {sorted(allowed)}"
        )
    return DTYPES[name]


def label_rows(
    labels: Tensor, num_classes: int, on: float, off: float, dtype: torch.dtype
) -> Tensor:
    """``(N, K)`` rows equal to ``off`` except ``on`` at each sample's label, in ``dtype``.

    Built in place (one allocation of the store's size, no int64 one-hot and no float32
    copy), e.g. BSD's Eq. 2 prior ``y0`` or PS-KD's one-hot start.
    """
    n = labels.shape[0]
    rows = torch.full((n, num_classes), off, dtype=dtype, device=labels.device)
    # Flat positions i * K + label_i: O(N) temporaries. (``scatter_`` with a scalar value
    # allocates twice the store on the CPU: 7.3 GB instead of 2.4 GB at ImageNet size.)
    flat = torch.arange(n, device=labels.device) * num_classes + labels.long()
    rows.view(-1)[flat] = on
    return rows


class SampleStore:
    """Rows of per-sample state held as the buffer ``name`` of ``owner``.

    Args:
        owner: the method (an ``nn.Module``) that owns the buffer.
        name: buffer name (its ``state_dict`` key).
        data: the initial tensor, ``(N, K)`` or ``(N,)``, already in its storage dtype.
        renormalise: rows are distributions; :meth:`read` divides each row by its sum (for
            float16 storage, whose rounding would otherwise accumulate).
    """

    def __init__(self, owner: nn.Module, name: str, data: Tensor, renormalise: bool = False):
        self.owner = owner
        self.name = name
        self.renormalise = bool(renormalise)
        #: Called as ``sync_hook(store, idx, rows)`` after every local write (rows already in
        #: the store's dtype); a distributed run sets it to all-gather and apply the writes.
        self.sync_hook: Callable[[SampleStore, Tensor, Tensor], None] | None = None
        if name in owner._buffers:
            setattr(owner, name, data)
        else:
            owner.register_buffer(name, data)

    @property
    def data(self) -> Tensor:
        """The stored tensor (the owner's buffer; replaced by ``load_state_dict`` in place)."""
        return getattr(self.owner, self.name)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def read(self, idx: Tensor | None = None) -> Tensor:
        """Rows ``idx`` (all when None) in float32, renormalised if the rows are distributions."""
        rows = (self.data if idx is None else self.data[idx]).float()
        if self.renormalise:
            rows = rows / rows.sum(dim=-1, keepdim=True)
        return rows

    def write(self, idx: Tensor, rows: Tensor) -> None:
        """``data[idx] = rows`` (cast to the store's dtype), then :meth:`sync_`.

        With repeated ``idx`` the rows of one sample must be equal (then the write is
        deterministic); BSD's update guarantees it.
        """
        rows = rows.to(self.data.dtype)
        self.data[idx] = rows
        self.sync_(idx, rows)

    def sync_(self, idx: Tensor, rows: Tensor) -> None:
        """Hook point for synchronising writes across processes (no-op in one process)."""
        if self.sync_hook is not None:
            self.sync_hook(self, idx, rows)

    def fill_(self, value: float) -> None:
        """Set every entry to ``value`` (e.g. TE's epoch store reset)."""
        self.data.fill_(value)

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, Tensor]]:
        """``(start, rows)`` over the store in float32 chunks of at most ``chunk_rows`` rows
        (renormalised as in :meth:`read`): O(chunk K) temporaries instead of O(N K)."""
        n = self.data.shape[0]
        for start in range(0, n, chunk_rows):
            rows = self.data[start : start + chunk_rows].float()
            if self.renormalise:
                rows = rows / rows.sum(dim=-1, keepdim=True)
            yield start, rows
