"""Learning-rate schedules and the Adam beta1 ramp-down against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from noisybench import schedules


def _lrs(builder, steps: int, lr: float = 0.1, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = builder(opt, total_steps=steps, steps_per_epoch=10, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_follows_half_cosine() -> None:
    lrs = _lrs(schedules.cosine, 100)
    for step in (0, 25, 50, 99):
        assert lrs[step] == pytest.approx(0.05 * (1 + math.cos(math.pi * step / 100)))


def test_cosine_warmup_is_linear() -> None:
    lrs = _lrs(schedules.cosine, 100, warmup_epochs=2)  # 20 warm-up steps
    assert lrs[0] == pytest.approx(0.1 / 20)
    assert lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.05 * (1 + math.cos(math.pi * 40 / 80)))


def test_one_cycle_peaks_at_the_configured_lr() -> None:
    lrs = _lrs(schedules.one_cycle, 100, lr=0.01)
    assert max(lrs) == pytest.approx(0.01)
    assert lrs[0] == pytest.approx(0.01 / 25)
    assert lrs.index(max(lrs)) in (29, 30)
    assert lrs[-1] < 1e-5


def test_adam_beta1_rampdown() -> None:
    # Untouched before the ramp-down; exp(-12.5 p^2) of the way to the final value inside it.
    assert schedules.adam_beta1(0.9, 0.0, epoch=249, epochs=300, rampdown_epochs=50) == 0.9
    assert schedules.adam_beta1(0.9, 0.0, 299, 300, 50) == pytest.approx(0.9 * math.exp(-12.5))
    mid = schedules.adam_beta1(0.9, 0.5, 274, 300, 50)
    assert mid == pytest.approx(0.5 + 0.4 * math.exp(-12.5 * (25 / 50) ** 2))
    assert schedules.adam_beta1(0.9, 0.0, 299, 300, 0) == 0.9


def test_imagenet_schedule_values_by_hand() -> None:
    """The paper's ImageNet schedule (lr 0.5, 5 warm-up epochs, cosine over 90 epochs), with
    10 steps per epoch: 50 linear warm-up steps reaching 0.5, then a half cosine over 850."""
    lrs = _lrs(schedules.cosine, 900, lr=0.5, warmup_epochs=5)
    assert lrs[0] == pytest.approx(0.5 / 50)
    assert lrs[24] == pytest.approx(0.5 * 25 / 50)
    assert lrs[49] == pytest.approx(0.5)
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[475] == pytest.approx(0.25)  # half-way through the cosine: 0.5 * (1 + cos(pi/2))/2
    assert lrs[899] == pytest.approx(0.25 * (1 + math.cos(math.pi * 849 / 850)))


@pytest.mark.parametrize(
    ("name", "method", "values"),
    [
        ("table1_imagenet_bsd", "bsd", {"gamma": 0.99, "c": 400.0, "eps": 0.05}),
        ("table1_imagenet_pskd", "pskd", {"alpha_T": 0.3}),
        ("table1_imagenet_te", "te", {"rampup_epochs": 45}),
        ("table1_imagenet", "ce", {}),
    ],
)
def test_imagenet_presets_compose(name: str, method: str, values: dict) -> None:
    """The paper's ImageNet setting (Appendix A.1) in experiment=table1_imagenet[_<method>]."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=[f"experiment={name}"])
    assert cfg.method.name == method and cfg.model.name == "resnet152" and cfg.model.imagenet_stem
    assert cfg.epochs == 90 and cfg.batch_size == 1024 and cfg.dataset.name == "imagenet"
    assert cfg.optim.optimizer.lr == 0.5 and cfg.optim.optimizer.weight_decay == 1e-4
    assert cfg.optim.scheduler.warmup_epochs == 5
    assert cfg.optim.scheduler._target_ == "noisybench.schedules.cosine"
    for key, value in values.items():
        assert cfg.method[key] == value
