"""The method contract's two seams for the semi-supervised methods (issue 23): an epoch the
method lays out itself (:meth:`Method.epoch_plan`, :class:`EpochPlan`: named parts of their own
lengths, a restarted unlabelled iterator, steps per epoch that change) and a network of the
method's own around the architecture (:meth:`Method.network`).

Independent checks: the batches a planned epoch trains on are the plan's index sequences cut
into ``per_step`` rows, recomputed here by slicing; the learning rate at every epoch boundary
equals the ordinary run's at the same boundary; the scheduler calls per step are the
hand-computed ``floor((s + 1) S / S') - floor(s S / S')``; an epoch stopped at a step and resumed
from the checkpoint state gives the uninterrupted epoch's parameters bit for bit; the streamed
source yields the same rows as the in-memory one for the same plan.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_image_folder
from torch import Tensor, nn

from noisybench import safety
from noisybench.build import build
from noisybench.config import compose
from noisybench.data.loader import check_plan, plan_seed
from noisybench.errors import UserError
from noisybench.method import Batch, EpochPlan, Method, StepOutput

BASE = [
    "experiment=quickstart",
    "epochs=2",
    "batch_size=100",
    "dataset.reader.test_size=1297",  # 500 training images: 5 ordinary steps per epoch
    "progress=false",
    "logger=[]",
    "device=cpu",
]
LABELLED, PER_LABELLED, PER_UNLABELLED = 130, 40, 30  # ceil(130 / 40) = 4 steps


@pytest.fixture(autouse=True)
def _restore_torch_globals(restore_torch_globals: None) -> None:
    """build() sets torch's thread count and determinism (conftest)."""


@pytest.fixture(autouse=True)
def _allow_this_module() -> None:
    safety.allow([f"{__name__}."])
    yield
    safety.reset()


def reference_plan(n: int, seed: int) -> dict[str, Tensor]:
    """The flat index sequences the test method draws: the first ``LABELLED`` samples
    shuffled once, the others from a permutation restarted when exhausted."""
    gen = torch.Generator().manual_seed(seed)
    labelled = torch.randperm(LABELLED, generator=gen)
    steps = math.ceil(LABELLED / PER_LABELLED)
    rest = n - LABELLED
    rounds = math.ceil(steps * PER_UNLABELLED / rest)
    unlabelled = torch.cat([LABELLED + torch.randperm(rest, generator=gen) for _ in range(rounds)])
    return {"labelled": labelled, "unlabelled": unlabelled}


class PlannedCE(Method):
    """Cross-entropy on both parts of the epoch the reference plan lays out; records every
    batch it trains on."""

    views = ("plain",)

    def __init__(self, planned: bool = True) -> None:
        super().__init__()
        self.planned = planned
        self.seen: list[Batch] = []

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.n = ctx.num_samples

    def epoch_plan(self, epoch: int, seed: int) -> EpochPlan | None:
        if not self.planned:
            return None
        flat = reference_plan(self.n, seed)
        steps = math.ceil(LABELLED / PER_LABELLED)
        return EpochPlan(
            steps,
            {
                "labelled": (flat["labelled"], PER_LABELLED),
                "unlabelled": (flat["unlabelled"], PER_UNLABELLED),
            },
        )

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        self.seen.append(batch)
        logits = model(batch.views["plain"])
        return StepOutput(loss=F.cross_entropy(logits, batch.target), logits=logits)


class Headed(nn.Module):
    """The architecture's features through a 16-d projection and a classifier of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.proj = nn.Linear(model.num_features, 16)
        self.classifier = nn.Linear(16, model.head.out_features)

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        z = self.proj(self.model.forward_features(x))
        logits = self.classifier(F.relu(z))
        return (logits, z) if heads else logits


class HeadedCE(PlannedCE):
    def __init__(self) -> None:
        super().__init__(planned=False)

    def network(self, model: nn.Module) -> nn.Module:
        return Headed(model)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits, z = model(batch.views["plain"], heads=True)
        assert z.shape == (batch.size, 16)
        return StepOutput(loss=F.cross_entropy(logits, batch.target), logits=logits)


def _experiment(target: str, *extra: str):
    return build(compose([*BASE, f"method._target_={__name__}.{target}", *extra]))


def test_a_planned_epoch_trains_on_the_plans_rows_in_parts() -> None:
    exp = _experiment("PlannedCE")
    trainer = exp.trainer()
    trainer.fit()
    n = int(exp.source.labels.train_given.shape[0])
    steps = math.ceil(LABELLED / PER_LABELLED)
    assert len(exp.method.seen) == 2 * steps
    for epoch in range(2):
        flat = reference_plan(n, plan_seed(exp.source.seed, epoch))
        for s in range(steps):
            batch = exp.method.seen[epoch * steps + s]
            lab = flat["labelled"][s * PER_LABELLED : (s + 1) * PER_LABELLED]
            unl = flat["unlabelled"][s * PER_UNLABELLED : (s + 1) * PER_UNLABELLED]
            assert batch.step == s
            assert batch.parts == (("labelled", len(lab)), ("unlabelled", PER_UNLABELLED))
            assert torch.equal(batch.idx[batch.part("labelled")], lab)
            assert torch.equal(batch.idx[batch.part("unlabelled")], unl)
            assert torch.equal(batch.target, exp.source.labels.train_given[batch.idx])
    # The last labelled batch is the rest: 130 = 3 * 40 + 10.
    assert exp.method.seen[steps - 1].parts[0] == ("labelled", 10)
    with pytest.raises(KeyError, match="no part 'other'"):
        exp.method.seen[0].part("other")


def test_the_schedule_keeps_its_per_epoch_course_when_epochs_change_length() -> None:
    def boundary_lrs(target: str) -> list[float]:
        exp = _experiment(target, "epochs=3", "optim=sgd_cosine")
        trainer = exp.trainer()
        lrs = []
        for epoch in range(3):
            trainer.train_epoch(epoch)
            lrs.append(exp.optimizer.param_groups[0]["lr"])
        return lrs

    planned = boundary_lrs("PlannedCE")  # 4 steps an epoch
    ordinary = boundary_lrs("OrdinaryCE")  # 5 steps an epoch
    assert planned == pytest.approx(ordinary, rel=1e-12, abs=1e-15)
    assert ordinary[0] > ordinary[1] > ordinary[2]  # a schedule that moves


class OrdinaryCE(PlannedCE):
    def __init__(self) -> None:
        super().__init__(planned=False)


@pytest.mark.parametrize(
    ("nominal", "actual", "calls"),
    [(5, 3, [1, 2, 2]), (3, 7, [0, 0, 1, 0, 1, 0, 1]), (4, 4, [1, 1, 1, 1])],
)
def test_scheduler_calls_per_planned_step(nominal: int, actual: int, calls: list[int]) -> None:
    exp = _experiment("OrdinaryCE")
    trainer = exp.trainer()
    counted: list[int] = []
    trainer.scheduler = type("Counter", (), {"step": lambda self: counted.append(1)})()
    trainer.source = type("Sized", (), {"__len__": lambda self: nominal})()
    trainer.epoch_steps = actual
    got = []
    for step in range(actual):
        before = len(counted)
        trainer._advance_schedule(step)
        got.append(len(counted) - before)
    assert got == calls and sum(got) == nominal


def test_a_planned_epoch_resumes_mid_epoch_exactly() -> None:
    from noisybench.engine import _EpochSums

    exp = _experiment("PlannedCE", "epochs=1")
    trainer = exp.trainer()
    start = copy.deepcopy(trainer.state_dict(0))
    trainer.train_epoch(0)
    whole = {k: v.clone() for k, v in exp.model.state_dict().items()}
    trainer.load_state_dict(start)
    sums = _EpochSums.zeros(exp.device)
    plan = exp.method.epoch_plan(0, plan_seed(exp.source.seed, 0))
    trainer.epoch_steps = plan.steps
    trainer.model.train()
    batches = iter(exp.source.epoch(0, 0, plan))
    for step in range(2):
        trainer.train_step(next(batches), 0, step, sums)
    state = copy.deepcopy(trainer.state_dict(0, 2, sums))
    _, _, restored = trainer.load_state_dict(state)
    trainer.train_epoch(0, 2, restored)
    for key, value in exp.model.state_dict().items():
        assert torch.equal(value, whole[key]), key


def test_a_methods_network_is_what_trains_evaluates_and_is_rebuilt() -> None:
    exp = _experiment("HeadedCE", "epochs=1")
    assert isinstance(exp.model, Headed)
    assert isinstance(exp.build_model(), Headed)  # the method's extra networks too
    trained = {id(p) for g in exp.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in exp.model.parameters()} <= trained
    before = exp.model.proj.weight.detach().clone()
    record = exp.trainer().fit()[-1]
    assert not torch.equal(exp.model.proj.weight, before)  # the method's head is trained
    assert 0.0 <= record["test/acc"] <= 1.0
    assert "proj.weight" in exp.model.state_dict()


@pytest.mark.parametrize(
    ("parts", "steps", "carry", "message"),
    [
        ({"a": (torch.arange(4), 0)}, 1, 0.0, "takes 0 rows a step"),
        ({"a": (torch.arange(4.0), 2)}, 1, 0.0, "1-D integer index tensor"),
        ({"a": (torch.tensor([0, 10]), 2)}, 1, 0.0, "outside the 10 training samples"),
        ({"a": (torch.arange(4), 2)}, 0, 0.0, "at least one step"),
        ({"a": (torch.arange(4), 2)}, 1, 0.5, "cannot also carry samples"),
    ],
)
def test_impossible_plans_are_refused_in_one_line(parts, steps, carry, message) -> None:
    with pytest.raises(UserError, match=message):
        check_plan(EpochPlan(steps, parts), 10, carry)


def test_the_streamed_source_serves_a_plan_as_the_in_memory_one(tmp_path: Path) -> None:
    write_image_folder(tmp_path, 4, 6)  # 24 JPEGs, 4 classes
    exp = build(
        compose(
            [
                "dataset=folder",
                f"dataset.reader.root={tmp_path}",
                "dataset.reader.image_size=16",
                "dataset.reader.resize=18",
                "dataset.loader.workers=0",
                "model=small_cnn",
                "method=ce",
                "epochs=1",
                "batch_size=8",
                "progress=false",
                "logger=[]",
                "device=cpu",
            ]
        )
    )
    n = int(exp.source.labels.train_given.shape[0])
    labelled, unlabelled = torch.tensor([5, 1, 7, 2, 9]), torch.arange(n).flip(0)
    plan = EpochPlan(3, {"l": (labelled, 2), "u": (unlabelled, 3)})
    got = list(exp.source.epoch(0, 1, plan))  # from step 1 on, as a resumed run
    assert [b.step for b in got] == [1, 2]
    assert [b.parts for b in got] == [(("l", 2), ("u", 3)), (("l", 1), ("u", 3))]
    assert got[0].idx.tolist() == [7, 2, n - 4, n - 5, n - 6]
    assert got[1].idx.tolist() == [9, n - 7, n - 8, n - 9]
    assert got[1].views["weak"].shape[0] == 4
