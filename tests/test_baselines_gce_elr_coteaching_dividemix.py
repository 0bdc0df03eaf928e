"""GCE, ELR, Co-teaching and DivideMix against their authors' code, transcribed here.

Each reference below is written out independently of baselines/ from the public code
(AlanChou/Truncated-Loss ``TruncatedLoss.py``, an unofficial GCE implementation;
shengliu66/ELR ``loss.py``; bhanML/Co-teaching ``loss.py``/``main.py``;
LiJunnan1992/DivideMix ``Train_cifar.py``) or from the paper's
equations, and run side by side with the implementation on identical inputs.
Also: the engine's ``Method.on_epoch_start`` hook (called at every epoch that starts at
step 0, not when resuming mid-epoch; ``evaluate_train`` = eval-mode logits on the plain view).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_ctx
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from noisybench.baselines.coteaching import CoTeaching, forget_rate_at, small_loss_indices
from noisybench.baselines.dividemix import DivideMix, gmm_clean_probability, mixmatch_loss, sharpen
from noisybench.baselines.elr import EarlyLearningRegularization
from noisybench.baselines.gce import GeneralizedCrossEntropy
from sklearn.mixture import GaussianMixture
from torch import Tensor, nn

from noisybench.data.views import build_views
from noisybench.engine import Interrupted
from noisybench.method import Batch, MethodContext
from noisybench.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _ctx(n: int, k: int, noisy: Tensor | None = None, build=None) -> MethodContext:
    noisy = torch.zeros(n, dtype=torch.long) if noisy is None else noisy
    return tiny_ctx(noisy, k, epochs=10, steps_per_epoch=4, build_model=build)


class FixedLogits(nn.Module):
    """A "network" whose output for sample ``idx`` is a fixed, trainable logit row; the
    input carries the sample indices in its first pixel."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.z[x[:, 0, 0, 0].round().long()]


def _batch(idx: Tensor, target: Tensor, views=("weak",)) -> Batch:
    x = idx.float()[:, None, None, None].expand(-1, 1, 2, 2).contiguous()
    return Batch(idx=idx, target=target, views={v: x for v in views})


# ------------------------------------------------------------------------------------ GCE
def test_gce_loss_and_gradient_match_equations_6_and_7() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=gen)
    q = 0.7
    method = GeneralizedCrossEntropy(q=q)
    method.setup(_ctx(16, 10, y))
    net = FixedLogits(z.float())
    out = method.training_step(net, _batch(torch.arange(16), y), 0)
    out.loss.backward()
    # Eq. 6, by hand: softmax, then (1 - p_y^q) / q, averaged.
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    py = p[torch.arange(16), y]
    expected = ((1 - py**q) / q).mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    # Eq. 7: dL_i/dz_j = -p_y^q (delta_jy - p_j), divided by the batch size.
    grad = -(py**q)[:, None] * (F.one_hot(y, 10).double() - p) / 16
    torch.testing.assert_close(net.z.grad.double(), grad, rtol=1e-4, atol=1e-7)


def test_gce_attributes_its_reference_code_as_unofficial() -> None:
    # AlanChou/Truncated-Loss's README: "This is the unofficial PyTorch implementation".
    import noisybench.baselines.gce as gce

    text = " ".join((gce.__doc__ or "").split())
    assert "authors' code" not in text
    assert "unofficial" in text and "test accuracy" in text
    conf = (ROOT / "conf" / "method" / "gce.yaml").read_text()
    assert "authors' code" not in conf and "UNOFFICIAL" in conf


def test_truncated_gce_matches_the_code_and_prunes_on_schedule() -> None:
    gen = torch.Generator().manual_seed(1)
    n, k, q, kk = 12, 5, 0.7, 0.5
    z = torch.randn(n, k, generator=gen) * 2
    z[0] = torch.tensor([4.0, 0, 0, 0, 0])  # confidently class 0
    y = torch.randint(0, k, (n,), generator=gen)
    y[0] = 0
    method = GeneralizedCrossEntropy(q=q, truncated=True, k=kk, start_prune=4, prune_every=2)
    method.setup(_ctx(n, k, y))
    calls = []

    def evaluate_train(module: nn.Module) -> Tensor:
        calls.append(module)
        return z

    for epoch in (0, 1, 2, 4):  # 1-based 1, 2, 3, 5: no pruning
        method.on_epoch_start(nn.Identity(), epoch, evaluate_train)
    assert calls == [] and bool((method.weight == 1).all())
    method.on_epoch_start(nn.Identity(), 3, evaluate_train)  # 1-based epoch 4
    # The code's update_weight: weight = (Lq(k) > Lq(p_y)), Lq(v) = (1 - v^q) / q.
    py = torch.softmax(z, 1)[torch.arange(n), y]
    lq, lqk = (1 - py**q) / q, (1 - kk**q) / q
    expected_w = (lqk > lq).float()
    assert torch.equal(method.weight, expected_w) and expected_w[0] == 1 and expected_w.sum() < n
    # The code's forward: mean((Lq - Lq(k)) * w) on a batch.
    idx = torch.tensor([0, 3, 5, 7])
    out = method.training_step(FixedLogits(z), _batch(idx, y[idx]), 5)
    assert float(out.loss.detach()) == pytest.approx(
        float(((lq[idx] - lqk) * expected_w[idx]).mean())
    )


# ------------------------------------------------------------------------------------ ELR
def test_elr_matches_the_code_over_steps() -> None:
    gen = torch.Generator().manual_seed(2)
    n, k, beta, lam = 8, 10, 0.7, 3.0
    y = torch.randint(0, k, (n,), generator=gen)
    z0 = torch.randn(n, k, generator=gen) * 4
    z0[1, 3] = 30.0  # saturated: the clamp at 1 - 1e-4 is active for this sample
    method = EarlyLearningRegularization(beta=beta, lam=lam)
    method.setup(_ctx(n, k, y))
    net = FixedLogits(z0)
    ref_z = z0.clone().requires_grad_(True)
    ref_target = torch.zeros(n, k)  # the code's self.target
    for idx in (torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5]), torch.tensor([1, 2, 6, 7])):
        # Transcription of elr_loss.forward (ELR/model/loss.py).
        output = ref_z[idx]
        y_pred = torch.clamp(F.softmax(output, dim=1), 1e-4, 1.0 - 1e-4)
        y_pred_ = y_pred.data.detach()
        ref_target[idx] = beta * ref_target[idx] + (1 - beta) * (
            y_pred_ / y_pred_.sum(dim=1, keepdim=True)
        )
        ce = F.cross_entropy(output, y[idx])
        elr_reg = (1 - (ref_target[idx] * y_pred).sum(dim=1)).log().mean()
        ref_loss = ce + lam * elr_reg
        ref_z.grad = None
        ref_loss.backward()

        net.z.grad = None
        out = method.training_step(net, _batch(idx, y[idx]), 0)
        out.loss.backward()
        assert float(out.loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6)
        torch.testing.assert_close(net.z.grad, ref_z.grad)
        torch.testing.assert_close(method.target, ref_target)
        with torch.no_grad():  # the same SGD step on both, so later steps see new logits
            net.z -= 0.5 * net.z.grad
            ref_z -= 0.5 * ref_z.grad


# ------------------------------------------------------------------------------------ Co-teaching
def _code_kept_per_epoch(tau: float, n_epoch: int, batch: int, t_k: int = 10, c: float = 1.0):
    """bhanML/Co-teaching main.py, written out: the rate schedule and its training loop
    ``for epoch in range(1, n_epoch)`` with loss.py's ``int((1 - forget_rate) * B)``."""
    rate_schedule = np.ones(n_epoch) * tau
    rate_schedule[:t_k] = np.linspace(0, tau**c, t_k)
    return [int((1 - rate_schedule[epoch]) * batch) for epoch in range(1, n_epoch)]


def test_coteaching_kept_counts_follow_the_codes_training_loop() -> None:
    # By hand: tau 0.5, T_k 10: the code's first training epoch forgets 0.5/9 = 0.0556, so it
    # keeps int(0.9444 * 128) = 120 of 128 (the earlier reading kept all 128).
    method = CoTeaching(forget_rate=0.5, num_gradual=10)
    assert method.kept(0, 128) == 120
    assert method.kept(8, 128) == 64 and method.kept(9, 128) == 64  # tau from epoch T_k - 2
    for tau in (0.2, 0.45, 0.5, 0.8):
        for c in (1.0, 2.0):
            method = CoTeaching(forget_rate=tau, num_gradual=10, exponent=c)
            ours = [method.kept(e, 128) for e in range(199)]  # the code's 199 training epochs
            assert ours == _code_kept_per_epoch(tau, 200, 128, 10, c), (tau, c)
    # The earlier reading survives as code_epoch0: linspace read at the 0-based epoch.
    old = CoTeaching(forget_rate=0.5, num_gradual=10, schedule="code_epoch0")
    assert [old.kept(e, 128) for e in range(3)] == [128, 120, 113]


def test_forget_rate_schedules_by_hand() -> None:
    # code_epoch0 (the former reading): np.linspace(0, 0.5 ** 1, 10)[e], then 0.5.
    code = [forget_rate_at(e, 0.5, 10, 1.0, "code_epoch0") for e in range(12)]
    assert code[0] == 0.0 and code[3] == pytest.approx(0.5 * 3 / 9) and code[9] == 0.5
    assert code[10] == code[11] == 0.5
    np.testing.assert_allclose(code[:10], np.linspace(0, 0.5, 10))
    # code: the same schedule one epoch earlier (the code's loop starts at epoch 1).
    code = [forget_rate_at(e, 0.5, 10, 1.0, "code") for e in range(12)]
    assert code[0] == pytest.approx(0.5 / 9) and code[8] == 0.5 and code[11] == 0.5
    # Exponent 2: linspace(0, tau^2, T_k) during the ramp, tau afterwards (the code).
    assert forget_rate_at(8, 0.5, 10, 2.0, "code") == pytest.approx(0.25)
    assert forget_rate_at(9, 0.5, 10, 2.0, "code") == 0.5
    # The paper: tau * min(e / T_k, 1).
    assert forget_rate_at(5, 0.5, 10, 1.0, "paper") == pytest.approx(0.25)
    assert forget_rate_at(10, 0.5, 10, 1.0, "paper") == 0.5


def test_coteaching_drop_last_reaches_the_loader() -> None:
    from noisybench.build import build
    from noisybench.config import compose as compose_cfg

    base = ["experiment=quickstart", "method=coteaching", "batch_size=128", "logger=[]"]
    base += ["dataset.reader.test_size=1297", "progress=false", "cpu_threads=1"]  # 500 images
    # The code's DataLoader(drop_last=True): 500 // 128 = 3 steps instead of ceil = 4
    # (CIFAR-10: 390 instead of 391).
    assert len(build(compose_cfg([*base, "method.drop_last=true"])).source) == 3
    assert len(build(compose_cfg(base)).source) == 4


def test_small_loss_selection_and_cross_update() -> None:
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    assert sorted(small_loss_indices(losses, 3).tolist()) == [1, 3, 5]
    # Two fixed networks; epoch 9 of the code schedule with tau = 0.5: keep int(0.5 * 6) = 3.
    k = 4
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    z1 = torch.zeros(6, k)
    z2 = torch.zeros(6, k)
    z1[torch.arange(6), y] = torch.tensor([5.0, 4.0, -1.0, 3.0, -2.0, 0.0])  # small loss: 0,1,3
    z2[torch.arange(6), y] = torch.tensor([-3.0, 2.0, 6.0, -1.0, 4.0, 1.0])  # small loss: 2,4,1
    method = CoTeaching(forget_rate=0.5, num_gradual=10)
    method.peer = nn.ModuleList([FixedLogits(z2)])
    out = method.training_step(FixedLogits(z1), _batch(torch.arange(6), y), 9)
    ce1 = F.cross_entropy(z1, y, reduction="none")
    ce2 = F.cross_entropy(z2, y, reduction="none")
    expected = ce1[[1, 2, 4]].mean() + ce2[[0, 1, 3]].mean()  # each on the other's choice
    assert float(out.loss.detach()) == pytest.approx(float(expected))
    method.code_double_mean = True  # the code: sum(mean) / num_remember
    out = method.training_step(FixedLogits(z1), _batch(torch.arange(6), y), 9)
    assert float(out.loss.detach()) == pytest.approx(float(expected) / 3)


# ------------------------------------------------------------------------------------ DivideMix
def _reference_eval_train(logits: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """DivideMix's eval_train, written out: per-sample CE, min-max normalisation, a
    2-component GMM (max_iter 10, tol 1e-2, reg_covar 5e-4), posterior of the low-mean one."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    losses = -logp[np.arange(len(labels)), labels]
    losses = (losses - losses.min()) / (losses.max() - losses.min())
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed)
    gmm.fit(losses.reshape(-1, 1))
    return gmm.predict_proba(losses.reshape(-1, 1))[:, gmm.means_.argmin()]


def test_dividemix_division_matches_sklearn_called_directly() -> None:
    rng = np.random.default_rng(3)
    n, k = 200, 10
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), labels] += np.where(np.arange(n) < 120, 6.0, -2.0)  # 120 fit, 80 not
    logits2 = logits[::-1].copy()
    method = DivideMix(warm_up=2, gmm_seed=7)
    method.setup(_ctx(n, k, torch.as_tensor(labels), build=lambda: nn.Linear(1, 1)))
    outputs = {id(method.peer[0]): torch.as_tensor(logits2)}

    def evaluate_train(module: nn.Module) -> Tensor:
        return outputs.get(id(module), torch.as_tensor(logits))

    method.on_epoch_start(nn.Identity(), 1, evaluate_train)  # warm-up: no division
    assert bool((method.prob == 1).all())
    method.on_epoch_start(nn.Identity(), 2, evaluate_train)
    expected_1 = _reference_eval_train(logits, labels, 7 + 2)
    expected_2 = _reference_eval_train(logits2, labels, 7 + 2)
    np.testing.assert_allclose(method.prob[0].numpy(), expected_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(method.prob[1].numpy(), expected_2, rtol=1e-5, atol=1e-6)
    clean = method.prob[0] > 0.5
    assert bool(clean[:120].all()) and not bool(clean[120:].any())
    # A fixed loss vector straight into the GMM, against sklearn called directly.
    losses = np.concatenate([rng.uniform(0, 0.2, 60), rng.uniform(0.7, 1.0, 40)])
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    gmm.fit(losses.reshape(-1, 1))
    direct = gmm.predict_proba(losses.reshape(-1, 1))[:, gmm.means_.argmin()]
    np.testing.assert_allclose(gmm_clean_probability(losses, random_state=0), direct)


def test_dividemix_loss_history_averages_the_last_epochs() -> None:
    n, k = 50, 3
    labels = np.zeros(n, dtype=np.int64)
    method = DivideMix(warm_up=0, loss_history=2, gmm_seed=0)
    method.setup(_ctx(n, k, torch.as_tensor(labels), build=lambda: nn.Linear(1, 1)))
    rng = np.random.default_rng(4)
    epochs = [rng.normal(size=(n, k)).astype(np.float32) * 3 for _ in range(3)]
    for e, z in enumerate(epochs):
        method.on_epoch_start(nn.Identity(), e, lambda module, z=z: torch.as_tensor(z))

    def norm(z: np.ndarray) -> np.ndarray:
        loss = np.log(np.exp(z).sum(1)) - z[:, 0]
        return (loss - loss.min()) / (loss.max() - loss.min())

    mean_last_two = (norm(epochs[1]) + norm(epochs[2])) / 2
    expected = gmm_clean_probability(mean_last_two, random_state=2)
    np.testing.assert_allclose(method.prob[0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_sharpen_and_mixmatch_loss_against_the_code() -> None:
    p = torch.tensor([[0.6, 0.4]])
    torch.testing.assert_close(sharpen(p, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))
    gen = torch.Generator().manual_seed(5)
    rows, k, n_x = 12, 5, 4
    logits = torch.randn(rows, k, generator=gen)
    targets = torch.softmax(torch.randn(rows, k, generator=gen), 1)
    # The code's SemiLoss + penalty with labelled rows first (logits_x = logits[:2B]).
    lx_ref = -torch.mean(torch.sum(F.log_softmax(logits[:n_x], dim=1) * targets[:n_x], dim=1))
    lu_ref = torch.mean((torch.softmax(logits[n_x:], dim=1) - targets[n_x:]) ** 2)
    prior = torch.ones(k) / k
    pen_ref = torch.sum(prior * torch.log(prior / torch.softmax(logits, dim=1).mean(0)))
    # The same rows shuffled, labelled ones marked by a mask.
    order = torch.randperm(rows, generator=gen)
    mask = (torch.arange(rows) < n_x)[order]
    lx, lu, pen = mixmatch_loss(logits[order], targets[order], mask)
    for got, ref in ((lx, lx_ref), (lu, lu_ref), (pen, pen_ref)):
        assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_dividemix_step_targets_follow_the_other_networks_division(monkeypatch) -> None:
    """With the mixing permutation fixed to the identity the mix changes nothing, so L_x is
    the soft CE to the refined targets and L_u the MSE to the co-guessed ones (by hand)."""
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.arange(n))
    n, k = 6, 3
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    gen = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(n, k, generator=gen), torch.randn(n, k, generator=gen)
    method = DivideMix(warm_up=0, lambda_u=1.0, rampup_length=1, loader="in_batch")
    method.setup(_ctx(n, k, y, build=lambda: FixedLogits(z2)))
    method.prob.copy_(torch.tensor([[0.1] * 6, [0.9, 0.8, 0.2, 0.7, 0.3, 0.6]]))
    method.step.fill_(100)  # ramp-up finished
    net = FixedLogits(z1)
    out = method.training_step(net, _batch(torch.arange(n), y, ("weak", "weak_2")), 5)
    # Network 1 trains on network 2's division: samples 0, 1, 3, 5 labelled (w > 0.5).
    w = method.prob[1][:, None]
    p1, p2 = torch.softmax(z1, 1), torch.softmax(z2, 1)
    px = w * F.one_hot(y, k) + (1 - w) * p1  # both views identical here

    def sharp(p: Tensor) -> Tensor:
        return p**2 / (p**2).sum(1, keepdim=True)

    tx1, tu1 = sharp(px), sharp((2 * p1 + 2 * p2) / 4)
    lab = torch.tensor([True, True, False, True, False, True])
    lx1 = -(tx1[lab] * torch.log_softmax(z1[lab], 1)).sum(1).mean()
    lu1 = ((p1[~lab] - tu1[~lab]) ** 2).mean()
    pen1 = (torch.full((k,), 1 / k) * torch.log((1 / k) / p1.mean(0))).sum()
    # Network 2 trains on network 1's division: nothing labelled (w = 0.1).
    tu2 = tu1  # co-guessing is symmetric in the two networks
    lu2 = ((p2 - tu2) ** 2).mean()
    pen2 = (torch.full((k,), 1 / k) * torch.log((1 / k) / p2.mean(0))).sum()
    expected = lx1 + lu1 + pen1 + lu2 + pen2
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-3)
    assert float(out.extras["labelled"]) == pytest.approx((4 / 6 + 0) / 2)


# ------------------------------------------------------------------------------------ engine hook
def test_on_epoch_start_hook_through_the_engine(tmp_path: Path, monkeypatch) -> None:
    """Called before every epoch that starts at step 0 with eval-mode plain-view logits of
    the whole training set; not called for an epoch resumed mid-way."""
    calls: list[tuple[int, Tensor, Tensor]] = []
    original = DivideMix.on_epoch_start
    plain: dict[str, Tensor] = {}

    def spy(self, model, epoch, evaluate_train):
        before = model.training
        logits = evaluate_train(model)
        assert model.training == before  # the mode is restored
        model.eval()
        with torch.no_grad():
            direct = model(plain["x"])
        model.train(before)
        calls.append((epoch, logits, direct))
        original(self, model, epoch, evaluate_train)

    monkeypatch.setattr(DivideMix, "on_epoch_start", spy)
    overrides = [
        "experiment=quickstart",
        "epochs=2",
        "batch_size=256",
        "dataset.reader.test_size=1297",
        "progress=false",
        "logger=[]",
        "method=dividemix",
        "method.warm_up=1",
        "method.lambda_u=25",
        "method.p_threshold=0.5",
        "method.loss_history=1",
        "method.confidence_penalty=false",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = instantiate(cfg.dataset.reader)
    view = build_views(("plain",), cfg.dataset.augment, data.mean, data.std, (8, 8))["plain"]
    plain["x"] = view(data.train_images)
    threads = torch.get_num_threads()
    monkeypatch.setenv("NOISYBENCH_TEST_KILL_AT", "2:1:TERM")  # epoch 2, before step 1
    try:
        with pytest.raises(Interrupted):
            run_experiment(cfg, run_dir=tmp_path)
        assert [c[0] for c in calls] == [0, 1]
        for _, logits, direct in calls:  # eval mode, plain view, whole set in index order
            assert logits.shape == (500, 10)
            torch.testing.assert_close(logits, direct)
        monkeypatch.delenv("NOISYBENCH_TEST_KILL_AT")
        result = run_experiment(cfg, run_dir=tmp_path)  # resumes at epoch 2, step 1
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "finished"
    assert [c[0] for c in calls] == [0, 1]  # no call for the resumed epoch
    assert math.isfinite(result["history"][-1]["train/lu"])


@pytest.mark.parametrize(
    ("rate", "steps", "labelled_in_batch"),
    [(0.2, 641, 105), (0.5, 430, 70), (0.8, 219, 36), (0.9, 149, 24)],
)
def test_dividemix_loader_plans_at_a_perfect_division(rate, steps, labelled_in_batch) -> None:
    """CIFAR-10 (N = 50000), symmetric noise among all 10 classes: a share r * 9/10 of the
    labels is wrong, so a perfect division labels |L| = N (1 - 0.9 r). The authors' train()
    loops over the labelled loader (B = 64, no drop_last): ceil(|L| / 64) steps, 64 labelled
    + 64 unlabelled each (issue 21: 641 / 430 / 219 / 149); the in-batch realisation: 391
    steps of 128 with 128 |L| / N labelled (105 / 70 / 36 / 24)."""
    from noisybench.baselines.dividemix import in_batch_plan, reference_plan

    n = 50_000
    labelled = round(n * (1 - 0.9 * rate))
    ref = reference_plan(labelled, n, 64)
    assert ref.steps == steps == math.ceil(labelled / 64)
    assert round(ref.labelled_per_step) == 64
    ours = in_batch_plan(labelled, n, 128)
    assert ours.steps == 391
    assert round(ours.labelled_per_step) == labelled_in_batch
    if rate == 0.9:  # the code sees 149 * 64 = 9536 of the 40500 unlabelled samples: 23.5 %
        assert ref.unlabelled_coverage == pytest.approx(0.2355, abs=5e-4)
        assert ours.unlabelled_coverage == 1.0
