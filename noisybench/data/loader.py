"""A loader over a training set that already lives on the device as one uint8 tensor.

Each epoch is a permutation drawn from a ``torch.Generator`` seeded from ``(seed, epoch)``
alone, so the order of an epoch never depends on what ran before it: resuming in the middle
of epoch ``e`` at step ``s`` replays exactly the batches ``s, s+1, ...`` of that epoch. The
augmentations themselves draw from torch's global generators, which the engine checkpoints.
Consecutive views of one kind and settings (BSD+'s ``strong_1``, ``strong_2``; the ensemble's
weak views) are computed in one pass with the numbers each would draw on its own
(:func:`noisybench.data.views.apply_jointly`): the same batches, fewer operators per step.

DLB (Shen et al. 2022, "Self-Distillation from the Last Mini-Batch") trains every batch
together with part of the previous one: with ``carry_previous = f > 0`` every batch but the
very first of the run starts with ``k = floor(f * batch_size + 1/2)`` samples that repeat the
LAST ``k`` fresh samples of the previous batch, in the same order and freshly augmented,
followed by up to ``batch_size`` fresh samples. ``Batch.carried = k`` says how many. Because
the carried samples are the ``k`` permutation entries just before the fresh ones, a batch is
the contiguous slice ``perm[lo - k : lo + batch_size]``; the first batch of epoch ``e > 0``
carries the tail of epoch ``e - 1``'s last batch, as DLB's reference code does. Every sample
is still fresh exactly once per epoch.

Data parallel (``rank``/``world_size``, :mod:`noisybench.distributed`): every process draws
the same permutation from ``(seed, epoch)`` and builds the same global batch as a single
process would (``batch_size`` fresh samples, plus the carried ones); process ``r`` then takes
the ``r``-th of ``world_size`` contiguous, near-equal chunks (``torch.tensor_split``) of the
carried part and of the fresh part. So ``batch_size`` is the GLOBAL batch, the chunks of all
processes are disjoint and their union, in rank order (carried chunks first), is exactly the
single-process batch; ``Batch.carried`` is the number of carried samples in the chunk.
Every process runs the same number of steps per epoch. A global batch smaller than the
number of processes would leave a process without samples and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from noisybench.data.views import apply_jointly, joint_groups
from noisybench.errors import UserError
from noisybench.method import Batch, EpochPlan

__all__ = [
    "DeviceLoader",
    "check_plan",
    "epoch_generator_seed",
    "folds_last_batch",
    "plan_seed",
    "planned_steps",
]


def _mixed_seed(*keys: int) -> int:
    """A 63-bit generator seed mixing ``keys`` with NumPy's ``SeedSequence`` hash."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & ((1 << 63) - 1)


def epoch_generator_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed mixing ``(seed, epoch)`` with NumPy's ``SeedSequence`` hash.

    Neighbouring (seed, epoch) pairs give unrelated seeds (unlike e.g. ``seed + epoch``, where
    seed 0 epoch 1 would equal seed 1 epoch 0).
    """
    return _mixed_seed(seed, epoch)


def plan_seed(seed: int, epoch: int) -> int:
    """The 63-bit seed a method's epoch plan (:meth:`noisybench.method.Method.epoch_plan`)
    draws its shuffles from: a function of ``(seed, epoch)`` only, unrelated to the epoch's
    own permutation seed (:func:`epoch_generator_seed`)."""
    return _mixed_seed(seed, epoch, 1)


def process_share(idx: Tensor, rank: int, world_size: int) -> Tensor:
    """Process ``rank``'s share of a global batch ``idx``: the ``rank``-th of ``world_size``
    contiguous, near-equal chunks (``torch.tensor_split``: the first ``len % world_size``
    chunks are one longer). Every loader splits batches this way, which the engine's gathered
    per-sample updates rely on (:mod:`noisybench.engine`)."""
    return torch.tensor_split(idx, world_size)[rank]


def folds_last_batch(n: int, batch_size: int, world_size: int, drop_last: bool) -> bool:
    """Whether an epoch's last batch is folded into the one before it (which then holds
    ``batch_size + N mod batch_size`` samples): when it would give some process exactly ONE
    sample. BatchNorm cannot normalise a single value per channel in training mode, so such
    a run could never finish (issue 20, item 6: 1,300 digits with ``batch_size=1299``).
    Folding, not dropping, keeps every sample fresh exactly once per epoch; the steps of an
    epoch stay a function of ``(N, batch_size, processes)`` alone, so resume stays exact.
    (A rest smaller than the number of processes stays refused, as before.)"""
    rest = 0 if drop_last else n % batch_size
    return world_size <= rest < 2 * world_size and n > batch_size


def check_start_step(start_step: int, steps: int) -> None:
    """Refuse a resume step outside an epoch of ``steps`` steps, in one line."""
    if not 0 <= int(start_step) <= steps:
        raise UserError(
            f"start_step={start_step} is outside the epoch's {steps} steps; resume from a "
            "checkpoint written with the same dataset and batch size"
        )


def check_plan(plan: EpochPlan, num_samples: int, carry_previous: float = 0.0) -> None:
    """Refuse, in one line, a method's epoch plan (:class:`noisybench.method.EpochPlan`) that
    cannot be trained on: no steps or parts, a non-positive ``per_step``, indices that are not
    a 1-D integer tensor inside the training set (one host sync per epoch), or a plan
    combined with DLB's carried samples."""
    if carry_previous:
        raise UserError(
            "a method that lays out its own epochs (epoch_plan) cannot also carry samples to "
            "the next batch (carry_previous); set one of them"
        )
    if int(plan.steps) < 1 or not plan.parts:
        raise UserError(
            f"the method's epoch plan has {plan.steps} steps and {len(plan.parts)} parts; "
            "an epoch needs at least one step and one part"
        )
    for name, (indices, per_step) in plan.parts.items():
        if int(per_step) < 1:
            raise UserError(f"part {name!r} of the epoch plan takes {per_step} rows a step")
        if indices.dim() != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
            raise UserError(
                f"part {name!r} of the epoch plan must be a 1-D integer index tensor, got "
                f"{indices.dtype} {tuple(indices.shape)}"
            )
        if indices.numel() and not bool((indices.min() >= 0) & (indices.max() < num_samples)):
            raise UserError(
                f"part {name!r} of the epoch plan indexes outside the {num_samples} training "
                "samples"
            )


def planned_steps(
    plan: EpochPlan, start_step: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[int, Tensor, tuple[tuple[str, int], ...]]]:
    """``(step, indices, parts)`` of a planned epoch from ``start_step`` on: this process's
    rows of every part (each part split into the processes' contiguous chunks as a global
    batch is, :func:`process_share`), concatenated in the plan's order, and each part's row
    count."""
    check_start_step(start_step, int(plan.steps))
    for step in range(int(start_step), int(plan.steps)):
        rows = plan.rows(step)
        if world_size > 1:
            rows = [(name, process_share(i, rank, world_size)) for name, i in rows]
        idx = torch.cat([i.long() for _, i in rows])
        yield step, idx, tuple((name, int(i.shape[0])) for name, i in rows)


class DeviceLoader:
    """Mini-batches of a device-resident training set, with the method's views applied.

    Args:
        images: uint8 ``(N, C, H, W)`` training images, on the training device.
        labels: int64 ``(N,)`` NOISY labels, on the same device.
        batch_size: fresh samples per batch.
        views: ``{key: view}`` from :func:`noisybench.data.views.build_views`; each view
            maps the uint8 batch to a normalised float batch. ``nn.Module`` views are moved
            to the images' device.
        seed: base seed of the epoch permutations (>= 0).
        drop_last: drop the last, smaller batch of an epoch.
        carry_previous: DLB's fraction ``f`` in [0, 1] (see the module docstring).
        rank, world_size: this process's share of every global batch (see the module
            docstring); ``0, 1`` in a single process.

    ``len(loader)`` is the number of steps (optimizer updates) per epoch.
    """

    def __init__(  # noqa: PLR0913
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        views: Mapping[str, Callable[[Tensor], Tensor]],
        seed: int,
        drop_last: bool = False,
        carry_previous: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise UserError(
                f"training images must be a uint8 (N, C, H, W) tensor, got {images.dtype} "
                f"{tuple(images.shape)}; pass ImageData.train_images"
            )
        n = int(images.shape[0])
        if labels.shape != (n,):
            raise UserError(
                f"labels of shape {tuple(labels.shape)} do not match {n} images; pass one "
                "label per training image"
            )
        if labels.device != images.device:
            raise UserError(
                f"labels are on {labels.device} but images on {images.device}; move both to "
                "the training device"
            )
        batch_size = int(batch_size)
        if batch_size < 1 or batch_size > n:
            raise UserError(
                f"batch_size={batch_size} must be between 1 and the training-set size {n}; "
                "set a smaller batch_size=... or use a larger dataset"
            )
        if not 0.0 <= float(carry_previous) <= 1.0:
            raise UserError(
                f"carry_previous={carry_previous} must be a fraction in [0, 1] of the batch size"
            )
        if int(seed) < 0:
            raise UserError(f"seed={seed} must be a non-negative integer")
        if not views:
            raise UserError("the loader needs at least one view; the method declares none")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        rest = 0 if drop_last else n % batch_size
        self.fold_last = folds_last_batch(n, batch_size, int(world_size), bool(drop_last))
        smallest = rest if (rest and not self.fold_last) else batch_size
        if smallest < int(world_size):
            raise UserError(
                f"the last batch of an epoch has {smallest} samples, fewer than the "
                f"{world_size} processes; choose a batch_size that leaves at least {world_size} "
                f"samples in it (the {n} training samples split into batches of batch_size)"
            )
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_carried = math.floor(float(carry_previous) * batch_size + 0.5)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.views: dict[str, Callable[[Tensor], Tensor]] = {}
        for key, view in views.items():
            if isinstance(view, nn.Module):
                view = view.to(images.device)
            self.views[key] = view
        self.groups = joint_groups(self.views)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if (self.drop_last or self.fold_last) else -(-n // b)

    def _stop(self, step: int, steps: int) -> int:
        """End (exclusive) of the fresh samples of ``step``: the last step of a folded epoch
        runs to the end of the permutation."""
        lo = step * self.batch_size
        if self.fold_last and step == steps - 1:
            return self.num_samples
        return min(lo + self.batch_size, self.num_samples)

    def permutation(self, epoch: int) -> Tensor:
        """The epoch's sample order, a function of ``(seed, epoch)`` only, on the device.

        Drawn on the CPU (so every device gives the same order) once per epoch.
        """
        gen = torch.Generator(device="cpu")
        gen.manual_seed(epoch_generator_seed(self.seed, epoch))
        perm = torch.randperm(self.num_samples, generator=gen)
        return perm.to(self.images.device, non_blocking=True)

    def epoch(
        self, epoch: int, start_step: int = 0, plan: EpochPlan | None = None
    ) -> Iterator[Batch]:
        """The batches of ``epoch`` from step ``start_step`` on (for mid-epoch resume); with a
        method's ``plan``, the plan's steps instead of a pass over all samples. The plan is
        checked here, when the epoch is asked for, not at its first batch: the check's host
        read stays out of the first step (the GPU check's sync phase makes it an error)."""
        if plan is not None:
            check_plan(plan, self.num_samples, self.num_carried)
            return self._planned(plan, start_step)
        return self._ordinary(epoch, start_step)

    def _planned(self, plan: EpochPlan, start_step: int) -> Iterator[Batch]:
        for step, idx, parts in planned_steps(plan, start_step, self.rank, self.world_size):
            yield self._batch(idx.to(self.images.device, non_blocking=True), 0, step, parts)

    def _ordinary(self, epoch: int, start_step: int) -> Iterator[Batch]:
        steps = len(self)
        check_start_step(start_step, steps)
        perm = self.permutation(epoch)
        b = self.batch_size
        for step in range(int(start_step), steps):
            lo = step * b
            hi = self._stop(step, steps)
            if step == 0 and epoch > 0 and self.num_carried > 0:
                # The first batch carries the tail of the previous epoch's last batch, as
                # DLB's reference code does; recomputed from (seed, epoch - 1), so a resumed
                # run carries the same samples.
                previous = self.permutation(epoch - 1)
                last_lo = (steps - 1) * b
                last_hi = self._stop(steps - 1, steps)
                carried = min(self.num_carried, last_hi - last_lo)
                idx = torch.cat((previous[last_hi - carried : last_hi], perm[lo:hi]))
            else:
                carried = min(self.num_carried, lo)  # 0 on the first step of epoch 0
                idx = perm[lo - carried : hi]
            if self.world_size > 1:
                idx, carried = self.share(idx, carried)
            yield self._batch(idx, carried, step)

    def _batch(
        self, idx: Tensor, carried: int, step: int, parts: tuple[tuple[str, int], ...] = ()
    ) -> Batch:
        """The batch of samples ``idx`` with every view of the method applied."""
        images = self.images.index_select(0, idx)
        views: dict[str, Tensor] = {}
        for group in self.groups:
            if len(group) == 1:
                views[group[0]] = self.views[group[0]](images)
            else:  # e.g. BSD+'s strong views: one pass, the same numbers
                outs = apply_jointly([self.views[k] for k in group], images)
                views.update(zip(group, outs, strict=True))
        return Batch(
            idx=idx,
            target=self.labels.index_select(0, idx),
            views=views,
            carried=carried,
            parts=parts,
            step=step,
        )

    def share(self, idx: Tensor, carried: int) -> tuple[Tensor, int]:
        """This process's chunk of the global batch ``idx`` (whose first ``carried``
        entries are carried samples) and the number of carried samples in it."""
        mine_carried = process_share(idx[:carried], self.rank, self.world_size)
        mine_fresh = process_share(idx[carried:], self.rank, self.world_size)
        return torch.cat((mine_carried, mine_fresh)), int(mine_carried.shape[0])

    def __iter__(self) -> Iterator[Batch]:
        """Epoch 0 (convenience for quick use; the engine calls :meth:`epoch`)."""
        return self.epoch(0)
