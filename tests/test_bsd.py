"""BSD (noisybench.methods.bsd) against independent computations of the paper's equations.

References used here are written in the test, in float64, from the paper's definitions:
the explicit Dirichlet parameters alpha (Eq. 2, 4 with discounting), the closed form of A
(Eq. 7, 8), the EMA (Eq. 6), cross-entropy (Section 3.3) and sharpening (Eq. 12).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, roundtrip, tiny_batch, tiny_ctx, tiny_model
from hydra.utils import instantiate

from noisybench.errors import UserError
from noisybench.method import Batch, StepOutput
from noisybench.methods.bsd import BSD, discounted_update, sharpen

K = 5


def make_method(labels: torch.Tensor, **kwargs) -> BSD:
    method = BSD(**kwargs)
    method.setup(tiny_ctx(labels, K))
    return method


def alpha_prior(labels: torch.Tensor, c: float, eps: float, k: int = K) -> torch.Tensor:
    """Eq. 2 written out: alpha0_ij = c for the given label, eps otherwise (float64)."""
    alpha = torch.full((labels.numel(), k), eps, dtype=torch.float64)
    for i, lab in enumerate(labels.tolist()):
        alpha[i, lab] = c
    return alpha


def update(method: BSD, idx: torch.Tensor, probs: torch.Tensor) -> None:
    """Drive the method's Eq. 5 update with given predictions, as the engine does."""
    batch = Batch(idx=idx, target=torch.zeros_like(idx), views={})
    out = StepOutput(loss=torch.zeros(()), logits=probs, state={"probs": probs})
    method.after_step(batch, out, 0)


def random_probs(b: int, k: int = K, scale: float = 3.0) -> torch.Tensor:
    return torch.softmax(scale * torch.randn(b, k), dim=-1)


# ----------------------------------------------------------------------------- prior (Eq. 2)
def test_prior_matches_eq2_and_is_checkpointed():
    labels = torch.tensor([0, 3, 4, 3])
    m = make_method(labels, c=10.0, eps=0.5, store_dtype="float32")
    a0 = 10.0 + 4 * 0.5  # c + (K - 1) eps = 12
    expected = torch.full((4, K), 0.5 / a0)
    expected[torch.arange(4), labels] = 10.0 / a0
    assert torch.allclose(m.targets, expected, atol=1e-7)
    assert torch.allclose(m.counts, torch.full((4,), 12.0))
    sd = m.state_dict()
    assert set(sd) == {"targets", "counts"}
    assert sd["targets"].dtype == torch.float32 and sd["counts"].dtype == torch.float32
    m16 = make_method(labels, store_dtype="float16")
    assert m16.targets.dtype == torch.float16 and m16.counts.dtype == torch.float32
    assert m16.views == ("weak",)


# ------------------------------------------------------------ Eq. 5 vs explicit Dirichlet
@pytest.mark.parametrize(
    ("store_dtype", "atol"),
    # float16 stores y with ~4.9e-4 spacing near 1; renormalising on read keeps the error at a
    # few spacings (documented in bsd.py), so 2e-3. float32: rounding only.
    [("float32", 3e-6), ("float16", 2e-3)],
)
@pytest.mark.parametrize(("gamma", "c", "eps"), [(0.95, 1000.0, 0.0), (0.99, 400.0, 0.05)])
def test_eq5_matches_direct_dirichlet(store_dtype, atol, gamma, c, eps):
    torch.manual_seed(0)
    n, b = 40, 16
    labels = torch.randint(0, K, (n,))
    m = make_method(labels, gamma=gamma, c=c, eps=eps, store_dtype=store_dtype)
    alpha = alpha_prior(labels, c, eps)
    for _ in range(200):
        idx = torch.randperm(n)[:b]
        probs = random_probs(b)
        update(m, idx, probs)
        alpha[idx] = gamma * alpha[idx] + probs.double()  # Eq. 4 with discounting
    count = alpha.sum(dim=1)
    assert torch.allclose(m.counts.double(), count, rtol=1e-5)
    assert torch.allclose(m.soft_targets().double(), alpha / count[:, None], atol=atol, rtol=0)


def test_repeated_indices_equal_sequential_updates_in_batch_order():
    torch.manual_seed(1)
    labels = torch.randint(0, K, (6,))
    gamma, c = 0.8, 5.0
    m = make_method(labels, gamma=gamma, c=c, store_dtype="float32")
    alpha = alpha_prior(labels, c, 0.0)
    for _ in range(20):
        idx = torch.tensor([2, 0, 2, 5, 2, 0, 1])
        probs = random_probs(idx.numel())
        update(m, idx, probs)
        for pos, i in enumerate(idx.tolist()):  # one Eq. 4 update per occurrence, in order
            alpha[i] = gamma * alpha[i] + probs[pos].double()
    count = alpha.sum(dim=1)
    assert torch.allclose(m.counts.double(), count, rtol=1e-6)
    assert torch.allclose(m.soft_targets().double(), alpha / count[:, None], atol=1e-6)


def test_repeated_indices_give_bit_identical_rows():
    """Every occurrence of a sample carries the same result, so the scattered write does not
    depend on which duplicate the device writes last (index_put_ leaves that undefined)."""
    torch.manual_seed(10)
    for _ in range(50):
        idx = torch.randint(0, 4, (12,))
        y = torch.softmax(torch.randn(4, K), -1)[idx]  # a sample's rows hold the same values
        counts = (100 * torch.rand(4) + 1)[idx]
        new_y, new_a = discounted_update(y, counts, random_probs(12), idx, 0.9)
        for i in idx.unique():
            rows = (idx == i).nonzero().flatten()
            for r in rows[1:]:
                assert torch.equal(new_y[r], new_y[rows[0]])
                assert torch.equal(new_a[r], new_a[rows[0]])


def test_float16_rows_do_not_drift():
    """With a float16 store, a one-hot-like row cannot lower its top entry by less than half a
    spacing (~2.4e-4) while the other entries grow; renormalising on read keeps the stored rows
    summing to 1 within about one float16 spacing instead of letting the excess accumulate."""
    torch.manual_seed(11)
    n, k = 64, 10
    labels = torch.randint(0, k, (n,))
    m = BSD(gamma=0.95, c=1000.0, store_dtype="float16")
    m.setup(tiny_ctx(labels, k))
    idx = torch.arange(n)
    drift = 0.0
    for _ in range(300):
        logits = 3 * torch.randn(n, k) + 4 * F.one_hot(labels, k)
        update(m, idx, torch.softmax(logits, -1))
        drift = max(drift, float((m.targets.float().sum(1) - 1).abs().max()))
    assert drift < 1e-3


# ------------------------------------------------------------------ Eq. 7 and 8 (count A)
@pytest.mark.parametrize(
    ("gamma", "c", "check_limit"),
    [(0.5, 10.0, True), (0.85, 2000.0, True), (0.95, 1000.0, True), (0.99, 400.0, False)],
)
def test_count_closed_form_and_limit(gamma, c, check_limit):
    """Eq. 7 after every update; Eq. 8 once the closed form is within 1e-4 of the limit
    (gamma = 0.99 needs ~1000 updates to get there, so only Eq. 7 is checked for it)."""
    torch.manual_seed(2)
    limit = 1 / (1 - gamma)
    steps = 100
    if check_limit:  # smallest t with |c - limit| gamma^t < 1e-5 * limit
        steps = math.ceil(math.log(1e-5 * limit / abs(c - limit)) / math.log(gamma))
    m = make_method(torch.zeros(3, dtype=torch.long), gamma=gamma, c=c)
    idx = torch.arange(3)
    for t in range(1, steps + 1):
        update(m, idx, random_probs(3))
        closed = c * gamma**t + (1 - gamma**t) / (1 - gamma)  # Eq. 7
        assert m.counts.double().sub(closed).abs().max() <= 1e-5 * closed
    if check_limit:
        assert m.counts.double().sub(limit).abs().max() <= 3e-5 * limit  # Eq. 8


# --------------------------------------------------------------- Section 3.3 special cases
def test_large_c_gives_cross_entropy_gradients():
    torch.manual_seed(3)
    n = 32
    labels = torch.randint(0, K, (n,))
    m = make_method(labels, c=1e12, gamma=0.95, tau=1.0, store_dtype="float32")
    model = tiny_model(k=K)
    for _ in range(4):  # targets stay (numerically) the given one-hot labels
        idx = torch.randperm(n)[:16]
        batch = tiny_batch(idx, labels)
        out = m.training_step(model, batch, 0)
        g_bsd = torch.autograd.grad(out.loss, list(model.parameters()))
        ce = F.cross_entropy(model(batch.views["weak"]), labels[idx])
        g_ce = torch.autograd.grad(ce, list(model.parameters()))
        assert torch.allclose(out.loss, ce, rtol=1e-6)
        for a, b in zip(g_bsd, g_ce, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
        m.after_step(batch, out, 0)
    # and a small prior does move away from cross-entropy (the comparison is sensitive)
    m_small = make_method(labels, c=2.0, gamma=0.5, store_dtype="float32")
    idx = torch.arange(16)
    update(m_small, idx, random_probs(16))
    batch = tiny_batch(idx, labels)
    out = m_small.training_step(model, batch, 0)
    assert not torch.allclose(out.loss, F.cross_entropy(model(batch.views["weak"]), labels[idx]))


@pytest.mark.parametrize(("c", "eps"), [(10.0, 0.0), (8.0, 0.5)])
def test_fixed_point_prior_gives_ema(c, eps):
    """A0 = c + (K-1) eps = 1/(1-gamma) = 10: every step is the EMA of Eq. 6."""
    torch.manual_seed(4)
    gamma = 0.9
    labels = torch.randint(0, K, (8,))
    m = make_method(labels, gamma=gamma, c=c, eps=eps, store_dtype="float32")
    ema = alpha_prior(labels, c, eps) / 10.0
    idx = torch.arange(8)
    for _ in range(30):
        probs = random_probs(8)
        update(m, idx, probs)
        ema = gamma * ema + (1 - gamma) * probs.double()  # Eq. 6
        assert torch.allclose(m.soft_targets().double(), ema, atol=1e-6)
        assert torch.allclose(m.counts, torch.full((8,), 10.0), rtol=1e-6)


def test_gamma_zero_keeps_only_last_prediction():
    torch.manual_seed(5)
    labels = torch.randint(0, K, (8,))
    m = make_method(labels, gamma=0.0, c=1000.0, store_dtype="float32")
    idx = torch.arange(8)
    for _ in range(3):
        probs = random_probs(8)
        update(m, idx, probs)
        assert torch.allclose(m.soft_targets(), probs, atol=1e-7)
        assert torch.equal(m.counts, torch.ones(8))


# ------------------------------------------------------------------- sharpening (Eq. 12)
def test_sharpening():
    torch.manual_seed(6)
    y = torch.softmax(2.0 * torch.randn(500, 7), dim=-1)
    assert torch.allclose(sharpen(y, 1.0), y, atol=1e-7)
    for tau in (0.8, 0.5, 0.2):
        s = sharpen(y, tau)
        ref = y.double() ** (1 / tau)
        ref = ref / ref.sum(dim=-1, keepdim=True)
        assert torch.allclose(s.double(), ref, atol=1e-6)
        assert torch.equal(s.argmax(dim=-1), y.argmax(dim=-1))
        ent = lambda p: -(p * p.log()).sum(dim=-1)  # noqa: E731
        assert bool((ent(s) < ent(y)).all())
    one_hot = F.one_hot(torch.tensor([1, 3]), 7).float()
    assert torch.equal(sharpen(one_hot, 0.8), one_hot)
    uniform = torch.full((2, 7), 1 / 7)
    assert torch.allclose(sharpen(uniform, 0.5), uniform)


# -------------------------------------------------------------- Algorithm 1 order and loss
@pytest.mark.parametrize("loss_scale", ["mean", "paper"])
def test_loss_uses_targets_from_before_the_step(loss_scale):
    torch.manual_seed(7)
    n, gamma, c, tau = 20, 0.7, 3.0, 0.8
    labels = torch.randint(0, K, (n,))
    m = make_method(labels, gamma=gamma, c=c, tau=tau, store_dtype="float32", loss_scale=loss_scale)
    model = tiny_model(k=K)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    alpha = alpha_prior(labels, c, 0.0)
    for _ in range(6):
        idx = torch.randperm(n)[:8]
        batch = tiny_batch(idx, labels)
        with torch.no_grad():
            logits = model(batch.views["weak"]).double()
        prev = alpha[idx] / alpha[idx].sum(dim=1, keepdim=True)  # y^{t-1}
        target = prev ** (1 / tau)
        target = target / target.sum(dim=1, keepdim=True)
        expected = -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        if loss_scale == "paper":
            expected = expected / K
        out = m.training_step(model, batch, 0)
        assert torch.allclose(out.loss.double(), expected, rtol=1e-5)
        assert torch.allclose(out.state["probs"].double(), torch.softmax(logits, -1), atol=1e-6)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.after_step(batch, out, 0)
        alpha[idx] = gamma * alpha[idx] + torch.softmax(logits, -1)  # evidence: that forward
    assert torch.allclose(m.soft_targets().double(), alpha / alpha.sum(1, keepdim=True), atol=1e-6)


def test_epoch_diagnostics_and_soft_targets():
    torch.manual_seed(8)
    n = 30
    labels = torch.randint(0, K, (n,))
    m = make_method(labels, gamma=0.9, c=4.0, store_dtype="float16")
    update(m, torch.arange(10), random_probs(10))
    y = m.soft_targets()
    assert y.dtype == torch.float32 and y.shape == (n, K)
    assert torch.allclose(y.sum(dim=1), torch.ones(n), atol=1e-6)
    stats = m.on_epoch_end(0)
    ref_y = m.targets.double() / m.targets.double().sum(1, keepdim=True)
    ref_ent = -(torch.where(ref_y > 0, ref_y * ref_y.log(), 0.0)).sum(1).mean()
    assert torch.allclose(stats["target_entropy"].double(), ref_ent, rtol=1e-4)
    mean_a = (10 * (0.9 * 4 + 1) + 20 * 4) / 30  # 10 samples updated once, 20 at the prior
    assert stats["mean_A"].item() == pytest.approx(mean_a, rel=1e-6)
    assert torch.allclose(stats["target_max"].double(), ref_y.max(1).values.mean(), rtol=1e-5)
    assert stats["store_mib"].item() == pytest.approx((n * K * 2 + n * 4) / 2**20)


# --------------------------------------------------------------------- checkpoint / resume
def run_steps(model, method, opt, batches):
    for batch in batches:
        out = method.training_step(model, batch, 0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(batch, out, 0)


@pytest.mark.parametrize("store_dtype", ["float16", "float32"])
def test_resume_from_state_dict_is_identical(store_dtype):
    torch.manual_seed(9)
    n = 24
    labels = torch.randint(0, K, (n,))
    batches = [tiny_batch(torch.randperm(n)[:8], labels) for _ in range(4)]

    def fresh(seed):
        torch.manual_seed(seed)
        model = tiny_model(k=K)
        method = make_method(labels, gamma=0.8, c=5.0, tau=0.8, store_dtype=store_dtype)
        return model, method, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)

    model_a, method_a, opt_a = fresh(0)
    run_steps(model_a, method_a, opt_a, batches)

    model_b, method_b, opt_b = fresh(0)
    run_steps(model_b, method_b, opt_b, batches[:3])
    state = {"model": model_b.state_dict(), "method": method_b.state_dict()}
    ckpt = roundtrip({**state, "optimizer": opt_b.state_dict()})
    model_c, method_c, opt_c = fresh(123)  # different init: everything must come from the file
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["optimizer"])
    run_steps(model_c, method_c, opt_c, batches[3:])

    for pa, pc in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(pa, pc)
    assert torch.equal(method_a.targets, method_c.targets)
    assert torch.equal(method_a.counts, method_c.counts)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": 1.5},
        {"gamma": -0.1},
        {"c": 0.0},
        {"eps": -1.0},
        {"tau": 0.0},
        {"store_dtype": "int8"},
        {"loss_scale": "sum"},
    ],
)
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        BSD(**kwargs)


def test_labels_out_of_range_raise_user_error():
    with pytest.raises(UserError, match="labels"):
        make_method(torch.tensor([0, K]))


# ------------------------------------------------------------------------------ config
def compose_method(*overrides: str):
    return compose_config(*overrides).method


def test_config_paper_values_for_bsd():
    clean = compose_method("method=bsd", "noise=none")
    assert (clean.gamma, clean.c, clean.eps, clean.tau) == (0.95, 1000.0, 0.0, 1.0)
    asym = compose_method("method=bsd", "noise=asym40")
    assert (asym.gamma, asym.c, asym.eps, asym.tau) == (0.9, 1000.0, 0.0, 0.8)
    sym = compose_method("method=bsd", "noise=sym80")
    assert (sym.gamma, sym.c, sym.eps, sym.tau) == (0.85, 2000.0, 0.0, 0.8)
    override = compose_method("method=bsd", "noise=sym80", "method.gamma=0.5")
    assert (override.gamma, override.c) == (0.5, 2000.0)
    kwargs = {k: v for k, v in clean.items() if k != "name"}
    method = instantiate(kwargs)
    assert isinstance(method, BSD) and method.store_dtype == clean.store_dtype
