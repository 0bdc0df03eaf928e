"""BSD with CutMix / CutOut on half of each mini-batch (paper Section 4.2.4, Table 5).

Expected values are computed here by hand from the paper's equations (Eq. 2 prior, Eq. 5
update, CutMix / CutOut definitions), never taken from the code under test; the random draws
(box, permutation, centres) are read from ``StepOutput.state`` and checked against the
images the model actually received.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_ctx
from torch import nn

from noisybench.augment import cutout
from noisybench.errors import UserError
from noisybench.method import Batch
from noisybench.methods.bsd import BSD

CONF = Path(__file__).resolve().parents[1] / "conf"
N, K = 12, 4
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 2, 1, 0])


class Recorder(nn.Module):
    """A small linear classifier that keeps the last input it was given."""

    def __init__(self, c: int, h: int, w: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(c * h * w, K)
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.fc(x.flatten(1))


def make(mix_half=None, c=10.0, eps=0.5, gamma=0.9, tau=1.0, **kw) -> BSD:
    method = BSD(gamma=gamma, c=c, eps=eps, tau=tau, store_dtype="float32", mix_half=mix_half, **kw)
    method.setup(tiny_ctx(LABELS, K))
    return method


def prior(c: float, eps: float) -> torch.Tensor:
    """Eq. 2 by hand: alpha0 = c at the given label, eps elsewhere, normalised."""
    alpha = torch.full((N, K), eps, dtype=torch.float64)
    for i, label in enumerate(LABELS.tolist()):
        alpha[i, label] = c
    return alpha / alpha.sum(dim=1, keepdim=True)


def make_batch(idx: list[int], h: int = 6, w: int = 6, c: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    # Values far from 0, so that a filled (zero) pixel cannot be mistaken for an original one.
    weak = torch.randn(len(idx), c, h, w, generator=g) + 5.0
    t = torch.tensor(idx)
    return Batch(idx=t, target=LABELS[t], views={"weak": weak})


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(target.double() * logp).sum(dim=-1).mean()


# ------------------------------------------------------------------ mix_half = null


def test_null_is_plain_bsd_by_hand_and_bit_identical_to_default():
    batch = make_batch([3, 7, 1, 10, 5, 0])
    ref, m = make(), make(mix_half=None, cutmix_alpha=0.3, cutout_size=0.25)
    plain = BSD(gamma=0.9, c=10.0, eps=0.5, store_dtype="float32")
    plain.setup(tiny_ctx(LABELS, K))
    model = Recorder(2, 6, 6)
    outs = []
    for method in (plain, ref, m):
        torch.manual_seed(3)
        out = method.training_step(model, batch, 0)
        method.after_step(batch, out, 0)
        outs.append(out)
    for out, method in zip(outs[1:], (ref, m), strict=True):
        assert torch.equal(out.loss, outs[0].loss)
        assert torch.equal(method.targets, plain.targets)
        assert torch.equal(method.counts, plain.counts)
    # The model saw the weak view unchanged; loss and Eq. 5 by hand on every row.
    assert torch.equal(model.seen, batch.views["weak"])
    y0 = prior(10.0, 0.5)
    logits = outs[2].logits.detach()
    assert outs[2].loss.item() == pytest.approx(soft_ce(logits, y0[batch.idx]).item(), rel=1e-6)
    p = torch.softmax(logits.double(), dim=-1)
    a0 = 10.0 + 3 * 0.5
    expected = (0.9 * a0 * y0[batch.idx] + p) / (0.9 * a0 + 1)
    assert torch.allclose(m.targets[batch.idx].double(), expected, atol=1e-6)
    assert torch.allclose(m.counts[batch.idx], torch.full((6,), 0.9 * a0 + 1))


# --------------------------------------------------------------- the update half


@pytest.mark.parametrize("mode", ["cutmix", "cutout"])
@pytest.mark.parametrize("idx", [[3, 7, 1, 10, 5, 0, 11, 2], [4, 9, 6, 0, 2, 8, 1]])
def test_only_the_unaugmented_half_is_updated(mode, idx):
    method = make(mode)
    batch = make_batch(idx)
    keep = len(idx) - len(idx) // 2  # 4 of 8, 4 of 7
    before_y, before_a = method.targets.clone(), method.counts.clone()
    model = Recorder(2, 6, 6)
    torch.manual_seed(1)
    out = method.training_step(model, batch, 0)
    method.after_step(batch, out, 0)
    # Distillation half: Eq. 5 by hand with the softmax of ITS OWN logits of this forward.
    upd = torch.tensor(idx[:keep])
    p = torch.softmax(out.logits.detach()[:keep].double(), dim=-1)
    a0 = before_a[upd].double()
    expected = (0.9 * a0[:, None] * before_y[upd].double() + p) / (0.9 * a0[:, None] + 1)
    assert torch.allclose(method.targets[upd].double(), expected, atol=1e-6)
    assert torch.allclose(method.counts[upd].double(), 0.9 * a0 + 1)
    # Augmented half and samples outside the batch: bit-identical to before.
    rest = torch.tensor([i for i in range(N) if i not in idx[:keep]])
    assert torch.equal(method.targets[rest], before_y[rest])
    assert torch.equal(method.counts[rest], before_a[rest])
    # The distillation half's images reached the model unchanged.
    assert torch.equal(model.seen[:keep], batch.views["weak"][:keep])


# ---------------------------------------------------------------------- CutMix


@pytest.mark.parametrize("tau", [1.0, 0.8])
def test_cutmix_images_and_targets_by_hand(tau):
    idx = [3, 7, 1, 10, 5, 0, 11, 2, 9, 4]
    batch = make_batch(idx, h=8, w=8)
    weak = batch.views["weak"]
    y0 = prior(10.0, 0.5)
    t0 = y0 ** (1.0 / tau)
    t0 = t0 / t0.sum(dim=1, keepdim=True)  # Eq. 12 by hand
    keep = 5
    nontrivial = 0
    for seed in range(6):
        method, model = make("cutmix", tau=tau), Recorder(2, 8, 8)
        torch.manual_seed(seed)
        out = method.training_step(model, batch, 0)
        perm, lam, box = out.state["mix_perm"], out.state["mix_lam"], out.state["mix_mask"]
        # perm: a permutation of the augmented positions [keep, B).
        assert sorted(perm.tolist()) == list(range(keep, 10))
        # The box is an axis-aligned rectangle; lam is the kept fraction of the area.
        rows, cols = box.any(dim=1), box.any(dim=0)
        assert torch.equal(box, rows[:, None] & cols[None, :])
        assert lam.item() == pytest.approx(1.0 - box.sum().item() / 64.0, abs=1e-7)
        for a in range(5):
            i, j = keep + a, int(perm[a])
            assert torch.equal(model.seen[keep + a], torch.where(box, weak[j], weak[i]))
            hand = lam.double() * t0[idx[i]] + (1 - lam.double()) * t0[idx[j]]
            assert torch.allclose(out.state["loss_target"][i].double(), hand, atol=1e-6)
            nontrivial += int(j != i and 0.05 < lam.item() < 0.95)
        assert torch.equal(model.seen[:keep], weak[:keep])
        target = torch.cat([t0[idx[:keep]], out.state["loss_target"][keep:].double()])
        assert out.loss.item() == pytest.approx(soft_ce(out.logits, target).item(), rel=1e-6)
    assert nontrivial >= 3  # the check above really compared two different images


def test_cutmix_one_sample_batch_is_plain():
    method, model = make("cutmix"), Recorder(2, 6, 6)
    batch = make_batch([4])
    out = method.training_step(model, batch, 0)
    assert torch.equal(model.seen, batch.views["weak"])
    assert out.extras["cutmix_lam"].item() == 1.0
    method.after_step(batch, out, 0)
    assert method.counts[4].item() == pytest.approx(0.9 * 11.5 + 1)


# ---------------------------------------------------------------------- CutOut


def _hand_box(c: int, side: int, length: int) -> set[int]:
    return {v for v in range(c - side // 2, c - side // 2 + side) if 0 <= v < length}


def test_cutout_method_zeroes_exactly_the_square():
    idx = [3, 7, 1, 10, 5, 0, 11, 2]
    batch = make_batch(idx, h=32, w=32, c=3)
    weak = batch.views["weak"]
    method, model = make("cutout"), Recorder(3, 32, 32)
    torch.manual_seed(0)
    out = method.training_step(model, batch, 0)
    cy, cx = out.state["cutout_cy"], out.state["cutout_cx"]
    assert cy.shape == (4,) and cx.shape == (4,)
    for a in range(4):
        rows, cols = _hand_box(int(cy[a]), 16, 32), _hand_box(int(cx[a]), 16, 32)
        img = model.seen[4 + a]
        for y in range(32):
            for x in range(32):
                if y in rows and x in cols:
                    assert (img[:, y, x] == 0).all()  # normalised 0: the mean colour
                else:
                    assert torch.equal(img[:, y, x], weak[4 + a, :, y, x])
    assert torch.equal(model.seen[:4], weak[:4])
    # CutOut keeps each sample's own target.
    y0 = prior(10.0, 0.5)
    assert torch.allclose(out.state["loss_target"].double(), y0[idx], atol=1e-6)


def test_cutout_function_square_sizes_and_independent_centres():
    torch.manual_seed(0)
    x = torch.randn(256, 2, 8, 12) + 5.0
    out = cutout(x, size=0.5, fill=0.0)  # 4 x 6 boxes
    areas = out.mask.sum(dim=(1, 2))
    zero = (out.images == 0).all(dim=1)
    assert torch.equal(zero, out.mask)
    outside = ~out.mask[:, None].expand_as(x)
    assert torch.equal(out.images[outside], x[outside])
    for b in range(0, 256, 17):
        rows = _hand_box(int(out.cy[b]), 4, 8)
        cols = _hand_box(int(out.cx[b]), 6, 12)
        assert areas[b].item() == len(rows) * len(cols)
        hand = torch.zeros(8, 12, dtype=torch.bool)
        hand[sorted(rows)[0] : sorted(rows)[-1] + 1, sorted(cols)[0] : sorted(cols)[-1] + 1] = True
        assert torch.equal(out.mask[b], hand)
    assert areas.max().item() == 24  # unclipped squares exist
    # Per-image centres: many distinct, covering every row.
    assert len(set(zip(out.cy.tolist(), out.cx.tolist(), strict=True))) > 50
    assert set(out.cy.tolist()) == set(range(8))
    # A quarter of 32 pixels: side 8.
    out = cutout(torch.ones(1, 1, 32, 32), size=0.25)
    assert out.mask.sum().item() == len(_hand_box(int(out.cy[0]), 8, 32)) * len(
        _hand_box(int(out.cx[0]), 8, 32)
    )


# ------------------------------------------------------------- finite, grads, resume


@pytest.mark.parametrize("mode", ["cutmix", "cutout"])
def test_finite_loss_and_gradients(mode):
    method, model = make(mode, cutmix_alpha=0.05), Recorder(2, 6, 6)
    batch = make_batch([3, 7, 1, 10, 5, 0, 11, 2])
    for seed in range(4):
        torch.manual_seed(seed)
        model.zero_grad()
        out = method.training_step(model, batch, 0)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        method.after_step(batch, out, 0)
    assert torch.isfinite(method.targets).all() and torch.isfinite(method.counts).all()


@pytest.mark.parametrize("mode", ["cutmix", "cutout"])
def test_state_dict_round_trip_then_one_step_identical(mode):
    batch = make_batch([3, 7, 1, 10, 5, 0, 11, 2])
    first, model = make(mode), Recorder(2, 6, 6)
    torch.manual_seed(0)
    out = first.training_step(model, batch, 0)
    first.after_step(batch, out, 0)
    second = make(mode)
    second.load_state_dict(first.state_dict())
    results = []
    for method in (first, second):
        m = copy.deepcopy(model)
        torch.manual_seed(5)
        out = method.training_step(m, batch, 1)
        method.after_step(batch, out, 1)
        results.append((out.loss, method.targets.clone(), method.counts.clone()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(results[0][2], make(mode).counts)  # the steps did update


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mix_half": "mixup"},
        {"mix_half": "none"},
        {"mix_half": "cutmix", "cutmix_alpha": 0.0},
        {"mix_half": "cutout", "cutout_size": 0.0},
        {"mix_half": "cutout", "cutout_size": 1.5},
    ],
)
def test_bad_options_raise_user_error(kwargs):
    with pytest.raises(UserError):
        BSD(**kwargs)


def test_table5_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base=None):
        for mode in ("cutmix", "cutout"):
            cfg = compose("config", overrides=[f"experiment=table5_{mode}"])
            assert cfg.method.name == "bsd" and cfg.method.mix_half == mode
            assert (cfg.method.gamma, cfg.method.c, cfg.method.eps, cfg.method.tau) == (
                0.9,
                500.0,
                0.0,
                1.0,
            )
            assert cfg.optim.name == "adam_onecycle" and cfg.noise.name == "none"
            assert (cfg.batch_size, cfg.epochs) == (256, 200)
        cfg = compose("config", overrides=["method=bsd"])
        assert cfg.method.mix_half is None
