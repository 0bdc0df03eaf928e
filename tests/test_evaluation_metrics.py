"""Evaluation metrics against independent computations: torchmetrics' calibration error,
hand-worked SCE/ACE cases, scikit-learn's roc_auc_score, SciPy's scalar minimiser, and
hand-computed flip probabilities, dark-knowledge matrices and selections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisybench.errors import UserError
from noisybench.evaluation import EvalContext
from noisybench.evaluation import calibration as cal
from noisybench.evaluation.dark_knowledge import (
    DarkKnowledgeSuite,
    PredictionSnapshots,
    inter_class_matrix,
    kl_to_final,
    load_snapshots,
    penultimate_features,
    sample_deviation,
    save_snapshot,
    snapshot_indices,
    temperature_adjusted_kl,
    template_plane_projection,
)
from noisybench.evaluation.ood import auroc
from noisybench.evaluation.perturbation import flip_probability, is_noise_perturbation
from noisybench.evaluation.selection import select_epoch, selection_summary


def _ctx(test_images: torch.Tensor, test_labels: torch.Tensor, k: int, **kw) -> EvalContext:
    return EvalContext(
        num_classes=k,
        test_images=test_images,
        test_labels=test_labels,
        data_dir=kw.pop("data_dir", "."),
        device=torch.device("cpu"),
        **kw,
    )


def _fixed(logits: torch.Tensor):
    """A predict callable that returns given logits for the images it gets (by index)."""
    return lambda images: logits[images[:, 0, 0, 0].long()]


def _index_images(n: int) -> torch.Tensor:
    """uint8 images whose first pixel encodes their index (n <= 256)."""
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


# ----------------------------------------------------------------------------- calibration
def test_ece_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(240, 6, generator=gen) * 2.5
    labels = torch.randint(0, 6, (240,), generator=gen)
    expected = tm.multiclass_calibration_error(
        logits.softmax(-1), labels, num_classes=6, n_bins=15, norm="l1"
    )
    out = cal.CalibrationSuite().evaluate(_fixed(logits), _ctx(_index_images(240), labels, 6))
    assert out["calibration/ece"] == pytest.approx(float(expected), abs=1e-6)
    # and the max-norm bin gap is bounded by it the other way round: ECE <= MCE
    mce = tm.multiclass_calibration_error(logits.softmax(-1), labels, 6, n_bins=15, norm="max")
    assert out["calibration/ece"] <= float(mce) + 1e-7


def test_sce_hand_case() -> None:
    # 2 bins (0, .5], (.5, 1]. Class 0: p0 = .8 (label 0), .6 (label 1) share bin 2: acc 1/2,
    # conf .7 -> 2/3 * .2; p0 = .3 in bin 1: acc 0, conf .3 -> 1/3 * .3. Sum 7/30.
    # Class 1 mirrors it: p1 = .2, .4 in bin 1 (acc 1/2, conf .3) and .7 (acc 1) -> 7/30.
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    assert float(cal.static_calibration_error(probs, labels, n_bins=2)) == pytest.approx(7 / 30)


def test_ace_hand_cases() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 1])
    # Top-label confidences sorted: .55 (right), .6 (right) | .7 (wrong), .9 (right).
    # Bin 1: |1 - .575| = .425, bin 2: |.5 - .8| = .3; weights 1/2 each -> .3625.
    assert float(cal.adaptive_calibration_error(probs, labels, n_bins=2)) == pytest.approx(0.3625)
    # Nixon's class-wise ACE. Class 0 probabilities sorted .3 (y=0), .45 (y=1) | .6, .9 (y=0):
    # |.5 - .375| = .125, |1 - .75| = .25. Class 1: .1, .4 (y!=1) | .55 (y=1), .7 (y=0):
    # |0 - .25| = .25, |.5 - .625| = .125. Unweighted mean of the four: .1875.
    got = cal.classwise_adaptive_calibration_error(probs, labels, n_bins=2)
    assert float(got) == pytest.approx(0.1875)


def test_ace_uneven_bins_and_single_bin() -> None:
    # 5 samples in 2 equal-mass bins: positions 0-1 and 2-4 (floor(rN/R) boundaries).
    conf = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9])
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([1, 0, 0, 1, 0])  # correct: no, yes, yes, no, yes
    expected = 2 / 5 * abs(0.5 - 0.55) + 3 / 5 * abs(2 / 3 - 0.8)
    assert float(cal.adaptive_calibration_error(probs, labels, 2)) == pytest.approx(expected)
    # one bin: |accuracy - mean confidence|
    assert float(cal.adaptive_calibration_error(probs, labels, 1)) == pytest.approx(abs(0.6 - 0.7))


def test_brier_nll_and_reliability_by_hand() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1])
    # (.2^2 + .2^2) + (.7^2 + .7^2) + (.1^2 + .1^2), / 3
    assert float(cal.brier_score(probs, labels)) == pytest.approx((0.08 + 0.98 + 0.02) / 3)
    out = cal.calibration_metrics(probs.log(), labels, n_bins=5)
    assert float(out["nll"]) == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.9)) / 3)
    rel = cal.reliability_bins(probs, labels, n_bins=5)  # bins (.6,.8], (.8,1]
    assert rel["count"].tolist() == [0, 0, 0, 2, 1]
    assert rel["confidence"][3].item() == pytest.approx(0.75)
    assert rel["accuracy"][3].item() == pytest.approx(0.5)
    assert rel["accuracy"][4].item() == pytest.approx(1.0)
    assert torch.isnan(rel["confidence"][:3]).all()


def test_fit_temperature_matches_scipy() -> None:
    from scipy.optimize import minimize_scalar

    gen = torch.Generator().manual_seed(2)
    base = torch.randn(400, 5, generator=gen)
    labels = torch.multinomial(base.softmax(-1), 1, generator=gen).squeeze(1)
    logits = base * 2.5  # overconfident: the optimum is a finite T > 1
    z, y = logits.double().numpy(), labels.numpy()

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    expected = math.exp(
        minimize_scalar(nll, bounds=(-5, 5), method="bounded", options={"xatol": 1e-8}).x
    )
    assert cal.fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-3)


def test_temperature_suite_recovers_known_temperature() -> None:
    # Labels drawn from softmax(z) make z calibrated; the model outputs 3 z, so T -> 3.
    gen = torch.Generator().manual_seed(3)
    n = 250  # the index trick holds 256 images; repeat the draw 40 times with the same logits
    z = torch.randn(n, 4, generator=gen)
    labels = torch.multinomial(z.softmax(-1).repeat(40, 1), 1, generator=gen).squeeze(1)
    images = _index_images(n).repeat(40, 1, 1, 1)
    suite = cal.TemperatureScalingSuite(fit_fraction=0.5, split_seed=0)
    out = suite.evaluate(_fixed(3 * z), _ctx(images, labels, 4))
    assert out["temperature/T"] == pytest.approx(3.0, rel=0.1)
    assert out["temperature/nll_ts"] < out["temperature/nll_raw"]
    assert out["temperature/acc_ts"] == out["temperature/acc_raw"]
    assert out["temperature/n_fit"] + out["temperature/n_eval"] == len(labels)


def test_calibration_bad_settings() -> None:
    with pytest.raises(UserError, match="n_bins"):
        cal.CalibrationSuite(n_bins=0)
    with pytest.raises(UserError, match="fit_fraction"):
        cal.TemperatureScalingSuite(fit_fraction=1.5)


# --------------------------------------------------------------------------------- AUROC
def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(4)
    pos = (torch.rand(300, generator=gen) * 10).round() / 10 + 0.1  # many ties
    neg = (torch.rand(200, generator=gen) * 10).round() / 10
    y = np.r_[np.ones(300), np.zeros(200)]
    expected = roc_auc_score(y, np.r_[pos.numpy(), neg.numpy()])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


# ------------------------------------------------------------------------ flip probability
def test_flip_probability_hand_sequences() -> None:
    preds = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 2]])
    # consecutive: seq 1 flips once (0->1), seq 2 twice (2->0, 0->2): 3 of 6 comparisons
    assert float(flip_probability(preds, noise=False)) == pytest.approx(3 / 6)
    # against the first frame: seq 1 differs in all 3 frames, seq 2 in one: 4 of 6
    assert float(flip_probability(preds, noise=True)) == pytest.approx(4 / 6)
    assert is_noise_perturbation("gaussian_noise_2") and is_noise_perturbation("shot_noise")
    assert not is_noise_perturbation("rotate") and not is_noise_perturbation("gaussian_blur")


# ---------------------------------------------------------------------------- dark knowledge
def _toy_probs() -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.1, 0.6]])
    return probs, torch.tensor([0, 0, 1, 2])


def test_mu_and_delta_hand_computed() -> None:
    probs, labels = _toy_probs()
    # E[f|Y=0] = (.7, .2, .1), E[f|Y=1] = (.2, .7, .1), E[f|Y=2] = (.3, .1, .6);
    # mu_ij = (E_i[j] + E_j[i]) / 2.
    expected_mu = torch.tensor([[0.7, 0.2, 0.2], [0.2, 0.7, 0.1], [0.2, 0.1, 0.6]])
    mu = inter_class_matrix(probs, labels, 3)
    torch.testing.assert_close(mu, expected_mu)
    delta = sample_deviation(probs, labels, mu)
    expected_delta = torch.tensor(
        [[-0.1, 0.1, -0.1], [0.1, -0.1, -0.1], [0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]
    )
    torch.testing.assert_close(delta, expected_delta)
    out = DarkKnowledgeSuite().evaluate(
        lambda x: probs.log()[x[:, 0, 0, 0].long()],
        _ctx(_index_images(4), labels, 3, train_images=_index_images(4), train_labels=labels),
    )
    torch.testing.assert_close(torch.tensor(out["dark_knowledge/mu"]), expected_mu.flatten())
    assert out["dark_knowledge/delta_l1_mean"] == pytest.approx((0.3 + 0.3 + 0.0 + 0.1) / 4)
    assert out["dark_knowledge/mu_offdiag_mean"] == pytest.approx((0.2 + 0.2 + 0.1) * 2 / 6)


def test_temperature_adjusted_kl() -> None:
    from scipy.optimize import minimize_scalar

    gen = torch.Generator().manual_seed(5)
    final = torch.randn(50, 4, generator=gen) * 2
    # a model that differs only by its temperature has no KL once adjusted
    kl, t = temperature_adjusted_kl(final / 2, final)
    assert kl == pytest.approx(0.0, abs=1e-6) and t == pytest.approx(0.5, rel=1e-3)
    other = torch.randn(50, 4, generator=gen)
    p = F.softmax(final.double(), -1).numpy()

    def kl_at(log_t: float) -> float:
        q = F.log_softmax(other.double() / math.exp(log_t), -1).numpy()
        return float((p * (np.log(p) - q)).sum(1).mean())

    res = minimize_scalar(kl_at, bounds=(-5, 5), method="bounded", options={"xatol": 1e-9})
    kl, _ = temperature_adjusted_kl(other, final)
    assert kl == pytest.approx(res.fun, rel=1e-4)


def test_snapshots_round_trip(tmp_path) -> None:
    idx = snapshot_indices(100, 10, seed=3)
    assert len(set(idx.tolist())) == 10 and list(idx) == sorted(idx)
    assert np.array_equal(idx, snapshot_indices(100, 10, seed=3))
    gen = torch.Generator().manual_seed(6)
    final = torch.randn(10, 3, generator=gen)
    for epoch, logits in ((1, torch.randn(10, 3, generator=gen)), (2, final * 0.5), (3, final)):
        save_snapshot(tmp_path, epoch, logits, idx)
    epochs, logits, saved_idx = load_snapshots(tmp_path)
    assert epochs == [1, 2, 3] and np.array_equal(saved_idx, idx)
    assert np.load(tmp_path / "predictions" / "epoch_0003.npy").dtype == np.float16
    kl, _temps = kl_to_final(logits)
    assert kl[2] == pytest.approx(0.0, abs=1e-6) and kl[1] == pytest.approx(0.0, abs=1e-5)
    assert kl[0] > 0.01
    with pytest.raises(UserError, match="another prediction subset"):
        save_snapshot(tmp_path, 4, final, snapshot_indices(100, 10, seed=4))
    with pytest.raises(UserError, match="no prediction snapshots"):
        load_snapshots(tmp_path / "nothing")


# -------------------------------------------------------------------------------- selection
def test_selection_rules_by_hand() -> None:
    history = [
        {"epoch": 1, "test/acc": 0.5, "val/acc": 0.40, "train/loss": 1.0},
        {"epoch": 2, "test/acc": 0.8, "val/acc": 0.45},
        {"epoch": 3, "test/acc": 0.7, "val/acc": 0.47},
        {"epoch": 4, "test/acc": 0.8, "val/acc": 0.47},
        {"epoch": 5, "test/acc": 0.6, "val/acc": 0.30},
    ]
    assert select_epoch(history, "last")["epoch"] == 5
    best = select_epoch(history, "best_test")
    assert best["epoch"] == 2 and best["selected_on"] == "test set"  # earliest of the ties
    val = select_epoch(history, "noisy_val")
    assert val["epoch"] == 3 and val["test/acc"] == 0.7 and val["selected_on"] == "noisy validation"
    summary = selection_summary(history)
    assert set(summary) == {"last", "best_test", "noisy_val"}
    assert "train/loss" not in summary["last"] and summary["noisy_val"]["val/acc"] == 0.47
    no_val = [{k: v for k, v in r.items() if k != "val/acc"} for r in history]
    assert set(selection_summary(no_val)) == {"last", "best_test"}
    with pytest.raises(UserError, match="noisy validation split"):
        select_epoch(no_val, "noisy_val")
    with pytest.raises(UserError, match="unknown selection rule"):
        select_epoch(history, "best")


def test_prediction_snapshots_every_and_last(tmp_path) -> None:
    images = _index_images(50)
    table = torch.randn(50, 3, generator=torch.Generator().manual_seed(7))
    snaps = PredictionSnapshots(tmp_path, images, epochs=7, size=20, seed=1, every=3)
    for epoch in range(7):
        snaps(epoch, _fixed(table * (epoch + 1)))
    epochs, logits, idx = load_snapshots(tmp_path)
    assert epochs == [3, 6, 7]  # every 3rd epoch and the last
    expected = (table[torch.as_tensor(idx)] * 7).half().float()
    torch.testing.assert_close(logits[-1], expected)


def test_penultimate_projection_by_hand() -> None:
    # Templates (0,0,0), (2,0,0), (0,3,0): the plane z = 0 with axes x and y.
    templates = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    feats = torch.tensor([[1.0, 1.0, 5.0], [-2.0, 0.5, -1.0]])
    got = template_plane_projection(feats, templates)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0], [-2.0, 0.5]]))
    # shifted and rotated: origin at the first template; second axis orthogonalised
    templates = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 2.0], [2.0, 1.0, 1.0]])
    got = template_plane_projection(torch.tensor([[3.0, 7.0, 4.0]]), templates)
    torch.testing.assert_close(got, torch.tensor([[4.0, 2.0]]))  # (x-w0).z = 4, (x-w0).x = 2
    with pytest.raises(UserError, match="collinear"):
        template_plane_projection(feats, torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]))

    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    view = lambda x: x.float() / 255  # noqa: E731
    feats, weight = penultimate_features(model, view, images, batch_size=2)
    expected = model[2](model[1](model[0](view(images))))
    torch.testing.assert_close(feats, expected.detach())
    assert weight.shape == (2, 3) and model.training
