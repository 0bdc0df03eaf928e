"""The baselines' own lr schedules against PyTorch's schedulers / the authors' code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, MultiStepLR

from noisybench.schedules import (
    adam_beta1,
    cosine_restarts,
    gaussian_ramps,
    linear_decay,
    multistep,
)

SPE = 3  # steps per epoch


def _opt(kind: str = "sgd", lr: float = 0.02) -> torch.optim.Optimizer:
    p = [torch.nn.Parameter(torch.zeros(1))]
    if kind == "adam":
        return torch.optim.Adam(p, lr=lr)
    return torch.optim.SGD(p, lr=lr, momentum=0.9)


def _per_epoch(opt, sched, epochs: int, key=lambda g: g["lr"]) -> list:
    """The value in force during each epoch's steps (checked at every step of it)."""
    out = []
    for _ in range(epochs):
        vals = set()
        for _ in range(SPE):
            vals.add(key(opt.param_groups[0]))
            opt.step()
            sched.step()
        assert len(vals) == 1  # constant within an epoch
        out.append(vals.pop())
    return out


def test_multistep_equals_torch_multisteplr_per_epoch() -> None:
    ref_opt = _opt()
    ref = MultiStepLR(ref_opt, milestones=[40, 80], gamma=0.1)
    expected = []
    for _ in range(120):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    opt = _opt()
    ours = _per_epoch(opt, multistep(opt, 120 * SPE, SPE, [40, 80], 0.1), 120)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_cosine_restarts_equals_torch_per_epoch() -> None:
    ref_opt = _opt()
    ref = CosineAnnealingWarmRestarts(ref_opt, T_0=10, eta_min=0.001)
    expected = []
    for _ in range(150):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    opt = _opt()
    ours = _per_epoch(opt, cosine_restarts(opt, 150 * SPE, SPE, 10, 0.001), 150)
    np.testing.assert_allclose(ours, expected, rtol=1e-9)


def test_linear_decay_is_coteachings_plan() -> None:
    # bhanML/Co-teaching main.py, transcribed: n_epoch 200, epoch_decay_start 80, lr 0.001,
    # mom1 0.9 -> mom2 0.1; the training loop runs epochs 1..199 with alpha_plan[epoch].
    n_epoch, start, lr = 200, 80, 0.001
    alpha_plan = [lr] * n_epoch
    beta1_plan = [0.9] * n_epoch
    for i in range(start, n_epoch):
        alpha_plan[i] = float(n_epoch - i) / (n_epoch - start) * lr
        beta1_plan[i] = 0.1
    code_lr = [alpha_plan[e] for e in range(1, n_epoch)]
    code_beta1 = [beta1_plan[e] for e in range(1, n_epoch)]
    opt = _opt("adam", lr)
    sched = linear_decay(opt, 199 * SPE, SPE, start, 1, 0.9, 0.1)
    lrs = _per_epoch(opt, sched, 199)
    opt = _opt("adam", lr)
    sched = linear_decay(opt, 199 * SPE, SPE, start, 1, 0.9, 0.1)
    betas = _per_epoch(opt, sched, 199, key=lambda g: g["betas"][0])
    np.testing.assert_allclose(lrs, code_lr, rtol=1e-12)
    assert betas == code_beta1
    assert lrs[78] == pytest.approx(lr) and lrs[79] == pytest.approx(lr * 120 / 120)
    assert lrs[-1] == pytest.approx(lr / 120)  # code epoch 199: (200 - 199) / 120


def test_linear_decay_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    opt = _opt("adam", 0.001)
    sched = linear_decay(opt, 199 * SPE, SPE, 80, 1, 0.9, 0.1)
    for _ in range(90 * SPE):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")  # no local function to pickle
    opt2 = _opt("adam", 0.001)
    again = linear_decay(opt2, 199 * SPE, SPE, 80, 1, 0.9, 0.1)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    opt2.step()
    again.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"] == (0.1, 0.999)


# Temporal Ensembling's ramps, transcribed from s-laine/tempens train.py (config: rampup_length
# 80, rampdown_length 50, num_epochs 300, learning_rate_max, adam_beta1 0.9,
# rampdown_beta1_target 0.5): the values its training loop sets once per epoch.
def _tempens_rampup(epoch: int, rampup_length: int = 80) -> float:
    if epoch < rampup_length:
        p = max(0.0, float(epoch)) / float(rampup_length)
        p = 1.0 - p
        return math.exp(-p * p * 5.0)
    return 1.0


def _tempens_rampdown(epoch: int, num_epochs: int = 300, rampdown_length: int = 50) -> float:
    if epoch >= (num_epochs - rampdown_length):
        ep = (epoch - (num_epochs - rampdown_length)) * 0.5
        return math.exp(-(ep * ep) / rampdown_length)
    return 1.0


def test_gaussian_ramps_and_beta1_equal_temporal_ensembling_code() -> None:
    epochs, lr_max = 300, 0.001
    expected_lr = [_tempens_rampup(e) * _tempens_rampdown(e) * lr_max for e in range(epochs)]
    opt = _opt("adam", lr=lr_max)
    ours = _per_epoch(opt, gaussian_ramps(opt, epochs * SPE, SPE, 80, 50), epochs)
    np.testing.assert_allclose(ours, expected_lr, rtol=1e-12)
    assert ours[0] == pytest.approx(lr_max * math.exp(-5.0))  # not 0 at epoch 0
    expected_beta1 = [
        _tempens_rampdown(e) * 0.9 + (1.0 - _tempens_rampdown(e)) * 0.5 for e in range(epochs)
    ]
    got = [adam_beta1(0.9, 0.5, e, epochs, 50) for e in range(epochs)]
    np.testing.assert_allclose(got, expected_beta1, rtol=1e-12)
