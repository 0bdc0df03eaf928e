"""BSD+ (noisybench.methods.bsdplus) and CutMix (noisybench.augment) against hand-computed
values and independent float64 formulas of Eq. 11 / 12."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, roundtrip, tiny_batch, tiny_ctx
from hydra.utils import instantiate
from torch import nn

from noisybench.augment import apply_box, cutmix, cutmix_box, mix_log_targets, mix_targets
from noisybench.errors import UserError
from noisybench.method import Batch
from noisybench.methods.bsd import BSD
from noisybench.methods.bsdplus import BSDPlus, consistency_kl

K = 5
VIEWS = ("weak", "strong_1", "strong_2")


def setup(method, labels):
    method.setup(tiny_ctx(labels, K))
    return method


def mlp(k: int = K) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, k))


def bn_net(k: int = K) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, k)
    )


def kl64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, float64, written out."""
    p, q = p.double(), q.double()
    return (p * (p.log() - q.log())).sum(dim=-1)


# -------------------------------------------------------------------------------- CutMix
def test_cutmix_box_hand_computed():
    # 8x8, lam 0.75: side 8*sqrt(0.25) = 4, centre (4, 4): rows/cols 2..5, kept 1 - 16/64
    mask, lam = cutmix_box(8, 8, torch.tensor(0.75), torch.tensor(4), torch.tensor(4))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(mask, expected) and lam.item() == pytest.approx(0.75)
    # clipped at the corner: rows/cols [-2, 2) -> [0, 2): 4 pixels, lam 1 - 4/64
    mask, lam = cutmix_box(8, 8, torch.tensor(0.75), torch.tensor(0), torch.tensor(0))
    assert int(mask.sum()) == 4 and bool(mask[:2, :2].all())
    assert lam.item() == pytest.approx(1 - 4 / 64)
    # 8 x 4, lam 0.5: sides floor(8 * 0.7071) = 5 and floor(4 * 0.7071) = 2, centre (3, 1):
    # rows [1, 6), cols [0, 2): 10 pixels of 32
    mask, lam = cutmix_box(8, 4, torch.tensor(0.5), torch.tensor(3), torch.tensor(1))
    expected = torch.zeros(8, 4, dtype=torch.bool)
    expected[1:6, 0:2] = True
    assert torch.equal(mask, expected) and lam.item() == pytest.approx(1 - 10 / 32)
    # lam = 1: empty box
    mask, lam = cutmix_box(8, 8, torch.tensor(1.0), torch.tensor(3), torch.tensor(3))
    assert not bool(mask.any()) and lam.item() == 1.0


def test_apply_box_and_mix_targets_hand_computed():
    images = torch.arange(3.0)[:, None, None, None].expand(3, 2, 4, 4).clone()  # image b == b
    perm = torch.tensor([2, 0, 1])
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:3, 0:3] = True  # 6 of 16 pixels: lam 10/16
    mixed = apply_box(images, perm, mask)
    for b in range(3):
        assert bool((mixed[b][:, mask] == perm[b]).all())
        assert bool((mixed[b][:, ~mask] == b).all())
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    lam = torch.tensor(10 / 16)
    expected = torch.tensor(
        [
            [10 / 16 + 6 / 16 * 0.2, 6 / 16 * 0.3, 6 / 16 * 0.5],  # 1 <- 3rd row
            [6 / 16, 10 / 16, 0.0],  # 2nd <- 1st
            [10 / 16 * 0.2, 10 / 16 * 0.3 + 6 / 16, 10 / 16 * 0.5],  # 3rd <- 2nd
        ]
    )
    assert torch.allclose(mix_targets(t, perm, lam), expected, atol=1e-7)
    log_mixed = mix_log_targets(t.clamp_min(1e-30).log(), perm, lam)
    assert torch.allclose(log_mixed.exp(), expected, atol=1e-7)


def test_cutmix_lam_is_the_replaced_area():
    torch.manual_seed(0)
    b = 6
    images = torch.arange(float(b))[:, None, None, None].expand(b, 3, 8, 8).clone()
    lams = []
    for _ in range(200):
        out = cutmix(images, alpha=1.0, prob=1.0)
        own = (out.images == images).all(dim=1).float().mean(dim=(1, 2))  # per image
        fixed = out.perm == torch.arange(b)  # a sample paired with itself looks unchanged
        assert torch.allclose(own[~fixed], out.lam.expand(b)[~fixed], atol=1e-6)
        assert torch.equal(torch.sort(out.perm).values, torch.arange(b))
        lams.append(out.lam)
    lams = torch.stack(lams)
    assert float(lams.min()) >= 0.0 and float(lams.max()) <= 1.0
    # Beta(1, 1) has mean 1/2; flooring the side and clipping keep more than asked
    assert 0.5 <= float(lams.mean()) <= 0.75
    out = cutmix(images, alpha=1.0, prob=0.0)
    assert torch.equal(out.images, images) and out.lam.item() == 1.0


# ------------------------------------------------------------------------- consistency KL
@pytest.mark.parametrize("kl_direction", ["target_to_strong", "strong_to_target"])
def test_consistency_kl_matches_hand_formula_with_cutmix(kl_direction):
    torch.manual_seed(1)
    b = 7
    weak = torch.randn(b, K)
    strong = [torch.randn(b, K), torch.randn(b, K)]
    perms = [torch.randperm(b), torch.arange(b)]
    lams = [torch.tensor(0.6875), torch.tensor(1.0)]
    got = consistency_kl(weak, strong, perms, lams, kl_direction=kl_direction)
    p = torch.softmax(weak.double(), -1)
    terms = []
    for s, perm, lam in zip(strong, perms, lams, strict=True):
        t = lam.double() * p + (1 - lam.double()) * p[perm]
        q = torch.softmax(s.double(), -1)
        kl = kl64(t, q) if kl_direction == "target_to_strong" else kl64(q, t)
        terms.append(kl.mean())
    assert torch.allclose(got.double(), sum(terms) / 2, rtol=1e-5)


def test_consistency_gradients_follow_detach_setting():
    torch.manual_seed(2)
    b = 6
    weak = torch.randn(b, K, requires_grad=True)
    strong = [torch.randn(b, K, requires_grad=True) for _ in range(2)]
    perms, lams = [torch.randperm(b)] * 2, [torch.tensor(0.7)] * 2
    loss = consistency_kl(weak, strong, perms, lams, detach_weak=True)
    g_weak, *g_strong = torch.autograd.grad(loss, [weak, *strong], allow_unused=True)
    assert g_weak is None or torch.equal(g_weak, torch.zeros_like(g_weak))  # None: no path
    # KL(t || softmax(s)) has gradient (softmax(s) - t) / B per view, times 1/m
    p = torch.softmax(weak.detach(), -1)
    for s, g in zip(strong, g_strong, strict=True):
        t = 0.7 * p + 0.3 * p[perms[0]]
        assert torch.allclose(g, (torch.softmax(s.detach(), -1) - t) / b / 2, atol=1e-6)
    loss = consistency_kl(weak, strong, perms, lams, detach_weak=False)
    (g_weak,) = torch.autograd.grad(loss, [weak])
    assert float(g_weak.abs().max()) > 1e-4


# ------------------------------------------------------------------------ the method
def test_views_shapes_and_finiteness():
    torch.manual_seed(3)
    labels = torch.randint(0, K, (20,))
    m = setup(BSDPlus(num_strong=3, lambda_c=7.0, cutmix_prob=1.0), labels)
    assert m.views == ("weak", "strong_1", "strong_2", "strong_3")
    assert BSDPlus(num_strong=2).views == ("weak", "strong_1", "strong_2")
    idx = torch.randperm(20)[:8]
    out = m.training_step(mlp(), tiny_batch(idx, labels, views=m.views), 0)
    assert out.loss.dim() == 0 and bool(torch.isfinite(out.loss))
    assert out.logits.shape == (8, K)
    for value in out.extras.values():
        assert value.dim() == 0 and bool(torch.isfinite(value))
    assert set(out.extras) >= {"loss_bsd", "loss_consistency"}
    assert out.extras["loss_consistency"] >= 0
    torch.testing.assert_close(
        out.loss, out.extras["loss_bsd"] + 7.0 * out.extras["loss_consistency"]
    )
    assert out.state["probs"].shape == (8, K)
    assert torch.allclose(out.state["probs"].sum(-1), torch.ones(8))
    assert set(m.state_dict()) == {"targets", "counts"}


def test_loss_and_gradient_on_logits_identity_model():
    """With an identity "model" the views are the logits: check the whole loss and its
    gradients against the closed forms (BSD: softmax - target; KL: softmax(s) - p_weak)."""
    torch.manual_seed(4)
    n, b, lam_c, tau = 12, 6, 3.0, 0.8
    labels = torch.randint(0, K, (n,))
    m = setup(BSDPlus(lambda_c=lam_c, tau=tau, cutmix_prob=0.0, store_dtype="float32"), labels)
    idx = torch.randperm(n)[:b]
    views = {v: torch.randn(b, 1, 1, K, requires_grad=True) for v in m.views}
    out = m.training_step(nn.Flatten(), Batch(idx, labels[idx], views), 0)
    weak = views["weak"].detach().reshape(b, K).double()
    s1, s2 = (views[v].detach().reshape(b, K).double() for v in ("strong_1", "strong_2"))
    p = torch.softmax(weak, -1)
    target = F.one_hot(labels[idx], K).double()  # prior, c > 0, eps = 0: sharpened = one-hot
    bsd = -(target * torch.log_softmax(weak, -1)).sum(-1).mean()
    cons = (kl64(p, torch.softmax(s1, -1)).mean() + kl64(p, torch.softmax(s2, -1)).mean()) / 2
    assert torch.allclose(out.loss.double(), bsd + lam_c * cons, rtol=1e-5)
    grads = torch.autograd.grad(out.loss, [views[v] for v in m.views])
    assert torch.allclose(grads[0].reshape(b, K).double(), (p - target) / b, atol=1e-6)
    for s, g in zip((s1, s2), grads[1:], strict=True):
        expect = lam_c / 2 * (torch.softmax(s, -1) - p) / b
        assert torch.allclose(g.reshape(b, K).double(), expect, atol=1e-6)


@pytest.mark.parametrize("joint_forward", [False, True])
def test_lambda_zero_is_bsd(joint_forward):
    torch.manual_seed(5)
    n = 16
    labels = torch.randint(0, K, (n,))
    kw = {"gamma": 0.9, "c": 20.0, "tau": 0.8, "store_dtype": "float32"}
    plus = setup(BSDPlus(lambda_c=0.0, joint_forward=joint_forward, cutmix_prob=1.0, **kw), labels)
    bsd = setup(BSD(**kw), labels)
    model = mlp()
    for _ in range(3):
        idx = torch.randperm(n)[:8]
        batch = tiny_batch(idx, labels, views=plus.views)
        out_p = plus.training_step(model, batch, 0)
        out_b = bsd.training_step(model, batch, 0)
        g_p = torch.autograd.grad(out_p.loss, list(model.parameters()))
        g_b = torch.autograd.grad(out_b.loss, list(model.parameters()))
        if joint_forward:  # a batch of another shape: equal up to float rounding
            torch.testing.assert_close(out_p.loss, out_b.loss, rtol=1e-6, atol=1e-7)
            for a, c in zip(g_p, g_b, strict=True):
                torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(out_p.loss, out_b.loss)
            for a, c in zip(g_p, g_b, strict=True):
                assert torch.equal(a, c)
        plus.after_step(batch, out_p, 0)
        bsd.after_step(batch, out_b, 0)
        torch.testing.assert_close(plus.targets, bsd.targets, rtol=0, atol=1e-6)
        torch.testing.assert_close(plus.counts, bsd.counts)


def test_joint_and_separate_forward_agree_without_batchnorm():
    labels = torch.randint(0, K, (16,), generator=torch.Generator().manual_seed(6))
    idx = torch.arange(10)
    results = {}
    for model_fn in (mlp, bn_net):
        for joint in (True, False):
            torch.manual_seed(6)
            model = model_fn()
            m = setup(BSDPlus(lambda_c=7.0, joint_forward=joint, cutmix_prob=1.0), labels)
            batch = tiny_batch(idx, labels, views=m.views)  # same seed: same views and CutMix draws
            out = m.training_step(model, batch, 0)
            grads = torch.autograd.grad(out.loss, list(model.parameters()))
            results[(model_fn.__name__, joint)] = (out.loss.detach(), grads, out.state["probs"])
    joint, sep = results[("mlp", True)], results[("mlp", False)]
    torch.testing.assert_close(joint[0], sep[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(joint[1], sep[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(joint[2], sep[2], rtol=1e-5, atol=1e-6)
    # with BatchNorm the shared batch statistics change the weak prediction (documented)
    bn_joint, bn_sep = results[("bn_net", True)], results[("bn_net", False)]
    assert not torch.allclose(bn_joint[2], bn_sep[2], atol=1e-4)


def test_update_uses_weak_prediction_of_the_step():
    torch.manual_seed(7)
    n, gamma, c = 10, 0.8, 4.0
    labels = torch.randint(0, K, (n,))
    m = setup(BSDPlus(gamma=gamma, c=c, store_dtype="float32", cutmix_prob=1.0), labels)
    model = mlp()
    idx = torch.tensor([1, 4, 7, 8])
    batch = tiny_batch(idx, labels, views=m.views)
    out = m.training_step(model, batch, 0)
    m.after_step(batch, out, 0)
    with torch.no_grad():
        p = torch.softmax(model(batch.views["weak"]).double(), -1)
    alpha = F.one_hot(labels, K).double() * c
    alpha[idx] = gamma * alpha[idx] + p
    assert torch.allclose(m.soft_targets().double(), alpha / alpha.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(m.counts[idx], torch.full((4,), gamma * c + 1))


def test_resume_with_rng_state_is_identical():
    torch.manual_seed(8)
    n = 16
    labels = torch.randint(0, K, (n,))
    batches = [tiny_batch(torch.randperm(n)[:8], labels, views=VIEWS) for _ in range(3)]

    def fresh(seed):
        torch.manual_seed(seed)
        model = bn_net()
        method = setup(BSDPlus(gamma=0.8, c=5.0, cutmix_prob=0.5), labels)
        return model, method, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def steps(model, method, opt, bs):
        for batch in bs:
            out = method.training_step(model, batch, 0)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            method.after_step(batch, out, 0)

    model_a, method_a, opt_a = fresh(0)
    torch.manual_seed(100)
    steps(model_a, method_a, opt_a, batches)

    model_b, method_b, opt_b = fresh(0)
    torch.manual_seed(100)
    steps(model_b, method_b, opt_b, batches[:2])
    state = {"model": model_b.state_dict(), "method": method_b.state_dict()}
    ckpt = roundtrip({**state, "optimizer": opt_b.state_dict(), "rng": torch.get_rng_state()})
    model_c, method_c, opt_c = fresh(5)
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    steps(model_c, method_c, opt_c, batches[2:])
    for pa, pc in zip(model_a.state_dict().values(), model_c.state_dict().values(), strict=True):
        assert torch.equal(pa, pc)
    assert torch.equal(method_a.targets, method_c.targets)
    assert torch.equal(method_a.counts, method_c.counts)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lambda_c": -1.0},
        {"num_strong": 0},
        {"num_strong": 1.5},
        {"kl_direction": "both"},
        {"cutmix_prob": 1.5},
        {"cutmix_alpha": 0.0},
        {"gamma": 2.0},
    ],
)
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        BSDPlus(**kwargs)


# ------------------------------------------------------------------------------ config
def compose_method(*overrides: str):
    return compose_config(*overrides).method


@pytest.mark.parametrize(
    ("noise", "lambda_c"),
    [("sym20", 4.0), ("sym50", 7.0), ("sym80", 14.0), ("asym10", 2.0), ("asym40", 2.0)],
)
def test_config_paper_values_for_bsdplus(noise, lambda_c):
    cfg = compose_method("method=bsdplus", f"noise={noise}")
    assert (cfg.gamma, cfg.c, cfg.eps, cfg.tau, cfg.num_strong) == (0.95, 1000.0, 0.0, 0.8, 2)
    assert cfg.lambda_c == lambda_c


def test_config_cli_override_wins_and_instantiates():
    cfg = compose_method("method=bsdplus", "noise=sym80", "method.lambda_c=3.5")
    assert cfg.lambda_c == 3.5 and cfg.tau == 0.8
    method = instantiate({k: v for k, v in cfg.items() if k != "name"})
    assert isinstance(method, BSDPlus) and method.lambda_c == 3.5
    assert method.kl_direction == cfg.kl_direction and method.detach_weak is True
