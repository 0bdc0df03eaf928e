"""Convergence noise per epoch (issue 27): the engine's across-step variance of the mini-batch
loss and of the total gradient norm, against the same numbers recomputed here from every
step's loss (recorded from the method's output) and every step's gradients (read from the
parameters after the step, before the next ``zero_grad``), with ``statistics.variance``."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

from noisybench.build import build
from noisybench.config import compose
from noisybench.engine import Callback, Trainer

BASE = [
    "experiment=quickstart",
    "epochs=2",
    "batch_size=100",
    "dataset.reader.test_size=1297",  # 500 training images: 5 steps per epoch
    "progress=false",
    "logger=[]",
    "device=cpu",
]


@pytest.fixture(autouse=True)
def _restore_torch_globals(restore_torch_globals: None) -> None:
    """build() sets torch's thread count and determinism (conftest)."""


class _Recorder(Callback):
    def __init__(self) -> None:
        self.norms: dict[int, list[float]] = {}

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        total = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None)
        self.norms.setdefault(epoch, []).append(math.sqrt(total))


@pytest.mark.parametrize("method", ["ce", "bsd"])
def test_loss_and_grad_norm_variance_match_recomputation(method: str) -> None:
    exp = build(compose([*BASE, f"method={method}"]))
    losses: dict[int, list[float]] = {}
    original = exp.method.training_step

    def recording(model, batch, epoch):
        out = original(model, batch, epoch)
        losses.setdefault(epoch, []).append(float(out.loss.detach()))
        return out

    exp.method.training_step = recording  # type: ignore[method-assign]
    recorder = _Recorder()
    history = exp.trainer([recorder]).fit()
    assert len(history) == 2
    for epoch, record in enumerate(history):
        assert len(losses[epoch]) == 5 and len(recorder.norms[epoch]) == 5
        l_mean, l_var = statistics.fmean(losses[epoch]), statistics.variance(losses[epoch])
        g_mean = statistics.fmean(recorder.norms[epoch])
        g_var = statistics.variance(recorder.norms[epoch])
        assert l_var > 0 and g_var > 0  # a test of a zero could not fail
        assert record["train/loss_step_mean"] == pytest.approx(l_mean, rel=1e-5)
        assert record["train/loss_step_var"] == pytest.approx(l_var, rel=1e-4)
        assert record["train/grad_norm_mean"] == pytest.approx(g_mean, rel=1e-5)
        assert record["train/grad_norm_var"] == pytest.approx(g_var, rel=1e-4)


def test_noise_sums_survive_a_mid_epoch_checkpoint() -> None:
    """The sums are part of the mid-epoch state: an epoch split at step 2 and resumed from
    ``state_dict`` gives the uninterrupted epoch's numbers."""
    from noisybench.engine import _EpochSums

    exp = build(compose([*BASE, "method=ce", "epochs=1"]))
    trainer = exp.trainer()
    full = copy.deepcopy(trainer.state_dict(0))  # the initial state, to restart from
    whole = trainer.train_epoch(0)
    trainer.load_state_dict(full)
    sums = _EpochSums.zeros(exp.device)
    trainer.model.train()
    batches = iter(exp.source.epoch(0))
    for step in range(2):
        trainer.train_step(next(batches), 0, step, sums)
    state = trainer.state_dict(0, 2, sums)
    assert state["epoch_sums"]["noise"] is not None
    _, _, restored = trainer.load_state_dict(state)
    resumed = trainer.train_epoch(0, 2, restored)
    torch.testing.assert_close(resumed.noise, whole.noise, rtol=1e-6, atol=1e-9)
