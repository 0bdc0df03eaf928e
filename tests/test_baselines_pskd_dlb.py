"""PS-KD (baselines/pskd.py) and DLB (baselines/dlb.py) against hand computations.

Expected values come from the papers' equations evaluated by hand (``math``) or by a second,
straightforward implementation written here; never from the methods' own output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import roundtrip, tiny_batch, tiny_ctx, tiny_model
from noisybench.baselines.dlb import DLB
from noisybench.baselines.pskd import PSKD
from torch import nn

from noisybench.errors import UserError
from noisybench.method import Batch, MethodContext

K = 10


def make_ctx(labels: torch.Tensor, epochs: int = 4, steps: int = 2) -> MethodContext:
    return tiny_ctx(labels, K, epochs=epochs, steps_per_epoch=steps)


def train_step(method, model, opt, b: Batch, epoch: int):
    out = method.training_step(model, b, epoch)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    method.after_step(b, out, epoch)
    return out


# --------------------------------------------------------------------------------- PS-KD


def test_pskd_alpha_first_and_last_epoch():
    m = PSKD(alpha_T=0.8)
    m.setup(make_ctx(torch.zeros(4, dtype=torch.long), epochs=5))
    assert m.alpha(0) == pytest.approx(0.8 * 1 / 5)  # alpha_T * (0 + 1) / E
    assert m.alpha(2) == pytest.approx(0.8 * 3 / 5)
    assert m.alpha(4) == pytest.approx(0.8)  # last epoch E - 1 reaches alpha_T


def test_pskd_first_epoch_target_is_one_hot():
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    m = PSKD(alpha_T=0.8)
    m.setup(make_ctx(labels, epochs=3))
    model = tiny_model(0)
    b = tiny_batch([0, 2, 5], labels, seed=1)
    out = m.training_step(model, b, epoch=0)  # alpha_0 = 0.8/3 > 0, store is still one-hot
    expected = F.cross_entropy(model(b.views["weak"]), labels[[0, 2, 5]])
    torch.testing.assert_close(out.loss, expected)


def test_pskd_second_epoch_hand_example():
    """K = 3, logits fixed by hand (zero weights, bias), E = 2, alpha_T = 0.8."""
    labels = torch.tensor([0, 2])
    ctx = MethodContext(2, 3, labels, epochs=2, steps_per_epoch=1, device=torch.device("cpu"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    m = PSKD(alpha_T=0.8)
    m.setup(ctx)
    b = Batch(torch.tensor([0, 1]), labels, {"weak": torch.zeros(2, 1, 2, 2)})
    out = m.training_step(model, b, 0)
    m.after_step(b, out, 0)  # stores p = softmax([2, 0, 0]) for both samples

    z = math.exp(2) + 2
    p = [math.exp(2) / z, 1 / z, 1 / z]
    a = 0.8 * 2 / 2  # alpha_1 with 0-based epoch 1 of E = 2
    t0 = [(1 - a) * 1 + a * p[0], a * p[1], a * p[2]]  # label 0
    t1 = [a * p[0], a * p[1], (1 - a) * 1 + a * p[2]]  # label 2
    ce = lambda t: -sum(ti * math.log(pi) for ti, pi in zip(t, p, strict=True))  # noqa: E731
    # the engine asks for soft_targets() after the epoch, before on_epoch_end(): the target
    # of the next epoch either way
    torch.testing.assert_close(m.soft_targets(), torch.tensor([t0, t1]), rtol=0, atol=1e-6)
    m.on_epoch_end(0)
    torch.testing.assert_close(m.soft_targets(), torch.tensor([t0, t1]), rtol=0, atol=1e-6)
    out = m.training_step(model, b, 1)
    assert out.loss.item() == pytest.approx((ce(t0) + ce(t1)) / 2, rel=1e-6)


def test_pskd_epoch2_uses_epoch1_predictions_not_newer_ones():
    """Second implementation: record each sample's training softmax during epoch 0 by hand;
    in epoch 1 every batch (also the one after other samples were updated) must distil from
    those records, although the model has moved since."""
    labels = torch.tensor([1, 7, 3, 3, 0, 9])
    E, aT = 4, 0.8
    m = PSKD(alpha_T=aT)
    m.setup(make_ctx(labels, epochs=E, steps=2))
    model = tiny_model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    recorded = torch.zeros(6, K)
    for step, idx in enumerate([[0, 1, 2], [3, 4, 5]]):
        b = tiny_batch(idx, labels, seed=10 + step)
        with torch.no_grad():
            recorded[idx] = F.softmax(model(b.views["weak"]), dim=-1)
        train_step(m, model, opt, b, 0)
    m.on_epoch_end(0)
    a = aT * 2 / E
    for step, idx in enumerate([[5, 0, 3], [2, 4, 1]]):  # reshuffled epoch 1
        b = tiny_batch(idx, labels, seed=20 + step)
        with torch.no_grad():
            logp = F.log_softmax(model(b.views["weak"]), dim=-1)
        target = (1 - a) * F.one_hot(labels[idx], K).float() + a * recorded[idx]
        expected = -(target * logp).sum(dim=1).mean()
        out = train_step(m, model, opt, b, 1)
        torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_pskd_float16_store_and_bad_config():
    labels = torch.tensor([0, 1])
    m = PSKD(store_dtype="float16")
    m.setup(make_ctx(labels))
    assert m.predictions.dtype == torch.float16
    assert m.predictions.shape == (2, K)
    with pytest.raises(UserError):
        PSKD(alpha_T=1.5)
    with pytest.raises(UserError):
        PSKD(store_dtype="int8")


# ----------------------------------------------------------------------------------- DLB


def kl_by_hand(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float):
    """Row-wise KL(softmax(t/T) || softmax(s/T)) by the definition."""
    p = torch.exp(teacher_logits / T)
    p = p / p.sum(dim=1, keepdim=True)
    q = torch.exp(student_logits / T)
    q = q / q.sum(dim=1, keepdim=True)
    return (p * (p.log() - q.log())).sum(dim=1)


def test_dlb_kl_against_hand_computation_T3():
    """Previous logits [1, 2, 3] (bias only), current logits 0: L = log 3 + alpha T^2 KL."""
    labels = torch.tensor([0, 1, 2])
    ctx = MethodContext(3, 3, labels, epochs=1, steps_per_epoch=2, device=torch.device("cpu"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    m = DLB(T=3.0, alpha=1.0)
    m.setup(ctx)
    x = torch.zeros(2, 1, 2, 2)
    b1 = Batch(torch.tensor([0, 1]), labels[[0, 1]], {"weak": x})
    m.after_step(b1, m.training_step(model, b1, 0), 0)
    with torch.no_grad():
        model[1].bias.zero_()  # "after the update" the model outputs uniform logits
    b2 = Batch(torch.tensor([1, 2]), labels[[1, 2]], {"weak": x}, carried=1)
    out = m.training_step(model, b2, 0)
    z = math.exp(1 / 3) + math.exp(2 / 3) + math.exp(1)
    p = [math.exp(1 / 3) / z, math.exp(2 / 3) / z, math.exp(1) / z]
    kl = sum(pi * math.log(pi / (1 / 3)) for pi in p)
    assert out.loss.item() == pytest.approx(math.log(3) + 1.0 * 9.0 * kl, rel=1e-6)
    assert out.extras["kl"].item() == pytest.approx(kl, rel=1e-5)


def test_dlb_sequence_targets_are_previous_step_predictions():
    """Batches of 4 fresh samples; each step repeats the previous fresh samples (carried=4,
    as carry_previous = 1.0 asks); the KL target of every carried sample is the logits it
    got in the previous step's forward, before that step's update."""
    labels = torch.randint(0, K, (12,), generator=torch.Generator().manual_seed(3))
    m = DLB(T=3.0, alpha=1.0)
    assert DLB.carry_previous == 1.0
    m.setup(make_ctx(labels, epochs=2, steps=3))
    model = tiny_model(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    fresh = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    prev_logits = None
    for s, idx in enumerate(fresh):
        carried = fresh[s - 1] if s else []
        b = tiny_batch(carried + idx, labels, seed=30 + s, carried=len(carried))
        x = b.views["weak"]
        with torch.no_grad():
            logits = model(x)
        ce = F.cross_entropy(logits, b.target)
        if prev_logits is None:
            expected = ce
        else:
            expected = ce + 9.0 * kl_by_hand(prev_logits, logits[: len(carried)], 3.0).mean()
        out = train_step(m, model, opt, b, 0)
        torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
        prev_logits = logits[len(carried) :]  # fresh part, before this step's update
    # the loader may also carry only part of the batch, in any order: matched by index
    b = tiny_batch([11, 9, 0, 1], labels, seed=40, carried=2)
    with torch.no_grad():
        logits = model(b.views["weak"])
    teacher = prev_logits[[3, 1]]  # rows of samples 11 and 9 in the previous fresh part
    expected = F.cross_entropy(logits, b.target) + 9.0 * kl_by_hand(teacher, logits[:2], 3.0).mean()
    out = m.training_step(model, b, 0)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert out.extras["dlb_unmatched"].item() == 0


def test_dlb_zero_distillation_without_carried_samples():
    labels = torch.arange(8) % K
    m = DLB()
    m.setup(make_ctx(labels))
    model = tiny_model(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(m, model, opt, tiny_batch([0, 1, 2, 3], labels, seed=5), 0)
    assert m.prev_idx.tolist() == [0, 1, 2, 3]  # store is filled ...
    b = tiny_batch([0, 1, 4, 5], labels, seed=6, carried=0)  # ... but nothing is marked carried
    out = m.training_step(model, b, 0)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(b.views["weak"]), b.target))
    assert out.extras["kl"].item() == 0.0


def test_dlb_no_gradient_into_stored_logits():
    labels = torch.arange(8) % K
    m = DLB()
    m.setup(make_ctx(labels))
    model = tiny_model(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(m, model, opt, tiny_batch([0, 1, 2, 3], labels, seed=7), 0)
    assert not m.prev_logits.requires_grad and m.prev_logits.grad_fn is None
    stored = m.prev_logits.clone()
    b = tiny_batch([0, 1, 2, 3, 4, 5, 6, 7], labels, seed=8, carried=4)
    out = m.training_step(model, b, 0)
    model.zero_grad()
    out.loss.backward()  # would fail if the previous step's graph were still attached
    got = [p.grad.clone() for p in model.parameters()]
    # reference: the same loss with the teacher as a constant tensor
    model.zero_grad()
    logits = model(b.views["weak"])
    ref = F.cross_entropy(logits, b.target) + 9.0 * kl_by_hand(stored, logits[:4], 3.0).mean()
    ref.backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.testing.assert_close(m.prev_logits, stored)  # backward did not touch the store


def test_dlb_bad_config():
    with pytest.raises(UserError):
        DLB(T=0)
    with pytest.raises(UserError):
        DLB(alpha=-1)


# -------------------------------------------------------------------- checkpoint round trip


def round_trip(make_method, labels, schedule, resume_at: int):
    """Run ``schedule`` (list of (batch, epoch, ends_epoch)) straight through, and again with a
    state_dict round trip after ``resume_at`` steps; return both final states."""

    def fresh(seed):
        model = tiny_model(seed)
        method = make_method()
        method.setup(make_ctx(labels, epochs=3, steps=2))
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        return model, method, opt

    def run(model, method, opt, steps):
        losses = []
        for b, epoch, ends in steps:
            out = train_step(method, model, opt, b, epoch)
            assert torch.isfinite(out.loss)
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
            losses.append(out.loss.detach())
            if ends:
                method.on_epoch_end(epoch)
        return losses

    model_a, method_a, opt_a = fresh(0)
    losses_a = run(model_a, method_a, opt_a, schedule)
    model_b, method_b, opt_b = fresh(0)
    run(model_b, method_b, opt_b, schedule[:resume_at])
    ckpt = roundtrip(
        {"model": model_b.state_dict(), "method": method_b.state_dict(), "opt": opt_b.state_dict()}
    )
    model_c, method_c, opt_c = fresh(99)  # different init: everything must come from ckpt
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["opt"])
    losses_c = run(model_c, method_c, opt_c, schedule[resume_at:])
    torch.testing.assert_close(losses_c, losses_a[resume_at:])
    torch.testing.assert_close(model_c.state_dict(), model_a.state_dict())
    torch.testing.assert_close(method_c.state_dict(), method_a.state_dict())


def test_pskd_round_trip_equals_not_stopping():
    labels = torch.tensor([1, 7, 3, 3, 0, 9])
    schedule = [
        (tiny_batch([0, 1, 2], labels, 50), 0, False),
        (tiny_batch([3, 4, 5], labels, 51), 0, True),
        (tiny_batch([4, 0, 2], labels, 52), 1, False),
    ]
    round_trip(lambda: PSKD(alpha_T=0.8), labels, schedule, resume_at=2)


def test_dlb_round_trip_equals_not_stopping():
    labels = torch.tensor([1, 7, 3, 3, 0, 9])
    schedule = [
        (tiny_batch([0, 1, 2], labels, 60), 0, False),
        (tiny_batch([0, 1, 2, 3, 4, 5], labels, 61, carried=3), 0, True),
        (tiny_batch([3, 4, 5, 2, 0, 1], labels, 62, carried=3), 1, False),  # carried across epochs
    ]
    round_trip(lambda: DLB(T=3.0, alpha=1.0), labels, schedule, resume_at=2)


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 64, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("joint", [False, True])
def test_dlb_two_passes_update_batchnorm_twice_and_match_a_two_pass_reference(joint):
    """Reference code: out = net(fresh); out_pre = net(previous batch); CE over both, KL on
    out_pre. The default two-pass mode reproduces it (two BN running-stat updates per step);
    joint_forward=True makes one pass (one update, different batch statistics)."""
    import copy

    labels = torch.randint(0, K, (8,), generator=torch.Generator().manual_seed(4))
    m = DLB(T=3.0, alpha=1.0, joint_forward=joint)
    m.setup(make_ctx(labels))
    model = _BNNet().train()
    b1 = tiny_batch([0, 1, 2, 3], labels, seed=50)
    m.after_step(b1, m.training_step(model, b1, 0), 0)
    teacher = m.prev_logits.clone()
    ref = copy.deepcopy(model)
    before = int(model.bn.num_batches_tracked)
    b2 = tiny_batch([0, 1, 2, 3, 4, 5, 6, 7], labels, seed=51, carried=4)
    out = m.training_step(model, b2, 0)
    passes = int(model.bn.num_batches_tracked) - before
    # hand-written reference two-pass step
    x, t = b2.views["weak"], b2.target
    out_fresh = ref(x[4:])
    out_pre = ref(x[:4])
    ce = F.cross_entropy(torch.cat([out_pre, out_fresh]), torch.cat([t[:4], t[4:]]))
    expected = ce + 9.0 * kl_by_hand(teacher, out_pre, 3.0).mean()
    if joint:
        assert passes == 1
        assert not torch.allclose(out.loss.detach(), expected.detach(), rtol=1e-4)
    else:
        assert passes == 2
        torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.bn.running_mean, ref.bn.running_mean)
