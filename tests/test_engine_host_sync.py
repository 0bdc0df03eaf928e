"""No host synchronisation on the training step path, for every ``conf/method/*.yaml``.

On a GPU, any read of a device tensor's value by the host (``.item()``, ``bool(t)``, ``int(t)``,
``.tolist()``, ``.numpy()``, ``torch.equal``, ...) and any op whose output shape depends on the
values (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``) blocks the CPU until
the GPU has caught up, which stalls the queue of kernels. On the CPU the same calls are cheap,
so they are counted by patching those entry points of ``torch.Tensor``/``torch`` while
``Trainer.train_step`` (forward, loss, backward, optimizer and scheduler step, the method's
``after_step``, the engine's running sums) runs, for a few steps of the offline quickstart
(digits, small CNN) with ``nonfinite=stop``. Expected: 0 for every method, and 0 in the
drawing of each batch (the loader's views, BSD+'s strong views included), counted apart.
(Before: BSD+'s AutoAugment made its affine scale from Python numbers on every call, 4 blocking
host-to-device copies per step.) Copies between devices cannot be seen on a CPU-only machine;
the views are our own code (``noisybench/data/views.py``), which draws and computes on the
batch's device only.

A self-check makes sure the counter sees each patched kind of read (a test that counts nothing
could not fail).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from noisybench.baselines import CODE_DEFAULTS
from torch import Tensor

from noisybench.build import build
from noisybench.config import CONF_DIR, compose
from noisybench.data.loader import plan_seed
from noisybench.engine import Trainer

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
STEPS = 3
BASE = [
    "experiment=quickstart",
    "epochs=2",
    "batch_size=128",
    "dataset.reader.test_size=1297",  # 500 training images: 4 steps per epoch
    "progress=false",
    "logger=[]",
    "nonfinite=stop",
    "device=cpu",
]

# Host reads of a tensor's value (method names of torch.Tensor).
# (``cpu``: a device-to-host copy wherever the tensor lives on a GPU.)
_READS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "equal",
)
# Ops whose output shape depends on tensor values (a sync on a GPU).
# (Tensor.unique is Python code that calls torch.unique, counted there.)
_DATA_SHAPED = ("nonzero", "masked_select", "argwhere")
_TORCH_FUNCS = ("equal", "allclose", "is_nonzero", "nonzero", "masked_select", "unique")
# Tensors made from Python data: on a GPU a blocking host-to-device copy.
_FROM_HOST = ("tensor", "as_tensor", "from_numpy")


class SyncCounter:
    """Counts host reads while :attr:`active`, by name."""

    def __init__(self) -> None:
        self.active = False
        self.counts: Counter[str] = Counter()
        # Tensors that live on the host on every device (the optimizer's step counters, which
        # torch keeps on the CPU unless the optimizer is fused or capturable): reading them
        # is no device sync.
        self.host_tensors: set[int] = set()

    def wrap(self, name: str, fn):
        counter = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if counter.active and not (args and id(args[0]) in counter.host_tensors):
                counter.counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    def wrap_getitem(self, fn):
        counter = self

        def has_mask(index: object) -> bool:
            items = index if isinstance(index, tuple) else (index,)
            return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)

        @functools.wraps(fn)
        def getitem(self: Tensor, index: object) -> Tensor:
            if counter.active and has_mask(index):
                counter.counts["__getitem__[bool mask]"] += 1
            return fn(self, index)

        return getitem

    @contextlib.contextmanager
    def patched(self) -> Iterator[SyncCounter]:
        with pytest.MonkeyPatch.context() as mp:
            for name in (*_READS, *_DATA_SHAPED):
                mp.setattr(torch.Tensor, name, self.wrap(f"Tensor.{name}", getattr(Tensor, name)))
            for name in (*_TORCH_FUNCS, *_FROM_HOST):
                mp.setattr(torch, name, self.wrap(f"torch.{name}", getattr(torch, name)))
            mp.setattr(torch.Tensor, "__getitem__", self.wrap_getitem(Tensor.__getitem__))
            yield self

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


def test_counter_sees_every_kind_of_read() -> None:
    """Each patched entry point, called the way method code calls it, is counted once."""
    t = torch.tensor([1.0, 0.0, 2.0])
    counter = SyncCounter()
    with counter.patched(), counter.counting():
        t[0].item()
        t.tolist()
        t.numpy()
        t.cpu()
        bool(t[0])
        if t[1]:  # the implicit form
            pass
        int(t[0])
        float(t[0])
        [0, 1, 2][t.long()[1]]
        t.equal(t)
        torch.equal(t, t)
        torch.allclose(t, t)
        t.nonzero()
        torch.nonzero(t)
        t.masked_select(t > 0)
        t.unique()
        _ = t[t > 0]
        torch.tensor(0.5)
        torch.as_tensor([1, 2])
        torch.from_numpy(np.zeros(2))
        _ = t[1:]  # not a host read: must not count
        _ = t * 2
    expected = {
        "Tensor.item": 1,
        "Tensor.tolist": 1,
        "Tensor.numpy": 1,
        "Tensor.cpu": 1,
        "Tensor.__bool__": 2,
        "Tensor.__int__": 1,
        "Tensor.__float__": 1,
        "Tensor.__index__": 1,
        "Tensor.equal": 1,
        "torch.equal": 1,
        "torch.allclose": 1,
        "Tensor.nonzero": 1,
        "torch.nonzero": 1,
        "Tensor.masked_select": 1,
        "torch.unique": 1,
        "__getitem__[bool mask]": 1,
        "torch.tensor": 1,
        "torch.as_tensor": 1,
        "torch.from_numpy": 1,
    }
    assert dict(counter.counts) == expected
    # Outside counting() nothing is recorded.
    with counter.patched():
        t[0].item()
    assert sum(counter.counts.values()) == sum(expected.values())


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a ``checkpoint.pt`` holding a small-CNN model state (kd's teacher)."""
    exp = build(compose([*BASE, "method=ce"]))
    run = tmp_path_factory.mktemp("teacher")
    torch.save({"model": exp.model.state_dict()}, run / "checkpoint.pt")
    return run


def count_syncs(method: str, extra: list[str], steps: int = STEPS) -> tuple[Counter, Counter]:
    """Host reads per category inside ``Trainer.train_step`` and inside the loader's batch
    drawing, over ``steps`` steps of epoch 1 (after one warm-up step of epoch 0)."""
    # digits: no per-setting authors' value for DivideMix / ELR, so their code's defaults
    exp = build(compose([*BASE, f"method={method}", *CODE_DEFAULTS.get(method, []), *extra]))
    trainer = exp.trainer()
    step_counter, load_counter = SyncCounter(), SyncCounter()
    original = Trainer.train_step

    def counted_step(self: Trainer, batch, epoch, step, sums) -> None:
        with step_counter.counting():
            original(self, batch, epoch, step, sums)

    sums = None
    from noisybench.engine import _EpochSums

    with step_counter.patched(), load_counter.patched():
        trainer.train_step = counted_step.__get__(trainer)  # type: ignore[method-assign]
        # Warm-up: the first step of the run (lazy state creation such as the optimizer's
        # momentum buffers) is not counted; then count ``steps`` steps of the next epoch.
        trainer.model.train()
        trainer.method.train()
        sums = _EpochSums.zeros(exp.device)

        def epoch(e: int) -> Iterator:
            """The epoch's batches, laid out by the method when it plans its epochs (DivideMix's
            reference loaders) as the engine asks for them: the plan is checked (one host read
            per epoch) when the epoch is asked for, so even its first batch is drawn without."""
            plan = trainer.method.epoch_plan(e, plan_seed(exp.source.seed, e))
            return iter(exp.source.epoch(e, 0, plan))

        batches = epoch(0)
        original(trainer, next(batches), 0, 0, sums)
        step_counter.host_tensors = {
            id(state["step"])
            for state in trainer.optimizer.state.values()
            if isinstance(state.get("step"), Tensor) and state["step"].dim() == 0
        }
        batches = itertools.chain(epoch(1), epoch(1))  # a planned epoch may be shorter
        for step in range(steps):
            with load_counter.counting():
                batch = next(batches)
            trainer.train_step(batch, 1, step, sums)
    return step_counter.counts, load_counter.counts


@pytest.mark.parametrize("method", METHODS)
def test_no_host_sync_on_the_step_path(method: str, request: pytest.FixtureRequest) -> None:
    extra = (
        [f"method.teacher_runs=['{request.getfixturevalue('teacher_dir')}']"]
        if method == "kd"
        else []
    )
    step_counts, load_counts = count_syncs(method, extra)
    print(
        f"{method}: step path {sum(step_counts.values())} host reads in {STEPS} steps "
        f"{dict(step_counts)}; batch drawing {sum(load_counts.values())} {dict(load_counts)}"
    )
    assert sum(step_counts.values()) == 0, dict(step_counts)
    assert sum(load_counts.values()) == 0, dict(load_counts)


def test_nonfinite_skip_reads_once_per_step() -> None:
    """The documented exception: ``nonfinite=skip`` must look at each loss (one read a step),
    which shows the counter sees the engine's own reads."""
    step_counts, _ = count_syncs("ce", ["nonfinite=skip"])
    assert dict(step_counts) == {"Tensor.__bool__": STEPS}


@pytest.mark.parametrize("loader", ["reference", "in_batch"])
def test_dividemix_co_training_steps_have_no_host_sync(loader: str) -> None:
    """DivideMix past the warm-up (warm_up=0: co-training from epoch 0), with each loader:
    MixMatch's lambda drawn on the device without the distribution's argument check, one-hot
    targets without F.one_hot's range check; the reference step reads its layout from the
    Python numbers the epoch plan left, never a tensor."""
    step_counts, load_counts = count_syncs(
        "dividemix", ["method.warm_up=0", f"method.loader={loader}"]
    )
    assert sum(step_counts.values()) == 0, dict(step_counts)
    assert sum(load_counts.values()) == 0, dict(load_counts)
