"""OT-Filter (baselines/otfilter.py) against POT and against the authors' code.

The reference functions below are transcribed from github.com/ryl0427/Code-for-OT-Filter
(``opt.py``: ``k_barycenter``, ``label_reg``, ``label_propagation_analysis``;
``Train_CIFAR.py``: the numeric part of ``OT_Filter``, ``SemiLoss`` and the body of
``MixMatch``), NumPy and POT as the authors run them; POT (``ot.sinkhorn``,
``ot.da.sinkhorn_lpl1_mm``) is the second implementation of the solvers.
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from noisybench.baselines.otfilter import (
    OTFilter,
    OTFilterNet,
    class_barycenters,
    filter_labels,
    label_regularised_sinkhorn,
    mixmatch_loss,
    ot_assignment,
    sinkhorn,
    streams,
)
from scipy.spatial.distance import cdist

from noisybench.config import compose
from noisybench.engine import Interrupted
from noisybench.run import run_experiment

ot = pytest.importorskip("ot")  # the dev extra's second implementation


# ------------------------------------------------------------------ the authors' code (opt.py)
def authors_k_barycenter(Q: np.ndarray, k: int, lambd: float) -> np.ndarray:
    c = len(Q)
    m = len(Q[0])
    H = np.zeros((c, k))
    for i in range(k):
        point = random.randint(0, m - 1)
        for j in range(c):
            H[j, i] = Q[j, point]
    t = 1.1
    eta = 0.5
    b = np.ones(m) / m
    a1 = np.ones(k) / k
    a2 = np.ones(k) / k
    a1_former = np.zeros(k)
    H_former = np.zeros((c, k))
    convergence_a1 = pow(10, -2)
    convergence_H = pow(10, -2)
    while np.linalg.norm(H - H_former) > convergence_H:
        MHQ = cdist(H.transpose(), Q.transpose(), metric="euclidean")
        a1 = np.ones(k) / k
        a2 = np.ones(k) / k
        a1_former = np.zeros(k)
        while np.linalg.norm(a1 - a1_former) > convergence_a1:
            beta = (t + 1) / 2
            a = (1 - 1 / beta) * a1 + (1 / beta) * a2
            _result, dual = ot.sinkhorn(a, b, MHQ, lambd, verbose=False, log=True)
            alpha = dual["u"]
            alpha = (-beta) * alpha
            alpha = np.exp(alpha)
            a2_n = a2 * alpha
            if np.sum(np.isinf(a2_n)) == 1:
                a2 = np.zeros((len(a2),))
                a2[np.isinf(a2_n)] = 1
            elif np.all(a2_n == 0):
                a2 = np.ones((len(a2),)) / len(a2)
            else:
                a2 = a2_n / np.sum(a2_n)
            a1_former = a1
            a1 = (1 - 1 / beta) * a1 + (1 / beta) * a2
            t += 1
        a = a1
        T = ot.sinkhorn(a, b, MHQ, lambd, verbose=False)
        T = T.transpose()
        diag_a_reverse = np.diag(1 / a)
        H_former = H
        H = (1 - eta) * H + eta * np.dot(np.dot(Q, T), diag_a_reverse)
    return H


def authors_label_reg(
    a, b, cost_matrix, label, classes, lambd, p=0.5, epsilon=1e-6, iters=5, eta=1
):
    G = np.zeros((len(cost_matrix), len(cost_matrix[0])))
    label_matrix = np.zeros((classes, len(label)))
    for i in range(len(label)):
        label_matrix[label[i], i] = 1
    for _ in range(iters):
        C = G + cost_matrix
        result = ot.sinkhorn(a, b, C, lambd, verbose=False)
        G = np.dot(label_matrix, result)
        G = np.dot(label_matrix.transpose(), G)
        G = p * np.power(G + epsilon, p - 1) * eta
    return result


def authors_label_propagation_analysis(opt_result, label, classes):
    label_matrix = np.zeros((classes, len(label)))
    for i in range(len(label)):
        label_matrix[label[i], i] = 1
    result = np.dot(label_matrix, opt_result)
    return np.max(result, axis=0), np.argmax(result, axis=0)


def authors_ot_filter(train_feature, train_label, num_class, lambd=10.0, barycenter=None):
    """Train_CIFAR.py ``OT_Filter`` after the feature pass, barycenter_number = 1; returns the
    labelled mask. ``barycenter`` replaces ``k_barycenter`` (None: the authors' own)."""
    centre = barycenter or (lambda q: authors_k_barycenter(q, 1, lambd))
    barycenter_number = 1
    bary, barycenter_class = [], []
    for class_id in range(num_class):
        sample_feature = train_feature[np.where(train_label == class_id)]
        center = centre(sample_feature.transpose())
        barycenter_class += [class_id for i in range(barycenter_number)]
        bary += center.transpose().tolist()
    bary = np.array(bary)
    barycenter_weight = np.ones(barycenter_number * num_class) / (barycenter_number * num_class)
    train_sample_weight = np.ones(len(train_feature)) / len(train_feature)
    cost_matrix = cdist(bary, train_feature, metric="euclidean")
    opt_result = authors_label_reg(
        barycenter_weight, train_sample_weight, cost_matrix, barycenter_class, num_class, lambd
    )
    _, label_propagation = authors_label_propagation_analysis(
        opt_result, barycenter_class, num_class
    )
    em_feature = train_feature[np.where(train_label == label_propagation)]
    em_label = train_label[np.where(train_label == label_propagation)]
    em_bary, barycenter_class = [], []
    for class_id in range(num_class):
        sample_feature = em_feature[np.where(em_label == class_id)]
        center = centre(sample_feature.transpose())
        barycenter_class += [class_id for i in range(barycenter_number)]
        em_bary += center.transpose().tolist()
    em_bary = np.array(em_bary)
    cost_matrix = cdist(em_bary, train_feature, metric="euclidean")
    opt_result = authors_label_reg(
        barycenter_weight, train_sample_weight, cost_matrix, barycenter_class, num_class, lambd
    )
    _, label_propagation = authors_label_propagation_analysis(
        opt_result, barycenter_class, num_class
    )
    return label_propagation, train_label == label_propagation


def authors_first_round(train_feature, train_label, num_class, lambd=10.0):
    """The first half of ``OT_Filter`` (mean barycentres): the first OT labels."""
    bary = np.stack([train_feature[train_label == c].mean(0) for c in range(num_class)])
    cost = cdist(bary, train_feature, metric="euclidean")
    a = np.ones(num_class) / num_class
    b = np.ones(len(train_feature)) / len(train_feature)
    plan = authors_label_reg(a, b, cost, list(range(num_class)), num_class, lambd)
    return authors_label_propagation_analysis(plan, list(range(num_class)), num_class)[1], plan


# -------------------------------------------------------------------------------- fixtures
def _clusters(n: int, k: int, d: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``k`` Gaussian clusters (scale of a trained 128-d head: distances ~ 5-20)
    and given labels with a share ``noise`` relabelled uniformly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(k, d))
    clean = rng.integers(0, k, size=n)
    feats = centres[clean] + rng.normal(0.0, 1.0, size=(n, d))
    flip = rng.random(n) < noise
    given = np.where(flip, rng.integers(0, k, size=n), clean)
    return feats, given


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x)


# -------------------------------------------------------------------------------- Sinkhorn
@pytest.mark.parametrize("reg", [10.0, 1.0, 0.05])
def test_sinkhorn_equals_pot_per_problem_in_a_batch(reg: float) -> None:
    """Three problems solved in one batch equal ``ot.sinkhorn`` on each (same updates, same
    stopping iteration): relative difference <= 1e-9 (measured: ~1e-15)."""
    rng = np.random.default_rng(0)
    problems = []
    for n, scale in [(6, 1.0), (6, 5.0), (6, 20.0)]:
        a = rng.random(n) + 0.1
        b = rng.random(40) + 0.1
        problems.append((a / a.sum(), b / b.sum(), rng.random((n, 40)) * scale))
    a, b, m = (torch.stack([_t(p[i]) for p in problems]) for i in range(3))
    plans = sinkhorn(a, b, m, reg)
    for (pa, pb, pm), plan in zip(problems, plans, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ot.sinkhorn(pa, pb, pm, reg)
        np.testing.assert_allclose(plan.numpy(), ref, rtol=1e-9, atol=1e-300)


def test_sinkhorn_numerical_error_keeps_previous_scaling_as_pot() -> None:
    """A kernel that underflows to 0 (cost / reg ~ 1e4): POT keeps the previous ``u, v``
    and stops; so does the torch solver (both then return the same plan)."""
    a = np.array([0.5, 0.5])
    b = np.array([0.25, 0.25, 0.5])
    m = np.array([[0.0, 1.0, 2.0], [5e3, 6e3, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ot.sinkhorn(a, b, m, 0.1)
    np.testing.assert_allclose(sinkhorn(_t(a), _t(b), _t(m), 0.1).numpy(), ref, rtol=1e-9)


def test_label_regularised_sinkhorn_equals_authors_label_reg() -> None:
    """The code's ``label_reg`` (five rounds, eps 1e-6, reg 10) with two barycentres per class,
    transcribed: relative difference <= 1e-9 (measured ~1e-13)."""
    feats, _ = _clusters(300, 4, 16, 0.4, seed=1)
    rng = np.random.default_rng(2)
    centres = feats[rng.choice(300, 8, replace=False)]
    row_class = [0, 0, 1, 1, 2, 2, 3, 3]
    cost = cdist(centres, feats)
    a, b = np.ones(8) / 8, np.ones(300) / 300
    ref = authors_label_reg(a, b, cost, row_class, 4, 10.0)
    mine = label_regularised_sinkhorn(_t(a), _t(b), _t(cost), torch.tensor(row_class), 4, 10.0)
    np.testing.assert_allclose(mine.numpy(), ref, rtol=1e-9, atol=1e-300)
    _, ref_labels = authors_label_propagation_analysis(ref, row_class, 4)
    assert torch.equal(ot_assignment(mine, torch.tensor(row_class), 4), _t(ref_labels))


def test_label_regularised_sinkhorn_equals_pot_lpl1_mm() -> None:
    """POT's ``sinkhorn_lpl1_mm`` is the same majorisation with eps fixed at 1e-3: with that
    eps the plans agree to relative 1e-9."""
    feats, _ = _clusters(200, 3, 8, 0.0, seed=3)
    centres = feats[:6]
    row_class = np.array([0, 1, 2, 0, 1, 2])
    cost = cdist(centres, feats)
    a, b = np.ones(6) / 6, np.ones(200) / 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ot.da.sinkhorn_lpl1_mm(
            a,
            row_class,
            b,
            cost,
            10.0,
            eta=1.0,
            numItermax=5,
            numInnerItermax=1000,
            stopInnerThr=1e-9,
        )
    mine = label_regularised_sinkhorn(
        _t(a), _t(b), _t(cost), _t(row_class), 3, 10.0, eps=1e-3, rounds=5
    )
    np.testing.assert_allclose(mine.numpy(), ref, rtol=1e-9, atol=1e-300)


def test_ot_assignment_takes_the_first_maximum() -> None:
    plan = torch.tensor([[0.2, 0.1, 0.3], [0.2, 0.3, 0.1], [0.0, 0.3, 0.0]], dtype=torch.float64)
    # class sums (rows 0, 2 -> class 0; row 1 -> class 1): [0.2, 0.4, 0.3] vs [0.2, 0.3, 0.1]
    assert ot_assignment(plan, torch.tensor([0, 1, 0]), 2).tolist() == [0, 0, 0]
    assert ot_assignment(plan[:2], torch.tensor([0, 1]), 2).tolist() == [0, 1, 0]


# ------------------------------------------------------------------------------ barycentres
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_barycentres_within_the_authors_stopping_tolerance(seed: int) -> None:
    """``k_barycenter`` with one support point ends within 0.01 (its stopping threshold) of
    the class mean, which is what :func:`class_barycenters` returns (measured max: <= 0.01)."""
    feats, given = _clusters(400, 5, 12, 0.3, seed=seed)
    random.seed(seed)
    ref = np.stack([authors_k_barycenter(feats[given == c].T, 1, 10.0)[:, 0] for c in range(5)])
    mine = class_barycenters(_t(feats), _t(given), 5, torch.zeros(5, 12, dtype=torch.float64))
    dist = np.linalg.norm(mine.numpy() - ref, axis=1)
    assert dist.max() <= 0.01 + 1e-12
    means = np.stack([feats[given == c].mean(0) for c in range(5)])
    np.testing.assert_allclose(mine.numpy(), means, rtol=1e-12)


def test_barycentres_of_an_empty_class_take_the_fallback() -> None:
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    fallback = torch.full((3, 2), 7.0, dtype=torch.float64)
    out = class_barycenters(feats, torch.tensor([0, 0]), 3, fallback)
    assert out.tolist() == [[2.0, 3.0], [7.0, 7.0], [7.0, 7.0]]


# ------------------------------------------------------------------------------- the filter
@pytest.mark.parametrize(("noise", "seed"), [(0.2, 4), (0.5, 5), (0.8, 6)])
def test_filter_equals_authors_ot_filter_with_mean_barycentres(noise: float, seed: int) -> None:
    """The two OT rounds, with the class mean as barycentre (the kept deviation), equal the
    transcribed ``OT_Filter``: identical OT labels and labelled set."""
    feats, given = _clusters(600, 6, 16, noise, seed=seed)
    ref_labels, ref_mask = authors_ot_filter(
        feats, given, 6, barycenter=lambda q: q.mean(1)[:, None]
    )
    first, second = filter_labels(_t(feats), _t(given), 6)
    assert torch.equal(second, _t(ref_labels))
    assert torch.equal(second == _t(given), _t(ref_mask))
    ref_first, _ = authors_first_round(feats, given, 6)
    assert torch.equal(first, _t(ref_first))


def test_filter_against_the_authors_random_barycentres() -> None:
    """With the authors' own randomly started ``k_barycenter`` (within 0.01 of the mean), the
    labelled set differs from ours in at most 0.5 % of the samples (measured: 0 of 600 on
    these clusters)."""
    feats, given = _clusters(600, 6, 16, 0.5, seed=7)
    random.seed(7)
    _, ref_mask = authors_ot_filter(feats, given, 6)
    _, second = filter_labels(_t(feats), _t(given), 6)
    differ = int(((second == _t(given)) != _t(ref_mask)).sum())
    assert differ <= 3


def test_filter_finds_the_clean_samples_on_separated_clusters() -> None:
    """Sanity (not a transcription): on well separated clusters with 50 % symmetric noise the
    labelled set is nearly the clean set."""
    rng = np.random.default_rng(8)
    k, n = 5, 1000
    centres = rng.normal(0.0, 10.0, size=(k, 32))
    clean = rng.integers(0, k, size=n)
    feats = centres[clean] + rng.normal(0.0, 1.0, size=(n, 32))
    given = np.where(rng.random(n) < 0.5, rng.integers(0, k, size=n), clean)
    _, second = filter_labels(_t(feats), _t(given), k)
    labelled = (second == _t(given)).numpy()
    assert (labelled == (given == clean)).mean() > 0.97


# -------------------------------------------------------------------------------- MixMatch
def authors_semi_loss(outputs_x, targets_x, outputs_u, targets_u, lambda_u=25.0):
    probs_u = torch.softmax(outputs_u, dim=1)
    Lx = -torch.mean(torch.sum(F.log_softmax(outputs_x, dim=1) * targets_x, dim=1))
    Lu = torch.mean((probs_u - targets_u) ** 2)
    return Lx, Lu, lambda_u * 1.0  # linear_rampup with rampup_length 0


def test_mixmatch_loss_equals_authors_semi_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 5)
    targets = torch.softmax(torch.randn(16, 5), 1)
    lx, lu = mixmatch_loss(logits, targets, 8)
    rx, ru, w = authors_semi_loss(logits[:8], targets[:8], logits[8:], targets[8:])
    torch.testing.assert_close(lx, rx, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lu, ru, rtol=1e-6, atol=1e-7)
    assert w == 25.0


# ---------------------------------------------------------------------------------- loaders
def test_streams_follow_the_authors_drop_last_loaders() -> None:
    """|L| = 70, |U| = 45, B = 16: 4 steps; 64 labelled rows of one permutation; unlabelled
    rows in passes of 32 (45 // 16 * 16) without repeats inside a pass, restarted."""
    g = torch.Generator().manual_seed(0)
    lab = torch.arange(70)
    unl = torch.arange(100, 145)
    steps, rows_l, rows_u = streams(lab, unl, 16, g)
    assert steps == 4
    assert rows_l.numel() == 64 and rows_l.unique().numel() == 64
    assert set(rows_l.tolist()) <= set(lab.tolist())
    assert rows_u.numel() == 64
    for start in (0, 32):
        chunk = rows_u[start : start + 32]
        assert chunk.unique().numel() == 32 and set(chunk.tolist()) <= set(unl.tolist())
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(streams(lab, unl, 16, g2)[1], rows_l)  # a pure function of the seed


def test_streams_small_sets() -> None:
    g = torch.Generator().manual_seed(0)
    steps, rows_l, rows_u = streams(torch.arange(5), torch.arange(10, 13), 8, g)
    assert steps == 1 and sorted(rows_l.tolist()) == list(range(5))
    assert rows_u.numel() == 8 and set(rows_u.tolist()) <= {10, 11, 12}
    steps, rows_l, rows_u = streams(torch.arange(20), torch.arange(0), 8, g)
    assert steps == 2 and rows_l.numel() == 16 and rows_u.numel() == 0


# ------------------------------------------------------------------------ through the engine
BASE = [
    "experiment=quickstart",
    "method=otfilter",
    "method.warm_up=1",
    "epochs=3",
    "batch_size=64",
    "dataset.reader.test_size=1297",  # 500 training images
    "progress=false",
    "logger=[]",
    "device=cpu",
]


@pytest.fixture(autouse=True)
def _restore_torch_globals(restore_torch_globals: None) -> None:
    """run_experiment sets torch's thread count and determinism (conftest)."""


def _mixmatch_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    seen: list[dict] = []
    original = OTFilter._mixmatch

    def spy(self, model, batch):
        lab, unl = batch.part("labelled"), batch.part("unlabelled")
        seen.append(
            {
                "step": batch.step,
                "labelled_idx": batch.idx[lab].clone(),
                "unlabelled_idx": batch.idx[unl].clone(),
                "division": self.labelled.clone(),
                "net": model,
            }
        )
        return original(self, model, batch)

    monkeypatch.setattr(OTFilter, "_mixmatch", spy)
    return seen


def test_otfilter_trains_on_digits_with_the_authors_streams(tmp_path, monkeypatch) -> None:
    """Three epochs on digits (warm-up 1): the 128-d head is the method's, each MixMatch
    epoch has ``|L| // B`` steps of B labelled samples from the division and B unlabelled ones
    from the rest, and the losses are finite."""
    seen = _mixmatch_spy(monkeypatch)
    result = run_experiment(compose(BASE), run_dir=tmp_path)
    assert result["status"] == "finished"
    net = seen[0]["net"]
    assert isinstance(net, OTFilterNet)
    assert (net.backbone.head.out_features, net.classifier.in_features) == (128, 128)
    assert net.classifier.out_features == 10
    by_epoch: list[list[dict]] = [[]]
    for s in seen:
        if s["step"] == 0 and by_epoch[-1]:
            by_epoch.append([])
        by_epoch[-1].append(s)
    assert len(by_epoch) == 2  # epochs 2 and 3
    for steps in by_epoch:
        division = steps[0]["division"]
        n_l = int(division.sum())
        assert 64 <= n_l < 500
        assert len(steps) == n_l // 64
        for s in steps:
            assert s["labelled_idx"].numel() == 64 and s["unlabelled_idx"].numel() == 64
            assert division[s["labelled_idx"]].all() and not division[s["unlabelled_idx"]].any()
        everything = torch.cat([s["labelled_idx"] for s in steps])
        assert everything.unique().numel() == everything.numel()  # one pass, no repeats
    for record in result["history"][1:]:
        assert math.isfinite(record["train/lx"]) and math.isfinite(record["train/lu"])
        assert 0.0 < record["method/labelled"] < 1.0


def _state(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"method.{k}": v for k, v in ckpt["method"].items()})
    return out


@pytest.mark.slow  # an end-to-end run through the engine
@pytest.mark.parametrize("stop", ["3:2:TERM", "2:0:TERM"])
def test_otfilter_resume_mid_epoch_is_exact(tmp_path, monkeypatch, stop: str) -> None:
    """Stopped at a step of a MixMatch epoch (3:2) or before the first step of the first
    one (2:0) and resumed: the final parameters and buffers equal the uninterrupted run's
    bit for bit (the division comes from the checkpoint, the streams from epoch_plan)."""
    whole = run_experiment(compose(BASE), run_dir=tmp_path / "whole")
    monkeypatch.setenv("NOISYBENCH_TEST_KILL_AT", stop)
    with pytest.raises(Interrupted):
        run_experiment(compose(BASE), run_dir=tmp_path / "cut")
    monkeypatch.delenv("NOISYBENCH_TEST_KILL_AT")
    resumed = run_experiment(compose(BASE), run_dir=tmp_path / "cut")
    assert resumed["status"] == "finished"
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["test/acc"] for h in whole["history"]] == [h["test/acc"] for h in resumed["history"]]


def test_mixmatch_step_path_has_no_host_sync() -> None:
    """The counter of tests/test_engine_host_sync.py over three MixMatch steps (after the
    filter and one uncounted step): no host read in the step (the Beta draw, the guesses,
    the part slices are all device work or Python integers)."""
    from test_engine_host_sync import BASE as SYNC_BASE
    from test_engine_host_sync import SyncCounter

    from noisybench.build import build
    from noisybench.data.loader import plan_seed
    from noisybench.engine import _EpochSums

    exp = build(compose([*SYNC_BASE, "method=otfilter", "method.warm_up=0", "batch_size=32"]))
    trainer = exp.trainer()
    trainer.model.train()
    trainer.method.train()
    trainer.method.on_epoch_start(trainer.model, 0, trainer.evaluate_train)
    plan = trainer.method.epoch_plan(0, plan_seed(exp.source.seed, 0))
    assert plan is not None and plan.steps >= 4  # untrained features: ~1/10 kept
    batches = iter(exp.source.epoch(0, 0, plan))
    sums = _EpochSums.zeros(exp.device)
    trainer.train_step(next(batches), 0, 0, sums)  # lazy optimizer state: not counted
    counter = SyncCounter()
    counter.host_tensors = {
        id(state["step"])
        for state in trainer.optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor) and state["step"].dim() == 0
    }
    with counter.patched():
        for step in range(1, 4):
            batch = next(batches)
            assert batch.parts and dict(batch.parts)["labelled"] == 32
            with counter.counting():
                trainer.train_step(batch, 0, step, sums)
    assert sum(counter.counts.values()) == 0, dict(counter.counts)


def authors_mixmatch_step(model, inputs, labels_x, num_class, lam, idx, T=0.5, lambda_u=25.0):
    """The body of Train_CIFAR.py ``MixMatch`` for one step, with ``l`` and ``idx`` given
    (the code draws them with np.random.beta and torch.randperm); returns the loss."""
    inputs_x, inputs_x2, inputs_u, inputs_u2, inputs_u3, inputs_u4 = inputs
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, num_class).scatter_(1, labels_x.view(-1, 1).long(), 1)
    with torch.no_grad():
        outputs_u_1 = model(inputs_u3)
        outputs_u_2 = model(inputs_u4)
        p = (torch.softmax(outputs_u_1, dim=1) + torch.softmax(outputs_u_2, dim=1)) / 2
        pt = p ** (1 / T)
        targets_u = pt / pt.sum(dim=1, keepdim=True)
        targets_u = targets_u.detach()
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([labels_x, labels_x, targets_u, targets_u], dim=0)
    l = max(lam, 1 - lam)  # noqa: E741 (the code's name)
    input_a, input_b = all_inputs, all_inputs[idx]
    target_a, target_b = all_targets, all_targets[idx]
    mixed_input = l * input_a + (1 - l) * input_b
    mixed_target = l * target_a + (1 - l) * target_b
    logits = model(mixed_input)
    logits_x = logits[: batch_size * 2]
    logits_u = logits[batch_size * 2 :]
    Lx, Lu, w = authors_semi_loss(
        logits_x, mixed_target[: batch_size * 2], logits_u, mixed_target[batch_size * 2 :], lambda_u
    )
    return Lx + w * Lu


class _BatchNet(torch.nn.Module):
    """A network whose output depends on the batch (BatchNorm in train mode), so that the
    order and grouping of the forward passes matter as in the code."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8)
        )
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_mixmatch_step_equals_the_authors_step(monkeypatch) -> None:
    """One planned step (6 unlabelled rows, then 6 labelled; views strong, strong_2, weak,
    weak_2) against the transcribed step with the same ``l`` and permutation: loss and
    every gradient agree to 1e-6 (float32), and BatchNorm's running statistics too (the
    guesses run in train mode, one forward per weak view, as in the code)."""
    from noisybench.method import Batch, MethodContext

    gen = torch.Generator().manual_seed(3)
    views = {
        k: torch.randn(12, 3, 2, 2, generator=gen) for k in ("weak", "weak_2", "strong", "strong_2")
    }
    target = torch.randint(0, 5, (12,), generator=gen)
    batch = Batch(
        idx=torch.arange(12),
        target=target,
        views=views,
        parts=(("unlabelled", 6), ("labelled", 6)),
    )
    method = OTFilter(warm_up=0, batch_size=6)
    ctx = MethodContext(12, 5, target, 1, 1, torch.device("cpu"))
    method.setup(ctx)
    lam, perm = 0.3, torch.randperm(24, generator=gen)
    monkeypatch.setattr(OTFilter, "_draw", lambda self, rows, device: (torch.tensor(0.7), perm))

    ours_net, ref_net = _BatchNet(), _BatchNet()
    out = method.training_step(ours_net, batch, epoch=1)
    out.loss.backward()
    lab, unl = slice(6, 12), slice(0, 6)
    inputs = (
        views["strong"][lab],
        views["strong_2"][lab],
        views["strong"][unl],
        views["strong_2"][unl],
        views["weak"][unl],
        views["weak_2"][unl],
    )
    ref = authors_mixmatch_step(ref_net, inputs, target[lab], 5, lam, perm)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-6)
    for (name, a), (_, b) in zip(
        ours_net.named_parameters(), ref_net.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6, msg=name)
    for a, b in zip(ours_net.buffers(), ref_net.buffers(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.cli
@pytest.mark.slow
def test_two_processes_filter_like_one_process(tmp_path) -> None:
    """Two gloo processes (tests/_ddp_worker.py): every process holds the same division and
    the same parameters bit for bit, and the division of the first filtered epoch (features
    of the warmed-up model, gathered over the processes) equals the single-process one. (The
    MixMatch steps then mix within each process's share, as MixUp does here, so the models
    after that epoch are not compared with the single process.)"""
    import subprocess
    import sys

    from test_distributed import _env, _free_port

    from noisybench.build import build

    spec = (
        "experiment=quickstart model=small_mlp dataset.augment.crop_padding=0 progress=false "
        "logger=[] method=otfilter method.warm_up=1 epochs=2 batch_size=64"
    )
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(root / "tests" / "_ddp_worker.py"),
           str(tmp_path), spec]  # fmt: skip
    env = _env()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r0 = torch.load(tmp_path / "0.rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "0.rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    for part in ("method", "model"):
        for key in r0[part]:
            assert torch.equal(r0[part][key], r1[part][key]), (part, key)
    exp = build(compose(spec.split()))
    exp.trainer().fit()
    single = exp.method.state_dict()
    assert 0 < int(single["labelled"].sum()) < single["labelled"].numel()
    for key in ("labelled", "ot_first", "ot_label"):
        assert torch.equal(single[key].cpu(), r0["method"][key].cpu()), key


@pytest.mark.cli
@pytest.mark.slow
def test_sigkill_mid_mixmatch_epoch_then_resume_is_exact(cli, tmp_path) -> None:
    """SIGKILL at step 2 of the second MixMatch epoch (the last checkpoint: the end of the
    first one), the same command again: the result history equals the uninterrupted run's,
    and so do the final weights and buffers (the filter is recomputed from the checkpointed
    model, the streams from the division and the seed)."""
    from conftest import KILL_ENV, quick_run_dir, read_result

    common = ["method=otfilter", "method.warm_up=1", "epochs=3", "batch_size=64"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli(*common, f"out_dir={whole}").returncode == 0
    killed = cli(*common, f"out_dir={cut}", env={KILL_ENV: "3:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = cli(*common, f"out_dir={cut}")
    assert done.returncode == 0, done.stderr[-2000:]
    run_whole = quick_run_dir(whole, *common[1:], method="otfilter")
    run_cut = quick_run_dir(cut, *common[1:], method="otfilter")
    skip = ("epoch_time_s",)
    a, b = read_result(run_whole)["history"], read_result(run_cut)["history"]
    assert [{k: v for k, v in h.items() if k not in skip} for h in a] == [
        {k: v for k, v in h.items() if k not in skip} for h in b
    ]
    sa, sb = _state(run_whole), _state(run_cut)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
