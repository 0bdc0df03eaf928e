"""Ensemble (baselines/ensemble.py) and KD (baselines/kd.py) against hand computations.

Expected values come from the definitions evaluated by hand (``math``) or by a second,
straightforward implementation written here; never from the methods' own output.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import images, roundtrip, tiny_batch, tiny_ctx, tiny_model
from noisybench.baselines.ensemble import Ensemble
from noisybench.baselines.kd import KnowledgeDistillation
from torch import nn

from noisybench.errors import UserError
from noisybench.method import Batch, MethodContext

K = 10


def make_ctx(labels: torch.Tensor, build_model=tiny_model) -> MethodContext:
    return tiny_ctx(labels, K, epochs=3, steps_per_epoch=2, build_model=build_model)


def params_of(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


LABELS = torch.tensor([1, 7, 3, 3, 0, 9, 2, 2])


# ------------------------------------------------------------------------------ ensemble


def make_ensemble(**kw) -> tuple[nn.Module, Ensemble]:
    model = tiny_model(0)
    ens = Ensemble(**kw)
    ens.setup(make_ctx(LABELS))
    return model, ens


def test_ensemble_predict_is_log_mean_softmax():
    model, ens = make_ensemble(members=3)
    x = images(5, 1)
    with torch.no_grad():
        probs = [F.softmax(m(x), dim=-1) for m in (model, ens.members[0], ens.members[1])]
        expected = torch.log((probs[0] + probs[1] + probs[2]) / 3)
        got = ens.predict(model, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.exp().sum(dim=1), torch.ones(5))


def test_ensemble_members_differ_and_are_deterministic():
    model, ens = make_ensemble(members=3)
    a, b, c = params_of(model), params_of(ens.members[0]), params_of(ens.members[1])
    assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, c)
    torch.manual_seed(123)
    e1 = Ensemble(members=3)
    e1.setup(make_ctx(LABELS))
    after_setup = torch.rand(3)
    torch.manual_seed(123)
    e2 = Ensemble(members=3)
    e2.setup(make_ctx(LABELS))
    torch.testing.assert_close(e1.state_dict(), e2.state_dict())  # same run seed: same members
    torch.manual_seed(123)
    torch.testing.assert_close(torch.rand(3), after_setup)  # setup left the global RNG alone
    torch.manual_seed(124)
    e3 = Ensemble(members=3)
    e3.setup(make_ctx(LABELS))
    assert not torch.equal(params_of(e3.members[0]), params_of(e1.members[0]))
    e4, e5 = Ensemble(members=2, seed=7), Ensemble(members=2, seed=7)
    e4.setup(make_ctx(LABELS))
    e5.setup(make_ctx(LABELS))
    torch.testing.assert_close(e4.state_dict(), e5.state_dict())  # explicit seed


def test_ensemble_extra_modules_and_state_dict():
    model, ens = make_ensemble(members=3)
    extra = ens.extra_modules()
    assert len(extra) == 2
    ids = {id(p) for m in extra for p in m.parameters()}
    assert ids == {id(p) for m in ens.members for p in m.parameters()}
    assert not ids & {id(p) for p in model.parameters()}
    state = ens.state_dict()
    for j in range(2):
        torch.testing.assert_close(state[f"members.{j}.1.weight"], ens.members[j][1].weight)
        torch.testing.assert_close(state[f"members.{j}.1.bias"], ens.members[j][1].bias)


def test_ensemble_loss_is_sum_of_member_ce_on_own_views():
    model, ens = make_ensemble(members=3)
    assert ens.views == ("weak", "weak_1", "weak_2")
    b = tiny_batch([0, 1, 2, 3], LABELS, 5, views=ens.views)
    out = ens.training_step(model, b, 0)
    nets = (model, ens.members[0], ens.members[1])
    expected = sum(
        F.cross_entropy(net(b.views[v]), b.target) for net, v in zip(nets, ens.views, strict=True)
    )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logits, model(b.views["weak"]))
    out.loss.backward()
    for net in nets:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    shared = Ensemble(members=2, independent_views=False)
    assert shared.views == ("weak",)


def test_ensemble_members_follow_model_mode():
    def dropout_model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, K))

    model = dropout_model()
    ens = Ensemble(members=3)
    ens.setup(make_ctx(LABELS, build_model=dropout_model))
    model.eval()  # the engine evaluates with the model in eval mode
    x = images(4, 9)
    with torch.no_grad():
        first, second = ens.predict(model, x), ens.predict(model, x)
    torch.testing.assert_close(first, second)  # no dropout in any member
    assert not any(m.training for m in ens.members)
    model.train()
    ens.training_step(model, tiny_batch([0, 1], LABELS, 3, views=ens.views), 0)
    assert all(m.training for m in ens.members)


def test_ensemble_bad_config():
    with pytest.raises(UserError):
        Ensemble(members=0)


# ------------------------------------------------------------------------------------ KD


def write_run(run: Path, model_state: dict, method_state: dict | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model_state, "method": method_state or {}, "epoch": 2}, run / "checkpoint.pt"
    )
    return run


def fixed_model(bias: list[float]) -> nn.Module:
    """A model whose logits are ``bias`` for every input (zero weights)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, len(bias)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor(bias))
    return model


def small_ctx(build_model) -> MethodContext:
    labels = torch.tensor([0, 1])
    return MethodContext(2, 3, labels, 3, 1, torch.device("cpu"), build_model=build_model)


def test_kd_loss_against_hand_computation_and_T_squared(tmp_path):
    """Teacher logits [3, 0, 0], student logits [0, 1, 0], label 0, beta = 0.9."""
    run = write_run(tmp_path / "teacher", fixed_model([3.0, 0.0, 0.0]).state_dict())
    student = fixed_model([0.0, 1.0, 0.0])
    x = Batch(torch.tensor([0, 1]), torch.tensor([0, 0]), {"weak": torch.zeros(2, 1, 2, 2)})

    def hand_kl(T: float) -> float:
        zp = math.exp(3 / T) + 2
        p = [math.exp(3 / T) / zp, 1 / zp, 1 / zp]
        zq = 2 + math.exp(1 / T)
        q = [1 / zq, math.exp(1 / T) / zq, 1 / zq]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    ce = -math.log(1 / (2 + math.e))  # label 0 under student logits [0, 1, 0]
    for T, beta in [(3.0, 0.9), (1.0, 0.9), (3.0, 1.0), (2.0, 0.0)]:
        kd = KnowledgeDistillation(teacher_runs=[str(run)], T=T, beta=beta)
        kd.setup(small_ctx(lambda: fixed_model([9.0, 9.0, 9.0])))
        out = kd.training_step(student, x, 0)
        expected = (1 - beta) * ce + beta * T**2 * hand_kl(T)
        assert out.loss.item() == pytest.approx(expected, rel=1e-6)
        assert out.extras["kl"].item() == pytest.approx(hand_kl(T), rel=1e-5)
    # beta = 1: the loss divided by the bare KL is exactly T^2
    for T in (1.0, 3.0, 5.0):
        kd = KnowledgeDistillation(teacher_runs=[str(run)], T=T, beta=1.0)
        kd.setup(small_ctx(lambda: fixed_model([9.0, 9.0, 9.0])))
        assert kd.training_step(student, x, 0).loss.item() / hand_kl(T) == pytest.approx(T**2)


def test_kd_loads_ensemble_run_and_averages(tmp_path):
    """An ensemble run (model + 2 members in "method") plus a single run = 4 teachers."""
    torch.manual_seed(0)
    model = tiny_model()
    ens = Ensemble(members=3)
    ens.setup(make_ctx(LABELS))
    run_e = write_run(tmp_path / "ens", model.state_dict(), ens.state_dict())
    single = tiny_model(5)
    run_s = write_run(tmp_path / "single", single.state_dict(), {"something": torch.zeros(3)})
    kd = KnowledgeDistillation(teacher_runs=[str(run_e), str(run_s)], T=3.0, beta=0.5)
    kd.setup(make_ctx(LABELS))
    nets = [model, ens.members[0], ens.members[1], single]
    assert len(kd.teachers) == 4
    for t, ref in zip(kd.teachers, nets, strict=True):
        torch.testing.assert_close(params_of(t), params_of(ref))
        assert not t.training and not any(p.requires_grad for p in t.parameters())
    # frozen, not trained, not checkpointed
    assert kd.extra_modules() == [] and len(kd.state_dict()) == 0
    assert list(kd.parameters()) == []

    student = tiny_model(8)
    b = tiny_batch([0, 1, 2, 3], LABELS, 4)
    x = b.views["weak"]
    with torch.no_grad():
        p_t = sum(F.softmax(n(x) / 3.0, dim=-1) for n in nets) / 4  # "tempered" average
    q = F.softmax(student(x) / 3.0, dim=-1)
    kl = (p_t * (p_t.log() - q.log())).sum(dim=1).mean()
    expected = 0.5 * F.cross_entropy(student(x), b.target) + 0.5 * 9.0 * kl
    out = kd.training_step(student, b, 0)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for t in kd.teachers for p in t.parameters())

    kd2 = KnowledgeDistillation(
        teacher_runs=[str(run_e)], T=3.0, beta=1.0, ensemble_average="probs"
    )
    kd2.setup(make_ctx(LABELS))
    with torch.no_grad():
        mean_p = sum(F.softmax(n(x), dim=-1) for n in nets[:3]) / 3
        p_t = mean_p ** (1 / 3.0)
        p_t = p_t / p_t.sum(dim=1, keepdim=True)  # softmax(log(mean_p) / T)
    kl = (p_t * (p_t.log() - q.log())).sum(dim=1).mean()
    torch.testing.assert_close(
        kd2.training_step(student, b, 0).loss, 9.0 * kl, rtol=1e-5, atol=1e-6
    )


def test_kd_user_errors(tmp_path):
    ctx = make_ctx(LABELS)
    (tmp_path / "empty").mkdir()
    wrong = write_run(
        tmp_path / "wrong", nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).state_dict()
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"method": {}}, bad / "checkpoint.pt")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cases = [
        ([], "teacher_runs is empty"),
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path / "empty")], "checkpoint.pt does not exist"),
        ([str(wrong)], "does not fit this run's model"),
        ([str(bad)], "no 'model' entry"),
        ([str(tmp_path / "junk")], "cannot be read"),
    ]
    for runs, message in cases:
        with pytest.raises(UserError, match=message) as info:
            KnowledgeDistillation(teacher_runs=runs).setup(ctx)
        assert "\n" not in str(info.value)  # one line for the command line
    for kw in ({"T": 0}, {"beta": 1.5}, {"ensemble_average": "median"}):
        with pytest.raises(UserError):
            KnowledgeDistillation(teacher_runs=["x"], **kw)


# -------------------------------------------------------------------- checkpoint round trip


def round_trip(make_method, views, resume_at: int = 2, steps: int = 3):
    """Straight run vs. a state_dict round trip (model, method, optimizer) after
    ``resume_at`` steps: the following step must give identical losses and states."""
    schedule = [tiny_batch([2 * s, 2 * s + 1, 7 - s], LABELS, 70 + s, views) for s in range(steps)]

    def fresh(seed):
        model = tiny_model(seed)
        method = make_method()
        method.setup(make_ctx(LABELS))
        params = list(model.parameters()) + [
            p for m in method.extra_modules() for p in m.parameters()
        ]
        return model, method, torch.optim.SGD(params, lr=0.2, momentum=0.9)

    def run(model, method, opt, batches, first_epoch):
        losses = []
        for s, b in enumerate(batches):
            out = method.training_step(model, b, first_epoch + s)
            assert torch.isfinite(out.loss)
            opt.zero_grad()
            out.loss.backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
            opt.step()
            method.after_step(b, out, first_epoch + s)
            method.on_epoch_end(first_epoch + s)
            losses.append(out.loss.detach())
        return losses

    model_a, method_a, opt_a = fresh(0)
    losses_a = run(model_a, method_a, opt_a, schedule, 0)
    model_b, method_b, opt_b = fresh(0)
    run(model_b, method_b, opt_b, schedule[:resume_at], 0)
    ckpt = roundtrip(
        {"model": model_b.state_dict(), "method": method_b.state_dict(), "opt": opt_b.state_dict()}
    )
    model_c, method_c, opt_c = fresh(99)
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["opt"])
    losses_c = run(model_c, method_c, opt_c, schedule[resume_at:], resume_at)
    torch.testing.assert_close(losses_c, losses_a[resume_at:])
    torch.testing.assert_close(model_c.state_dict(), model_a.state_dict())
    torch.testing.assert_close(method_c.state_dict(), method_a.state_dict())
    x = images(3, 1)
    torch.testing.assert_close(method_c.predict(model_c, x), method_a.predict(model_a, x))


def test_ensemble_round_trip_equals_not_stopping():
    round_trip(lambda: Ensemble(members=3), ("weak", "weak_1", "weak_2"))


def test_kd_round_trip_equals_not_stopping(tmp_path):
    run = write_run(tmp_path / "teacher", tiny_model(42).state_dict())
    round_trip(lambda: KnowledgeDistillation(teacher_runs=[str(run)]), ("weak",))
