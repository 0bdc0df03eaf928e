"""Teacher kinds of ``method=kd`` (issue 27) against independent computations.

* ensemble: the stored predictive distribution is the mean of the members' softmax, computed
  here member by member;
* MC dropout: the average of ``T`` forward passes written out here by hand (``F.dropout`` on
  the features, the same seeded generator);
* SWAG: the moments against numpy over the saved weight snapshots (exact up to float32), the
  sampling distribution's mean and covariance against the formula of Maddox et al. (Eq. 1-3,
  statistically, 20,000 draws: tolerances of about 5 standard errors), the stored
  predictive against weight samples drawn by a transcription of the sampling formula and
  BatchNorm statistics computed directly from the pre-BN activations; and the wrapper
  leaves the teacher's training unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from noisybench.baselines.ensemble import Ensemble
from noisybench.baselines.kd import KnowledgeDistillation
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, MethodContext
from noisybench.methods.ce import CrossEntropy
from noisybench.models.small_mlp import small_mlp
from noisybench.teachers import make_teacher
from noisybench.teachers.swag import SWAGCollector, swag_sample

K = 10
N = 8
X = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(3))
LABELS = torch.tensor([1, 7, 3, 3, 0, 9, 2, 2])


def ctx_for(build_model, epochs: int = 3) -> MethodContext:
    return MethodContext(N, K, LABELS, epochs, 2, torch.device("cpu"), build_model=build_model)


def evaluate(module: nn.Module, batch: int = 4) -> Tensor:
    """What ``Trainer.evaluate_train`` does: eval mode, no grad, batches in index order."""
    was = module.training
    module.eval()
    with torch.no_grad():
        out = torch.cat([module(X[i : i + batch]).float() for i in range(0, N, batch)])
    module.train(was)
    return out


def write_run(run: Path, model_state: dict, method_state: dict | None = None, config=None):
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_state, "method": method_state or {}}, run / "checkpoint.pt")
    if config is not None:
        (run / "result.json").write_text(json.dumps({"config": config}))
    return run


def tiny(seed: int | None = None) -> nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, K))


# ------------------------------------------------------------------------------ ensemble
@pytest.mark.parametrize(("T", "average"), [(1.0, "probs"), (3.0, "tempered"), (3.0, "probs")])
def test_stored_ensemble_is_the_mean_of_the_members_softmax(tmp_path, T, average):
    torch.manual_seed(0)
    model = tiny()
    ens = Ensemble(members=3)
    ens.setup(ctx_for(tiny))
    run = write_run(tmp_path / "ens", model.state_dict(), ens.state_dict())
    kd = KnowledgeDistillation(
        [str(run)],
        T=T,
        beta=1.0,
        ensemble_average=average,
        teacher={"kind": "ensemble", "store": True},
    )
    kd.setup(ctx_for(tiny))
    assert len(kd.teachers) == 3
    kd.on_epoch_start(tiny(9), 0, evaluate)
    members = [model, ens.members[0], ens.members[1]]
    with torch.no_grad():
        if average == "tempered":
            expected = sum(F.softmax(m(X) / T, dim=1) for m in members) / 3
        else:
            mean = sum(F.softmax(m(X), dim=1) for m in members) / 3
            expected = mean ** (1 / T) / (mean ** (1 / T)).sum(dim=1, keepdim=True)
    torch.testing.assert_close(kd.teacher_log_p.exp(), expected, rtol=1e-5, atol=1e-7)
    if T == 1.0:  # and it is what the ensemble run itself predicts
        torch.testing.assert_close(
            kd.teacher_log_p, ens.predict(model.eval(), X), rtol=1e-5, atol=1e-6
        )
    # the student's step reads the stored rows of its batch
    student = tiny(4)
    idx = torch.tensor([5, 0, 3])
    b = Batch(idx=idx, target=LABELS[idx], views={"weak": X[idx]})
    out = kd.training_step(student, b, 0)
    q = F.log_softmax(student(X[idx]) / T, dim=1)
    p = expected[idx]
    kl = (p * (p.log() - q)).sum(dim=1).mean()
    torch.testing.assert_close(out.loss, T**2 * kl, rtol=1e-5, atol=1e-6)
    # the store is state: a resumed method does not recompute it
    kd2 = KnowledgeDistillation(
        [str(run)],
        T=T,
        beta=1.0,
        ensemble_average=average,
        teacher={"kind": "ensemble", "store": True},
    )
    kd2.setup(ctx_for(tiny))
    with pytest.raises(RuntimeError):
        kd2.training_step(student, b, 0)
    kd2.load_state_dict(kd.state_dict())
    kd2.on_epoch_start(tiny(9), 1, lambda m: pytest.fail("recomputed"))
    torch.testing.assert_close(kd2.training_step(student, b, 0).loss, out.loss)


def test_deterministic_kind_needs_one_network(tmp_path):
    torch.manual_seed(0)
    ens = Ensemble(members=2)
    ens.setup(ctx_for(tiny))
    run = write_run(tmp_path / "ens", tiny(1).state_dict(), ens.state_dict())
    with pytest.raises(UserError, match="deterministic teacher is one network"):
        KnowledgeDistillation([str(run)], teacher="deterministic").setup(ctx_for(tiny))
    with pytest.raises(UserError, match="unknown"):
        make_teacher({"kind": "bayes"})
    with pytest.raises(UserError, match="options"):
        make_teacher({"kind": "swag", "samplez": 3})
    with pytest.raises(UserError, match="store=false"):
        make_teacher({"kind": "swag", "store": False})


# ------------------------------------------------------------------------------ MC dropout
def test_mc_dropout_is_the_average_of_manual_dropout_passes(tmp_path):
    torch.manual_seed(0)
    teacher = small_mlp(K, in_channels=1, hidden=16, dropout=0.3)
    cfg = {"model": {"name": "small_mlp", "dropout": 0.3}}
    run = write_run(tmp_path / "mc", teacher.state_dict(), config=cfg)

    def student() -> nn.Module:  # the student's own model= has no dropout
        return small_mlp(K, in_channels=1, hidden=16)

    T_passes, seed = 5, 11
    kd = KnowledgeDistillation(
        [str(run)],
        T=1.0,
        ensemble_average="probs",
        teacher={"kind": "mc_dropout", "samples": T_passes, "seed": seed},
    )
    kd.setup(ctx_for(student))
    torch.manual_seed(123)
    kd.on_epoch_start(student(), 0, evaluate)
    after = torch.rand(4)
    torch.manual_seed(123)
    student()
    torch.testing.assert_close(torch.rand(4), after)  # the run's RNG stream is untouched

    torch.manual_seed(seed)
    probs = torch.zeros(N, K)
    with torch.no_grad():
        for _ in range(T_passes):
            rows = []
            for i in range(0, N, 4):
                h = torch.relu(teacher.fc(X[i : i + 4].flatten(1)))
                rows.append(teacher.head(F.dropout(h, 0.3, training=True)))
            probs += F.softmax(torch.cat(rows), dim=1)
    probs /= T_passes
    torch.testing.assert_close(kd.teacher_log_p.exp(), probs, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # and the passes did differ: not the deterministic softmax
        plain = F.softmax(teacher.eval()(X), dim=1)
    assert (probs - plain).abs().max() > 1e-3
    assert kd.on_epoch_end(0)["teacher_passes"] == T_passes


def test_mc_dropout_user_errors(tmp_path):
    no_rate = write_run(tmp_path / "a", small_mlp(K, 1, 16).state_dict(), config={"model": {}})
    with pytest.raises(UserError, match="not trained with dropout"):
        KnowledgeDistillation([str(no_rate)], teacher="mc_dropout").setup(
            ctx_for(lambda: small_mlp(K, 1, 16))
        )
    plain = write_run(tmp_path / "b", tiny(0).state_dict())
    with pytest.raises(UserError, match="needs a model with dropout"):
        KnowledgeDistillation([str(plain)], teacher="mc_dropout").setup(ctx_for(tiny))


# ------------------------------------------------------------------------------ SWAG
def flat(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double().numpy()


def test_swag_moments_against_the_saved_snapshots():
    epochs, rank = 7, 2
    collector = SWAGCollector(CrossEntropy(), start=0.5, rank=rank)  # epochs 4, 5, 6
    collector.setup(ctx_for(tiny, epochs=epochs))
    model = tiny(0)
    b = Batch(idx=torch.arange(4), target=LABELS[:4], views={"weak": X[:4]})
    collector.training_step(model, b, 0)
    snapshots = []
    gen = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        if epoch >= 4:
            snapshots.append(flat(model))
        logs = collector.on_epoch_end(epoch)
        assert float(logs["swag_n"]) == max(0, epoch - 3)
    S = np.stack(snapshots)  # (3, d)
    np.testing.assert_allclose(collector.swag_mean.numpy(), S.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(collector.swag_sq_mean.numpy(), (S**2).mean(0), rtol=1e-5, atol=1e-6)
    # deviation i (1-based) = theta_i - mean(theta_1..i), in column (i - 1) mod rank
    dev3 = S[2] - S[:3].mean(0)
    dev2 = S[1] - S[:2].mean(0)
    np.testing.assert_allclose(collector.swag_dev[0].numpy(), dev3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(collector.swag_dev[1].numpy(), dev2, rtol=1e-5, atol=1e-5)
    assert int(collector.swag_n) == 3
    assert set(collector.state_dict()) >= {"swag_mean", "swag_sq_mean", "swag_dev", "swag_n"}


def test_swag_sample_mean_and_covariance():
    gen = torch.Generator().manual_seed(0)
    d, k, scale = 4, 3, 0.5
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    var = torch.rand(d, generator=gen, dtype=torch.float64) + 0.2
    sq = var + mean**2
    dev = torch.randn(k, d, generator=gen, dtype=torch.float64)
    cov = scale * (torch.diag(var) + dev.t() @ dev / (k - 1)) / 2  # Maddox et al., Eq. 1-3
    torch.manual_seed(1)
    draws = torch.stack([swag_sample(mean, sq, dev, scale) for _ in range(20_000)])
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.03)
    torch.testing.assert_close(
        torch.cov(draws.t()), cov, rtol=0, atol=0.05 * cov.abs().max().item()
    )
    diag = torch.stack(
        [swag_sample(mean, sq, dev, scale, diagonal_only=True) for _ in range(20_000)]
    )
    torch.testing.assert_close(torch.cov(diag.t()), scale * torch.diag(var), rtol=0, atol=0.03)


def bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, K)
    )


def test_swag_teacher_against_direct_samples_and_batchnorm(tmp_path):
    torch.manual_seed(0)
    net = bn_net()
    d = sum(p.numel() for p in net.parameters())
    gen = torch.Generator().manual_seed(2)
    base = torch.cat([p.detach().flatten() for p in net.parameters()])
    snaps = [base + 0.05 * torch.randn(d, generator=gen) for _ in range(4)]
    mean = torch.stack(snaps).mean(0)
    sq = (torch.stack(snaps) ** 2).mean(0)
    dev = torch.stack([snaps[i] - torch.stack(snaps[: i + 1]).mean(0) for i in range(4)])
    state = {"swag_mean": mean, "swag_sq_mean": sq, "swag_dev": dev, "swag_n": torch.tensor(4)}
    run = write_run(tmp_path / "swag", net.state_dict(), state)
    samples, seed, scale = 3, 5, 0.5
    kd = KnowledgeDistillation(
        [str(run)],
        T=1.0,
        ensemble_average="probs",
        teacher={"kind": "swag", "samples": samples, "seed": seed, "scale": scale},
    )
    kd.setup(ctx_for(bn_net))
    kd.on_epoch_start(bn_net(), 0, evaluate)

    torch.manual_seed(seed)
    probs = torch.zeros(N, K)
    var = (sq - mean**2).clamp(min=1e-30)
    for _ in range(samples):
        z1 = torch.randn(d)
        z2 = torch.randn(4)
        theta = mean + math.sqrt(scale) * (
            var.sqrt() * z1 + dev.t() @ z2 / math.sqrt(3)
        ) / math.sqrt(2)
        w1, b1, g, beta, w2, b2 = torch.split(theta, [64 * 6, 6, 6, 6, 6 * K, K])
        h = X.flatten(1) @ w1.view(6, 64).t() + b1
        # BatchNorm statistics over the training set: two equal batches of 4 (momentum
        # b / seen): mean over all samples, mean of the batches' unbiased variances.
        mu = h.mean(0)
        v = (h[:4].var(0, unbiased=True) + h[4:].var(0, unbiased=True)) / 2
        a = torch.relu((h - mu) / torch.sqrt(v + 1e-5) * g + beta)
        probs += F.softmax(a @ w2.view(K, 6).t() + b2, dim=1)
    probs /= samples
    torch.testing.assert_close(kd.teacher_log_p.exp(), probs, rtol=1e-4, atol=1e-6)
    assert kd.on_epoch_end(0)["teacher_passes"] == 2 * samples


def test_swag_teacher_needs_moments(tmp_path):
    run = write_run(tmp_path / "ce", tiny(0).state_dict())
    with pytest.raises(UserError, match="method=swag"):
        KnowledgeDistillation([str(run)], teacher="swag").setup(ctx_for(tiny))


def test_swag_collector_does_not_change_training(restore_torch_globals):
    from noisybench.build import build
    from noisybench.config import compose

    base = [
        "experiment=quickstart",
        "epochs=2",
        "dataset.reader.test_size=1297",
        "progress=false",
        "logger=[]",
        "device=cpu",
    ]
    runs = {}
    for method in ("ce", "swag"):
        exp = build(compose([*base, f"method={method}"]))
        runs[method] = (exp, exp.trainer().fit())
    (ce, h_ce), (sw, h_sw) = runs["ce"], runs["swag"]
    for a, b in zip(h_ce, h_sw, strict=True):
        for key, value in a.items():
            if key != "epoch_time_s":
                assert b[key] == value, key
    torch.testing.assert_close(ce.model.state_dict(), sw.model.state_dict(), rtol=0, atol=0)
    assert int(sw.method.swag_n) == 1  # start 0.5 of 2 epochs: the last epoch only
    torch.testing.assert_close(
        sw.method.swag_mean, torch.cat([p.flatten() for p in sw.model.parameters()])
    )


# ------------------------------------------------------------------------------ Laplace
def brute_force_head_hessian_diagonal(features: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Diagonal of the Hessian of the summed cross-entropy w.r.t. ``(W, b)`` by autograd
    (any labels: the last-layer Hessian does not depend on them)."""
    labels = torch.arange(features.shape[0]) % w.shape[0]
    k, h = w.shape

    def loss(theta: Tensor) -> Tensor:
        logits = features @ theta[: k * h].view(k, h).t() + theta[k * h :]
        return F.cross_entropy(logits, labels, reduction="sum")

    theta = torch.cat([w.flatten(), b]).double()
    return torch.autograd.functional.hessian(loss, theta).diagonal()


def test_last_layer_ggn_diagonal_is_the_brute_force_hessian():
    from noisybench.teachers.laplace import last_layer_ggn_diagonal

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    h_w, h_b = last_layer_ggn_diagonal(features, F.softmax(features @ w.t() + b, dim=1))
    expected = brute_force_head_hessian_diagonal(features, w, b)
    torch.testing.assert_close(torch.cat([h_w.flatten(), h_b]), expected, rtol=1e-10, atol=1e-12)


def test_laplace_teacher_against_brute_force_posterior_samples(tmp_path):
    torch.manual_seed(0)
    teacher = small_mlp(K, in_channels=1, hidden=5)
    run = write_run(tmp_path / "ce", teacher.state_dict())
    samples, seed, prior = 4, 3, 2.0
    kd = KnowledgeDistillation(
        [str(run)],
        T=1.0,
        ensemble_average="probs",
        teacher={"kind": "laplace", "samples": samples, "seed": seed, "prior_precision": prior},
    )
    kd.setup(ctx_for(lambda: small_mlp(K, in_channels=1, hidden=5)))
    kd.on_epoch_start(small_mlp(K, 1, 5), 0, evaluate)
    with torch.no_grad():
        phi = torch.relu(teacher.fc(X.flatten(1))).double()
    w, b = teacher.head.weight.detach().double(), teacher.head.bias.detach().double()
    std = (brute_force_head_hessian_diagonal(phi, w, b) + prior).rsqrt()
    torch.manual_seed(seed)
    probs = torch.zeros(N, K, dtype=torch.float64)
    for _ in range(samples):
        theta = torch.cat([w.flatten(), b]) + std * torch.randn(K * 5 + K).double()
        probs += F.softmax(phi @ theta[: K * 5].view(K, 5).t() + theta[K * 5 :], dim=1)
    probs /= samples
    torch.testing.assert_close(kd.teacher_log_p.exp().double(), probs, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the samples moved the prediction away from the MAP softmax
        assert (probs - F.softmax(teacher(X), dim=1).double()).abs().max() > 1e-3
