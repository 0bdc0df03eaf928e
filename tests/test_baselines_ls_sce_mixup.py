"""Label smoothing, SCE and MixUp against hand-computed values, plus contract checks shared by
all four comparison baselines in ``baselines/`` (LS, SCE, MixUp, TE)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_ctx
from hydra.utils import instantiate
from noisybench.baselines.ls import LabelSmoothing
from noisybench.baselines.mixup import MixUp
from noisybench.baselines.sce import SymmetricCrossEntropy
from noisybench.baselines.te import TemporalEnsembling
from omegaconf import OmegaConf
from torch import nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("ls", "sce", "mixup", "te")


# ----------------------------------------------------------------------------- helpers


class FixedLogits(nn.Module):
    """Returns the same trainable logits row for every input image."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class Recorder(nn.Module):
    """A linear model that remembers the last input it saw."""

    def __init__(self, in_features: int, k: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, k))
        self.last_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x.detach().clone()
        return self.net(x)


def make_batch(b: int = 6, k: int = 4, shape: tuple[int, ...] = (3, 4, 4), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        idx=torch.arange(b),
        target=torch.randint(0, k, (b,), generator=g),
        views={"weak": torch.randn(b, *shape, generator=g)},
    )


def hand_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -log softmax(logits)[y], written out."""
    z = logits.double()
    lse = (
        z.max(1, keepdim=True).values
        + (z - z.max(1, keepdim=True).values).exp().sum(1, keepdim=True).log()
    )
    return (lse.squeeze(1) - z.gather(1, target.unsqueeze(1)).squeeze(1)).float()


def context(n: int, k: int, labels: torch.Tensor | None = None) -> MethodContext:
    if labels is None:
        labels = torch.randint(0, k, (n,))
    return tiny_ctx(labels, k, epochs=3)


def build_from_config(name: str, **overrides: object) -> Method:
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml")
    assert cfg.name == name
    cfg = OmegaConf.to_container(cfg)
    cfg.pop("name")
    cfg.update(overrides)
    return instantiate(cfg)


# ----------------------------------------------------------------------------- label smoothing


def test_ls_with_zero_smoothing_is_cross_entropy() -> None:
    torch.manual_seed(0)
    batch = make_batch()
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    out = LabelSmoothing(smoothing=0.0).training_step(model, batch, 0)
    expected = hand_ce(model(batch.views["weak"]), batch.target).mean()
    torch.testing.assert_close(out.loss, expected)


def test_ls_three_class_hand_example() -> None:
    # logits (1, 2, 3), label 0, s = 0.3, K = 3: target (0.8, 0.1, 0.1).
    # log p = z - (3 + log(1 + e^-1 + e^-2)) = (-2.4076060, -1.4076060, -0.4076060)
    # loss = 0.8 * 2.4076060 + 0.1 * 1.4076060 + 0.1 * 0.4076060 = 2.1076060
    lse = 3.0 + math.log(1.0 + math.exp(-1.0) + math.exp(-2.0))
    by_formula = 0.8 * (lse - 1) + 0.1 * (lse - 2) + 0.1 * (lse - 3)
    assert by_formula == pytest.approx(2.1076060, abs=1e-6)
    model = FixedLogits([1.0, 2.0, 3.0])
    batch = Batch(idx=torch.arange(1), target=torch.tensor([0]), views={"weak": torch.zeros(1, 1)})
    out = LabelSmoothing(smoothing=0.3).training_step(model, batch, 0)
    assert out.loss.item() == pytest.approx(2.1076060, abs=1e-5)


def test_ls_rejects_bad_smoothing() -> None:
    with pytest.raises(UserError, match="smoothing"):
        LabelSmoothing(smoothing=1.5)


# ----------------------------------------------------------------------------- SCE


def test_sce_with_zero_beta_is_alpha_times_cross_entropy() -> None:
    torch.manual_seed(1)
    batch = make_batch()
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    out = SymmetricCrossEntropy(alpha=0.7, beta=0.0).training_step(model, batch, 0)
    expected = 0.7 * hand_ce(model(batch.views["weak"]), batch.target).mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("log_zero", [-4.0, math.log(1e-4)])
def test_sce_reverse_term_is_minus_a_times_one_minus_p_y(log_zero: float) -> None:
    # All probabilities well above 1e-7, so the clamp is inactive: RCE = -A (1 - p_y).
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, -0.5]])
    target = torch.tensor([2, 0])
    p = torch.exp(logits.double()) / torch.exp(logits.double()).sum(1, keepdim=True)
    p_y = p[torch.arange(2), target]
    rce = (-log_zero * (1.0 - p_y)).mean()
    for i in range(2):
        model = FixedLogits(logits[i].tolist())
        batch = Batch(torch.arange(1), target[i : i + 1], {"weak": torch.zeros(1, 1)})
        out = SymmetricCrossEntropy(alpha=0.0, beta=1.0, log_zero=log_zero).training_step(
            model, batch, 0
        )
        assert out.loss.item() == pytest.approx(-log_zero * (1.0 - p_y[i].item()), rel=1e-5)
    # The full SCE loss for both samples at once, with alpha = 0.1, beta = 1.0.
    method = SymmetricCrossEntropy(alpha=0.1, beta=1.0, log_zero=log_zero)

    class PerSample(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits

    batch = Batch(torch.arange(2), target, {"weak": torch.zeros(2, 1)})
    out = method.training_step(PerSample(), batch, 0)
    expected = 0.1 * hand_ce(logits, target).double().mean() + rce
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sce_clamp_matters_for_an_exact_zero_probability() -> None:
    # softmax((0, -200, -200)) is exactly (1, 0, 0) in float32: 1 - p_y = 0, but the clamped
    # prediction (1, 1e-7, 1e-7) gives RCE = -A * 2e-7.
    model = FixedLogits([0.0, -200.0, -200.0])
    probs = torch.softmax(model.logits.detach(), dim=0)
    assert probs[1].item() == 0.0 and probs[0].item() == 1.0
    batch = Batch(torch.arange(1), torch.tensor([0]), {"weak": torch.zeros(1, 1)})
    a = math.log(1e-4)
    out = SymmetricCrossEntropy(alpha=0.0, beta=1.0, log_zero=a).training_step(model, batch, 0)
    assert out.loss.item() == pytest.approx(-a * 2e-7, rel=1e-4)
    assert out.loss.item() > 1e-6  # unclamped -A (1 - p_y) would be exactly 0


def test_sce_rejects_bad_config() -> None:
    with pytest.raises(UserError, match="log_zero"):
        SymmetricCrossEntropy(log_zero=0.5)
    with pytest.raises(UserError, match="alpha"):
        SymmetricCrossEntropy(alpha=0.0, beta=0.0)


def test_sce_config_defaults_are_cifar10_and_log_1e4() -> None:
    method = build_from_config("sce")
    assert (method.alpha, method.beta) == (0.1, 1.0)
    assert method.log_zero == pytest.approx(math.log(1e-4))


# ----------------------------------------------------------------------------- MixUp


def test_mixup_with_lam_one_is_plain_cross_entropy() -> None:
    torch.manual_seed(2)
    batch = make_batch()
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    out = MixUp(alpha=1.0, lam=1.0).training_step(model, batch, 0)
    expected = hand_ce(model(batch.views["weak"]), batch.target).mean()
    torch.testing.assert_close(out.loss, expected)


def test_mixup_two_sample_batch_matches_hand_computation() -> None:
    x = torch.tensor([[[[1.0, 2.0]]], [[[10.0, -4.0]]]])  # (2, 1, 1, 2)
    target = torch.tensor([0, 2])
    batch = Batch(torch.arange(2), target, {"weak": x})
    # lam = 0.3. Identity partner: inputs unchanged. Swapped partner:
    # x0' = 0.3 * (1, 2) + 0.7 * (10, -4) = (7.3, -2.2)
    # x1' = 0.3 * (10, -4) + 0.7 * (1, 2) = (3.7, 0.2)
    swapped = torch.tensor([[[[7.3, -2.2]]], [[[3.7, 0.2]]]])
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        model = Recorder(2, 3)
        out = MixUp(lam=0.3).training_step(model, batch, 0)
        perm = out.state["perm"].tolist()
        assert sorted(perm) == [0, 1]
        expected_input = x if perm == [0, 1] else swapped
        torch.testing.assert_close(model.last_input, expected_input)
        logits = model.net(expected_input)
        ce = 0.3 * hand_ce(logits, target) + 0.7 * hand_ce(logits, target[perm])
        torch.testing.assert_close(out.loss, ce.mean())
        # Same as soft cross-entropy against the mixed one-hot targets.
        onehot = torch.eye(3)
        soft = 0.3 * onehot[target] + 0.7 * onehot[target[perm]]
        torch.testing.assert_close(
            out.loss, -(soft * torch.log_softmax(logits, dim=1)).sum(1).mean()
        )
        seen.add(tuple(perm))
        if len(seen) == 2:
            break
    assert seen == {(0, 1), (1, 0)}


def test_mixup_samples_lam_from_beta() -> None:
    torch.manual_seed(3)
    uniform = torch.stack([MixUp(alpha=1.0).sample_lam(torch.device("cpu")) for _ in range(2000)])
    assert uniform.min() >= 0 and uniform.max() <= 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.03)  # Beta(1,1): mean 1/2
    assert uniform.var().item() == pytest.approx(1 / 12, abs=0.01)  # variance 1/12
    peaked = torch.stack([MixUp(alpha=8.0).sample_lam(torch.device("cpu")) for _ in range(2000)])
    assert peaked.var().item() == pytest.approx(1 / (4 * 17), abs=0.004)  # 1/(4(2a+1))
    assert MixUp(alpha=0.0).sample_lam(torch.device("cpu")).item() == 1.0


def test_mixup_rejects_bad_config() -> None:
    with pytest.raises(UserError, match="alpha"):
        MixUp(alpha=-1.0)
    with pytest.raises(UserError, match="lam"):
        MixUp(lam=1.2)


# ----------------------------------------------------------------------------- all baselines


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_from_config_trains_on_noisy_labels(name: str) -> None:
    torch.manual_seed(4)
    n, k = 10, 4
    noisy = torch.randint(0, k, (n,))
    method = build_from_config(name, **({"rampup_epochs": 0} if name == "te" else {}))
    assert isinstance(method, Method)
    assert method.views == ("weak",)
    method.setup(context(n, k, noisy))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, k))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx_batches = [torch.arange(0, 5), torch.arange(5, 10)]
    for epoch in range(2):
        for idx in idx_batches:
            batch = Batch(idx, noisy[idx], {"weak": torch.randn(len(idx), 3, 2, 2)})
            out = method.training_step(model, batch, epoch)
            assert out.loss.dim() == 0 and torch.isfinite(out.loss)
            assert out.logits.shape == (len(idx), k)
            opt.zero_grad()
            out.loss.backward()
            for p in model.parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0
            opt.step()
            method.after_step(batch, out, epoch)
        logs = method.on_epoch_end(epoch)
        assert all(isinstance(v, torch.Tensor) for v in logs.values())
    targets = method.soft_targets()
    if targets is not None:
        assert targets.shape == (n, k)
        torch.testing.assert_close(targets.sum(1), torch.ones(n))


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_uses_only_the_public_method_api(name: str) -> None:
    """Clean labels are out of reach: a baseline may import only noisybench.method,
    noisybench.errors and noisybench.augment from noisybench."""
    tree = ast.parse((ROOT / "baselines" / f"{name}.py").read_text())
    allowed = {"noisybench.method", "noisybench.errors", "noisybench.augment"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
        elif isinstance(node, ast.Import):
            mod = node.names[0].name
        else:
            continue
        if mod.split(".")[0] in {"noisybench", "baselines"}:
            assert mod in allowed, f"{name}.py imports {mod}"
    source = (ROOT / "baselines" / f"{name}.py").read_text()
    assert "train_labels" not in source and "ImageData" not in source


def test_baseline_configs_name_their_class() -> None:
    expected = {
        "ls": LabelSmoothing,
        "sce": SymmetricCrossEntropy,
        "mixup": MixUp,
        "te": TemporalEnsembling,
    }
    for name, cls in expected.items():
        assert type(build_from_config(name)) is cls
