"""DivideMix's ``loader: reference`` (the authors' labelled / unlabelled loaders) against the
code's loop, transcribed here from LiJunnan1992/DivideMix ``Train_cifar.py``:

    for batch_idx, (inputs_x, inputs_x2, labels_x, w_x) in enumerate(labeled_trainloader):
        try:
            inputs_u, inputs_u2 = unlabeled_train_iter.next()
        except:
            unlabeled_train_iter = iter(unlabeled_trainloader)
            inputs_u, inputs_u2 = unlabeled_train_iter.next()

with both loaders ``DataLoader(batch_size=B, shuffle=True)`` (no ``drop_last``): network 1 on
``loader.run('train', pred2, prob2)`` (network 2's division), then network 2 on network 1's;
warm-up ``DataLoader(batch_size=2B, shuffle=True)`` over all samples, network 1 then 2.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import epoch_metrics, tiny_ctx
from hydra import compose, initialize_config_dir
from noisybench.baselines import CODE_DEFAULTS
from noisybench.baselines.dividemix import DivideMix
from torch import Tensor, nn

from noisybench.engine import Interrupted
from noisybench.method import Batch
from noisybench.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]
N = 50_000  # CIFAR-10
B = 64  # the code's --batch_size (a run's batch_size=128)


def _code_batches(size: int, batch: int) -> list[int]:
    """Batch sizes of one pass of DataLoader(batch_size=batch, drop_last=False)."""
    return [min(batch, size - start) for start in range(0, size, batch)]


def _code_epoch(labelled: int, unlabelled: int, batch: int) -> list[tuple[int, int]]:
    """(labelled, unlabelled) samples of each step of the code's train() for one network."""
    steps = []
    unlabelled_iter = iter(_code_batches(unlabelled, batch))
    for x in _code_batches(labelled, batch):
        try:
            u = next(unlabelled_iter)
        except StopIteration:
            unlabelled_iter = iter(_code_batches(unlabelled, batch))
            u = next(unlabelled_iter)
        steps.append((x, u))
    return steps


def _method(prob: Tensor, **kw) -> DivideMix:
    """A DivideMix whose division buffer is ``prob`` (2, N), as on_epoch_start leaves it."""
    method = DivideMix(warm_up=10, p_threshold=0.5, batch_size=2 * B, **kw)
    method.prob = prob
    return method


def _division(labelled: int, seed: int) -> Tensor:
    """Clean probabilities with exactly ``labelled`` samples above 0.5, at random places."""
    gen = torch.Generator().manual_seed(seed)
    prob = torch.full((N,), 0.2)
    prob[torch.randperm(N, generator=gen)[:labelled]] = 0.9
    return prob


def _real_rows(method: DivideMix, plan, step: int) -> tuple[int, Tensor, Tensor]:
    net, _, nx, nu = method.plan_step(step)
    rows = dict(plan.rows(step))
    return net, rows["x"][:nx], rows["u"][:nu] if "u" in rows else rows["x"][:0]


@pytest.mark.parametrize(
    ("rate", "steps", "coverage"),
    [(0.2, 641, 1.0), (0.5, 430, 1.0), (0.8, 219, 0.389), (0.9, 149, 0.2355)],
)
def test_reference_epoch_at_a_perfect_division_is_the_codes(
    rate: float, steps: int, coverage: float
) -> None:
    """CIFAR-10, symmetric noise among all classes: a perfect division labels |L| = N (1 -
    0.9 r). Per network ceil(|L| / 64) steps (641 / 430 / 219 / 149, issue 21), each with 64
    labelled samples (the last one |L| mod 64) and the unlabelled batches of the code's
    restarted iterator; network 1 (steps 0..k-1) on network 2's division, network 2 after."""
    size = round(N * (1 - 0.9 * rate))
    div_of_2, div_of_1 = _division(size, 1), _division(size, 2)
    method = _method(torch.stack([div_of_1, div_of_2]))
    plan = method.epoch_plan(10, seed=7)
    assert plan.steps == 2 * steps
    assert {name: per for name, (_, per) in plan.parts.items()} == {"x": B, "u": B}
    code = _code_epoch(size, N - size, B)
    assert len(code) == steps
    for net, division in ((0, div_of_2), (1, div_of_1)):
        labelled_set = torch.nonzero(division > 0.5).flatten()
        seen_x, seen_u, counts = [], [], []
        for s in range(net * steps, (net + 1) * steps):
            j, x, u = _real_rows(method, plan, s)
            assert j == net
            counts.append((len(x), len(u)))
            seen_x.append(x)
            seen_u.append(u)
        assert counts == code  # 64 labelled + the code's unlabelled batch, step by step
        assert sum(c[0] for c in counts) / steps == pytest.approx(size / steps)  # ~64
        # every labelled sample of the other network's division exactly once
        assert torch.equal(torch.cat(seen_x).sort().values, labelled_set)
        unl = torch.cat(seen_u)
        assert not torch.isin(unl, labelled_set).any()
        first_pass = unl[: N - size]
        if len(unl) >= N - size:  # a whole pass: every unlabelled sample once, then again
            assert len(first_pass.unique()) == N - size
        else:  # 90 %: 149 * 64 = 9536 of 40500 unlabelled samples (23.5 %), none twice
            assert len(unl.unique()) == len(unl) == steps * B
        assert min(1.0, len(unl) / (N - size)) == pytest.approx(coverage, abs=5e-4)
    # a pure function of the buffers and (seed, epoch): the same plan again; another seed,
    # another order
    again = method.epoch_plan(10, seed=7)
    assert all(torch.equal(plan.parts[k][0], again.parts[k][0]) for k in plan.parts)
    other = method.epoch_plan(10, seed=8)
    assert not torch.equal(plan.parts["x"][0], other.parts["x"][0])


def test_reference_warm_up_is_two_passes_of_2b() -> None:
    """warmup_trainloader: batch 2B = 128 over all 50000 samples, 391 steps for network 1
    (the last one 80 samples) and 391 for network 2, each pass every sample once."""
    method = _method(torch.ones(2, N))
    plan = method.epoch_plan(0, seed=3)
    assert plan.steps == 2 * 391 and plan.parts["x"][1] == 128
    for net in (0, 1):
        rows = [_real_rows(method, plan, s) for s in range(net * 391, (net + 1) * 391)]
        assert {r[0] for r in rows} == {net}
        assert [len(r[1]) for r in rows] == _code_batches(N, 128)
        assert torch.equal(torch.cat([r[1] for r in rows]).sort().values, torch.arange(N))


def test_in_batch_loader_keeps_the_ordinary_epoch() -> None:
    assert _method(torch.ones(2, N), loader="in_batch").epoch_plan(10, seed=1) is None


def test_reference_loader_refuses_an_odd_batch_and_an_unknown_loader() -> None:
    from noisybench.errors import UserError

    with pytest.raises(UserError, match="even batch_size"):
        DivideMix(batch_size=127)
    with pytest.raises(UserError, match=r"reference .* or in_batch"):
        DivideMix(loader="code")
    DivideMix(batch_size=127, loader="in_batch")  # the in-batch realisation takes any


class FixedLogits(nn.Module):
    """Sample ``i``'s logits are a fixed trainable row; the input's first pixel carries ``i``."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.z[x[:, 0, 0, 0].round().long()]


def test_reference_step_trains_one_network_with_the_codes_loss(monkeypatch) -> None:
    """Steps of B = 3 labelled and 3 unlabelled samples, both views identical, the mixing
    permutation the identity (the mix changes nothing): loss = L_x (soft CE to the co-refined
    targets over the 2 x labelled rows) + lambda_u * ramp * L_u (MSE to the co-guessed targets
    over the 2 x unlabelled rows) + the uniform-prior penalty over all rows, by hand; only the
    step's network gets a gradient. The padded rows of the smaller batches are dropped."""
    n, k = 8, 3
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    gen = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(n, k, generator=gen), torch.randn(n, k, generator=gen)
    method = DivideMix(warm_up=0, lambda_u=2.0, rampup_length=1, batch_size=6)
    ctx = tiny_ctx(y, k, epochs=10, steps_per_epoch=2, build_model=lambda: FixedLogits(z2))
    method.setup(ctx)
    # network 2's division (trains network 1): 0, 1, 3, 5, 6 labelled; network 1's: 1..6
    method.prob.copy_(
        torch.tensor(
            [
                [0.1, 0.7, 0.8, 0.9, 0.6, 0.7, 0.8, 0.2],
                [0.9, 0.6, 0.2, 0.8, 0.3, 0.7, 0.6, 0.4],
            ]
        )
    )
    plan = method.epoch_plan(3, seed=11)
    assert plan.steps == 2 + 2  # ceil(5 / 3) for network 1, ceil(6 / 3) for network 2
    # (labelled, unlabelled) rows: network 1: |L| 5 = 3 + 2, |U| 3; network 2: 6 = 3 + 3, |U| 2
    assert [method.plan_step(s)[2:] for s in range(4)] == [(3, 3), (2, 3), (3, 2), (3, 2)]
    net1 = FixedLogits(z1)
    monkeypatch.setattr(torch, "randperm", lambda m, device=None: torch.arange(m))
    p1, p2 = torch.softmax(z1, 1), torch.softmax(z2, 1)

    def sharp(p: Tensor) -> Tensor:
        return p**2 / (p**2).sum(1, keepdim=True)

    for s in range(plan.steps):
        rows = plan.rows(s)
        idx = torch.cat([r for _, r in rows])
        x = idx.float()[:, None, None, None].expand(-1, 1, 2, 2).contiguous()
        parts = tuple((name, len(r)) for name, r in rows)
        batch = Batch(idx, y[idx], {"weak": x, "weak_2": x}, parts=parts, step=s)
        out = method.training_step(net1, batch, 3)
        j, _, nx, nu = method.plan_step(s)
        ix, iu = dict(rows)["x"][:nx], dict(rows)["u"][:nu]
        own, oth = (z1, z2) if j == 0 else (z2, z1)
        p_own = p1 if j == 0 else p2
        w = method.prob[1 - j, ix][:, None]
        tx = sharp(w * F.one_hot(y[ix], k) + (1 - w) * p_own[ix])
        tu = sharp((2 * p1[iu] + 2 * p2[iu]) / 4)
        zx, zu = own[torch.cat([ix, ix])], own[torch.cat([iu, iu])]
        lx = -(torch.cat([tx, tx]) * torch.log_softmax(zx, 1)).sum(1).mean()
        lu = ((torch.softmax(zu, 1) - torch.cat([tu, tu])) ** 2).mean()
        mean_p = torch.softmax(torch.cat([zx, zu]), 1).mean(0)
        pen = (torch.full((k,), 1 / k) * torch.log((1 / k) / mean_p)).sum()
        expected = lx + 2.0 * 1.0 * lu + pen  # epoch 3 > warm_up 0 + rampup 1: ramp 1
        assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
        net1.z.grad = None
        method.peer[0].z.grad = None
        out.loss.backward()
        trained, fixed = (net1, method.peer[0]) if j == 0 else (method.peer[0], net1)
        assert trained.z.grad is not None and fixed.z.grad is None
        del oth


# ------------------------------------------------------------------------ through the engine
BASE = [
    "experiment=quickstart",
    "epochs=2",
    "batch_size=128",
    "dataset.reader.test_size=1297",  # 500 training images
    "progress=false",
    "logger=[]",
    "device=cpu",
    "cpu_threads=1",
    "method=dividemix",
    *CODE_DEFAULTS["dividemix"],  # digits: no authors' value; the code's defaults
    "method.warm_up=1",  # one warm-up epoch, then co-training
]


def _run(tmp: Path, *extra: str, kill: str | None = None, monkeypatch=None) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, *extra])
    threads = torch.get_num_threads()
    try:
        if kill is not None:
            monkeypatch.setenv("NOISYBENCH_TEST_KILL_AT", kill)
            with pytest.raises(Interrupted):
                run_experiment(cfg, run_dir=tmp)
            monkeypatch.delenv("NOISYBENCH_TEST_KILL_AT")
        return run_experiment(cfg, run_dir=tmp)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("loader", ["reference", "in_batch"])
def test_digits_run_with_each_loader(loader: str, tmp_path: Path) -> None:
    """Both realisations train on the quickstart digits. Reference: a warm-up epoch of
    ceil(500 / 128) = 4 steps per network, then ceil(|L| / 64) steps per network on the other
    network's (logged) division; in-batch: the ordinary epoch of 4 steps."""
    result = _run(tmp_path, f"method.loader={loader}")
    assert result["status"] == "finished"
    first, second = result["history"]
    assert all(math.isfinite(h["train/loss"]) for h in result["history"])
    assert math.isfinite(second["train/lu"])
    if loader == "reference":
        assert (first["method/steps_1"], first["method/steps_2"]) == (4, 4)
        # network 1 trains on network 2's division, network 2 on network 1's
        size_1, size_2 = (round(second[f"method/labelled_{j}"] * 500) for j in (1, 2))
        assert second["method/steps_1"] == -(-size_2 // 64)
        assert second["method/steps_2"] == -(-size_1 // 64)
    else:
        assert "method/steps_1" not in second


def test_reference_loader_resumes_mid_epoch_exactly(tmp_path: Path, monkeypatch) -> None:
    """Killed in the second epoch (co-training, before its step 3) and resumed: the plan is
    rebuilt from the checkpoint's division and the epoch's seed, so every per-epoch number
    equals the uninterrupted run's (CPU, deterministic)."""
    whole = _run(tmp_path / "whole")
    resumed = _run(tmp_path / "resumed", kill="2:3:TERM", monkeypatch=monkeypatch)
    assert resumed["status"] == whole["status"] == "finished"
    assert epoch_metrics(resumed["history"]) == epoch_metrics(whole["history"])


def test_loader_stream_restarts_and_leaves_out_a_batch_of_one() -> None:
    """10 samples in batches of 4: passes of 4 + 4 + 2 (the code's iterator), restarted with a
    fresh order; 9 samples: 4 + 4, the last batch of ONE sample left out of each pass (a
    training-mode BatchNorm cannot normalise it); padding rows repeat the batch's last index."""
    from noisybench.baselines.dividemix import batches_per_pass, loader_stream

    orders = iter([torch.arange(10), torch.arange(10).flip(0), torch.arange(10)])
    flat, counts = loader_stream(lambda: next(orders), 10, 4, 5)
    assert counts == [4, 4, 2, 4, 4]
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 8, 7, 6, 5, 4, 3, 2]
    flat, counts = loader_stream(lambda: torch.arange(9), 9, 4, 3)
    assert counts == [4, 4, 4] and flat[:8].tolist() == list(range(8))
    assert flat[8:].tolist() == [0, 1, 2, 3]  # the next pass; sample 8 left out of the first
    assert [batches_per_pass(n, 4) for n in (0, 1, 2, 4, 5, 6)] == [0, 0, 1, 1, 1, 2]
    assert loader_stream(lambda: torch.arange(1), 1, 4, 2)[1] == [0, 0]


@pytest.mark.parametrize(
    ("world", "width", "real"), [(2, 64, 40), (3, 64, 64), (4, 6, 1), (3, 5, 0)]
)
def test_each_process_keeps_the_real_rows_of_its_share(monkeypatch, world, width, real) -> None:
    """With several processes each part's rows are split like torch.tensor_split; a process
    keeps the real rows (the first ``real`` of the part's ``width``) that fall into its share:
    together exactly the real rows, each once."""
    from noisybench.baselines import dividemix

    kept = []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        share = torch.tensor_split(torch.arange(width), world)[rank]
        local = dividemix._local_rows(real, width)
        assert share[:local].tolist() == [i for i in share.tolist() if i < real]
        kept += share[:local].tolist()
    assert kept == list(range(real))
