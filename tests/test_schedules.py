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
    # Laine & Aila's code: d = epoch - (E - L), weight exp(-(d/2)^2 / L); d = 0 at epoch 250.
    assert schedules.adam_beta1(0.9, 0.0, epoch=249, epochs=300, rampdown_epochs=50) == 0.9
    assert schedules.adam_beta1(0.9, 0.0, epoch=250, epochs=300, rampdown_epochs=50) == 0.9
    # epoch 260: d = 10, exp(-25 / 50) = 0.60653...; 0.9 * that = 0.54588
    assert schedules.adam_beta1(0.9, 0.0, 260, 300, 50) == pytest.approx(0.545878, abs=1e-6)
    # epoch 299: d = 49, exp(-600.25 / 50)
    assert schedules.adam_beta1(0.9, 0.0, 299, 300, 50) == pytest.approx(0.9 * math.exp(-12.005))
    # L = 20 of E = 100, final 0.5, epoch 90: d = 10, exp(-25 / 20)
    mid = schedules.adam_beta1(0.9, 0.5, 90, 100, 20)
    assert mid == pytest.approx(0.5 + 0.4 * math.exp(-1.25))
    assert schedules.adam_beta1(0.9, 0.0, 299, 300, 0) == 0.9


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_one_cycle_matches_torch_onecycle_defaults(opt_name: str) -> None:
    """lr and momentum (Adam beta1 / SGD momentum) equal OneCycleLR with its defaults."""

    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        if opt_name == "adam":
            return torch.optim.Adam([p], lr=0.01)
        return torch.optim.SGD([p], lr=0.01, momentum=0.9)

    ours, ref = make(), make()
    s_ours = schedules.one_cycle(ours, total_steps=120, steps_per_epoch=12)
    s_ref = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.01, total_steps=120)
    key = "betas" if opt_name == "adam" else "momentum"
    moms = []
    for _ in range(120):
        g, h = ours.param_groups[0], ref.param_groups[0]
        assert g["lr"] == pytest.approx(h["lr"], rel=1e-12)
        m = g[key][0] if key == "betas" else g[key]
        assert m == pytest.approx(h[key][0] if key == "betas" else h[key], rel=1e-12)
        moms.append(m)
        ours.step(), ref.step(), s_ours.step(), s_ref.step()
    # Hand-checked shape: momentum starts at 0.95, bottoms at 0.85 at the lr peak (step 35).
    assert moms[0] == pytest.approx(0.95)
    assert min(moms) == pytest.approx(0.85, abs=1e-4)
    assert moms[-1] == pytest.approx(0.95, abs=1e-4)


def test_one_cycle_rejects_a_bad_anneal_strategy() -> None:
    from noisybench.errors import UserError

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    with pytest.raises(UserError):
        schedules.one_cycle(opt, 10, 1, anneal_strategy="step")


def _adam_with(schedule_factory, steps: int):  # type: ignore[no-untyped-def]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    return opt, schedule_factory(opt)


def test_te_rampdown_scales_the_cycled_beta1_of_1cycle() -> None:
    """Under 1cycle with momentum cycling (OneCycleLR's default), TE's ramp-down multiplies
    the beta1 OneCycleLR sets at each step (read off a separate OneCycleLR) instead of being
    overwritten by it; a resumed schedule continues exactly."""
    import warnings

    from noisybench.schedules import adam_beta1, one_cycle, with_beta1_rampdown

    warnings.simplefilter("ignore", UserWarning)  # stepping schedules without optimizer steps
    epochs, per_epoch, ramp = 10, 10, 5
    ref_opt, ref = _adam_with(lambda o: one_cycle(o, epochs * per_epoch, per_epoch), 0)
    opt, sched = _adam_with(
        lambda o: with_beta1_rampdown(
            one_cycle(o, epochs * per_epoch, per_epoch), epochs, per_epoch, ramp, 0.0
        ),
        0,
    )
    saved = None
    for step in range(epochs * per_epoch - 1):
        sched.step()
        ref.step()
        epoch = (step + 1) // per_epoch
        cycled = ref_opt.param_groups[0]["betas"][0]
        # by hand: final + (cycled - final) * exp(-(d/2)^2 / L), d = epoch - (E - L)
        d = epoch - (epochs - ramp)
        expected = cycled if d < 0 else cycled * math.exp(-((d / 2) ** 2) / ramp)
        assert opt.param_groups[0]["betas"][0] == pytest.approx(expected, abs=1e-12)
        assert expected == pytest.approx(adam_beta1(cycled, 0.0, epoch, epochs, ramp))
        if step == 72:
            saved = (opt.state_dict(), sched.state_dict())
    opt2, sched2 = _adam_with(
        lambda o: with_beta1_rampdown(
            one_cycle(o, epochs * per_epoch, per_epoch), epochs, per_epoch, ramp, 0.0
        ),
        0,
    )
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    opt3, sched3 = _adam_with(
        lambda o: with_beta1_rampdown(
            one_cycle(o, epochs * per_epoch, per_epoch), epochs, per_epoch, ramp, 0.0
        ),
        0,
    )
    for _ in range(73):
        sched3.step()
    for _ in range(20):
        sched2.step()
        sched3.step()
        assert opt2.param_groups[0]["betas"] == opt3.param_groups[0]["betas"]


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
