"""Temporal Ensembling (baselines/te.py) against hand computations of Laine & Aila (2017),
Algorithm 2: the bias-corrected ensemble, the ramp-up, the consistency term, resuming."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from conftest import roundtrip, tiny_ctx
from noisybench.baselines.te import TemporalEnsembling, rampup_weight
from torch import nn

from noisybench.errors import UserError
from noisybench.method import Batch, MethodContext

N, K = 4, 3


def context(n: int = N, k: int = K) -> MethodContext:
    return tiny_ctx(torch.tensor([0, 1, 2, 0])[:n], k, epochs=10)


def index_batch(idx: list[int], n: int = N) -> Batch:
    """Each image is the one-hot code of its sample index, so a bias-free Linear(n, K) maps
    sample i to the logits W[:, i] that the test sets."""
    idx_t = torch.tensor(idx)
    images = torch.eye(n)[idx_t].view(len(idx), n, 1, 1)
    labels = torch.tensor([0, 1, 2, 0])[idx_t]
    return Batch(idx_t, labels, {"weak": images})


class IndexModel(nn.Module):
    def __init__(self, n: int = N, k: int = K) -> None:
        super().__init__()
        self.lin = nn.Linear(n, k, bias=False)

    def set_logits(self, logits: torch.Tensor) -> None:
        """``logits``: (n, K), row i = the logits of sample i."""
        with torch.no_grad():
            self.lin.weight.copy_(logits.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def run_epoch(method: TemporalEnsembling, model: nn.Module, epoch: int, idx=(0, 1, 2, 3)) -> None:
    batch = index_batch(list(idx))
    out = method.training_step(model, batch, epoch)
    method.after_step(batch, out, epoch)
    method.on_epoch_end(epoch)


def softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    e = logits.double().exp()
    return (e / e.sum(1, keepdim=True)).float()


# ----------------------------------------------------------------------------- ensemble


def test_alpha_zero_target_is_the_last_epoch_prediction() -> None:
    torch.manual_seed(0)
    method, model = TemporalEnsembling(alpha=0.0), IndexModel()
    method.setup(context())
    for epoch in range(3):
        logits = torch.randn(N, K)
        model.set_logits(logits)
        run_epoch(method, model, epoch)
        torch.testing.assert_close(method.soft_targets(), softmax_rows(logits))


def test_bias_correction_with_constant_predictions_gives_that_constant() -> None:
    # Z after t+1 epochs of a constant p is (1 - a^(t+1)) p; the corrected target is p.
    torch.manual_seed(1)
    method, model = TemporalEnsembling(alpha=0.6), IndexModel()
    method.setup(context())
    logits = torch.randn(N, K)
    model.set_logits(logits)
    p = softmax_rows(logits)
    for epoch, raw_factor in enumerate([0.4, 0.64, 0.784]):  # 1 - 0.6, 1 - 0.36, 1 - 0.216
        run_epoch(method, model, epoch)
        torch.testing.assert_close(method.ensemble, raw_factor * p)
        torch.testing.assert_close(method.soft_targets(), p)


def test_bias_corrected_target_is_normalised_weighted_average() -> None:
    # a = 0.6. After 2 epochs: Z = 0.24 p0 + 0.4 p1, 1 - a^2 = 0.64 -> 0.375 p0 + 0.625 p1.
    # After 3 epochs: Z = 0.144 p0 + 0.24 p1 + 0.4 p2, 1 - a^3 = 0.784.
    torch.manual_seed(2)
    method, model = TemporalEnsembling(alpha=0.6), IndexModel()
    method.setup(context())
    ps = []
    for epoch in range(3):
        logits = torch.randn(N, K) * 2
        model.set_logits(logits)
        ps.append(softmax_rows(logits))
        run_epoch(method, model, epoch)
        if epoch == 1:
            torch.testing.assert_close(method.soft_targets(), 0.375 * ps[0] + 0.625 * ps[1])
    expected = (0.144 * ps[0] + 0.24 * ps[1] + 0.4 * ps[2]) / 0.784
    torch.testing.assert_close(method.soft_targets(), expected)
    torch.testing.assert_close(method.soft_targets().sum(1), torch.ones(N))


def test_unseen_samples_keep_their_ensemble_and_count() -> None:
    torch.manual_seed(3)
    method, model = TemporalEnsembling(alpha=0.6), IndexModel()
    method.setup(context())
    logits0 = torch.randn(N, K)
    model.set_logits(logits0)
    run_epoch(method, model, 0, idx=(0, 1, 2))  # sample 3 never seen
    assert method.updates.tolist() == [1, 1, 1, 0]
    torch.testing.assert_close(method.soft_targets()[3], torch.full((K,), 1 / K))
    model.set_logits(torch.randn(N, K))
    run_epoch(method, model, 1, idx=(1, 2, 3))  # sample 0 not seen in epoch 1
    assert method.updates.tolist() == [1, 2, 2, 1]
    torch.testing.assert_close(method.soft_targets()[0], softmax_rows(logits0)[0])
    assert not method.seen.any() and method.epoch_pred.abs().sum() == 0


# ----------------------------------------------------------------------------- weights, loss


def test_rampup_weight() -> None:
    assert rampup_weight(0, 30.0, 100) == 0.0  # the first epoch is forced to 0
    assert rampup_weight(1, 30.0, 100) == pytest.approx(30.0 * math.exp(-5 * 0.99**2))
    assert rampup_weight(50, 30.0, 100) == pytest.approx(30.0 * math.exp(-1.25))
    assert rampup_weight(100, 30.0, 100) == 30.0
    assert rampup_weight(250, 30.0, 100) == 30.0
    assert rampup_weight(0, 30.0, 0) == 0.0 and rampup_weight(1, 30.0, 0) == 30.0
    weights = [rampup_weight(t, 1.0, 100) for t in range(101)]
    assert all(b > a for a, b in itertools.pairwise(weights))


def hand_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_p[torch.arange(len(target)), target].mean()


def test_loss_is_ce_plus_weight_times_mean_over_batch_and_classes() -> None:
    torch.manual_seed(4)
    method, model = TemporalEnsembling(alpha=0.6, w_max=7.0, rampup_epochs=5), IndexModel()
    method.setup(context())
    logits0 = torch.randn(N, K)
    model.set_logits(logits0)
    run_epoch(method, model, 0)
    target = softmax_rows(logits0)  # one epoch: corrected ensemble = that epoch's prediction

    logits1 = torch.randn(N, K)
    model.set_logits(logits1)
    batch = index_batch([2, 0, 3])
    p = softmax_rows(logits1)[[2, 0, 3]]
    sq_sum = sum(
        (p[i, k].item() - target[[2, 0, 3]][i, k].item()) ** 2 for i in range(3) for k in range(K)
    )
    consistency = sq_sum / (3 * K)
    ce = hand_ce(logits1[[2, 0, 3]], batch.target).item()
    for epoch, w in [(0, 0.0), (5, 7.0), (9, 7.0), (2, 7.0 * math.exp(-5 * 0.6**2))]:
        out = method.training_step(model, batch, epoch)
        assert out.loss.item() == pytest.approx(ce + w * consistency, rel=1e-5)
        assert out.extras["consistency"].item() == pytest.approx(consistency, rel=1e-5)


def test_samples_without_targets_count_zero_in_the_consistency_mean() -> None:
    torch.manual_seed(5)
    method, model = TemporalEnsembling(alpha=0.6, w_max=1.0, rampup_epochs=0), IndexModel()
    method.setup(context())
    logits0 = torch.randn(N, K)
    model.set_logits(logits0)
    run_epoch(method, model, 0, idx=(0,))  # only sample 0 gets a target
    batch = index_batch([0, 1])
    out = method.training_step(model, batch, 1)
    p = softmax_rows(logits0)
    # Same model: sample 0's prediction equals its target -> 0; sample 1 has no target -> 0.
    assert out.extras["consistency"].item() == pytest.approx(0.0, abs=1e-7)
    model.set_logits(torch.zeros(N, K))  # uniform prediction
    out = method.training_step(model, batch, 1)
    expected = ((torch.full((K,), 1 / K) - p[0]) ** 2).sum().item() / (2 * K)
    assert out.extras["consistency"].item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- resume


def test_state_dict_round_trip_mid_epoch_gives_identical_next_step() -> None:
    torch.manual_seed(6)
    n = 8
    labels = torch.randint(0, K, (n,))
    ctx = MethodContext(n, K, labels, epochs=4, steps_per_epoch=2, device=torch.device("cpu"))
    images = torch.randn(n, 2, 3, 3)

    def batch(idx: list[int]) -> Batch:
        i = torch.tensor(idx)
        return Batch(i, labels[i], {"weak": images[i]})

    method = TemporalEnsembling(alpha=0.6, w_max=5.0, rampup_epochs=2)
    method.setup(ctx)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, K))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    halves = [[3, 0, 6, 1], [2, 7, 4, 5]]

    def step(m: TemporalEnsembling, net: nn.Module, o: torch.optim.Optimizer, idx, epoch):
        b = batch(idx)
        out = m.training_step(net, b, epoch)
        o.zero_grad()
        out.loss.backward()
        o.step()
        m.after_step(b, out, epoch)
        return out.loss.detach()

    for idx in halves:
        step(method, model, opt, idx, 0)
    method.on_epoch_end(0)
    step(method, model, opt, halves[0], 1)  # stop mid-epoch 1

    ckpt = roundtrip(
        {"method": method.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}
    )
    assert {"ensemble", "epoch_pred", "seen", "updates"} <= set(ckpt["method"])

    resumed = TemporalEnsembling(alpha=0.6, w_max=5.0, rampup_epochs=2)
    resumed.setup(ctx)
    resumed.load_state_dict(ckpt["method"])
    model2 = copy.deepcopy(model)
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5)
    opt2.load_state_dict(ckpt["opt"])

    loss_a = step(method, model, opt, halves[1], 1)
    loss_b = step(resumed, model2, opt2, halves[1], 1)
    assert torch.equal(loss_a, loss_b)
    method.on_epoch_end(1)
    resumed.on_epoch_end(1)
    assert torch.equal(method.ensemble, resumed.ensemble)
    assert torch.equal(method.updates, resumed.updates)
    assert method.updates.tolist() == [2] * n
    next_a = step(method, model, opt, halves[0], 2)
    next_b = step(resumed, model2, opt2, halves[0], 2)
    assert torch.equal(next_a, next_b)


def test_half_precision_storage() -> None:
    torch.manual_seed(7)
    method, model = TemporalEnsembling(alpha=0.6, store_dtype="float16"), IndexModel()
    method.setup(context())
    assert method.ensemble.dtype == torch.float16
    logits = torch.randn(N, K)
    model.set_logits(logits)
    for epoch in range(2):
        run_epoch(method, model, epoch)
    torch.testing.assert_close(method.soft_targets(), softmax_rows(logits), atol=2e-3, rtol=0)


def test_rejects_bad_config() -> None:
    with pytest.raises(UserError, match="alpha"):
        TemporalEnsembling(alpha=1.0)
    with pytest.raises(UserError, match="rampup_epochs"):
        TemporalEnsembling(rampup_epochs=-1)
    with pytest.raises(UserError, match="w_max"):
        TemporalEnsembling(w_max=-3)
    with pytest.raises(UserError, match="store_dtype"):
        TemporalEnsembling(store_dtype="int8")
