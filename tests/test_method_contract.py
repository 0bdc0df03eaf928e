"""The Method contract (noisybench/method.py), checked for EVERY file in conf/method/ and for
the documented plug-in example (examples/plugin/conf/method/, README "Adding a method").

A new ``conf/method/NAME.yaml`` is picked up automatically. Data: the offline quickstart
(real digits, small CNN, 50 % symmetric noise) with 500 training images and batch 256, on the
CPU. For each method:

* ``test_two_epochs_through_the_engine``: two epochs of the offline quickstart through
  :func:`noisybench.run.run_experiment`; finite numbers in every epoch record; the method only
  ever receives the noisy labels (``MethodContext.noisy_labels`` and every ``Batch.target`` in
  ``training_step``/``after_step`` are the run's noisy labels, which differ from the clean ones
  on about half of the samples), and neither its attributes nor its checkpointed state hold the
  clean label vector.
* ``test_gradients_reach_the_model``: after one full step, the next ``training_step`` +
  backward on a real batch gives every trainable parameter (model and ``extra_modules()``) a
  finite gradient with a non-zero entry.
* ``test_resume_is_identical``: state_dict of model, method, optimizer, scheduler and the RNG
  after one epoch and one step, reloaded into freshly built objects, gives bit-identical
  parameters and method buffers after the next step to carrying on without stopping.

Methods that need extra settings get them from ``EXTRA_OVERRIDES`` (kd: a teacher run, made
here by a one-epoch cross-entropy run; dividemix and gce: settings that reach their
per-epoch passes within two epochs).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import roundtrip
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

import noisybench.build
from noisybench.data.base import ImageData
from noisybench.data.loader import plan_seed
from noisybench.data.source import InMemorySource
from noisybench.engine import rng_state, set_rng_state
from noisybench.method import Batch, EpochPlan, Method, MethodContext, StepOutput
from noisybench.run import run_experiment
from noisybench.rundir import LABEL_FILE

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"  # the source tree's configs (installed as noisybench.conf)
PLUGIN = ROOT / "examples" / "plugin"  # the documented out-of-tree example (README)
METHODS = [
    *(pytest.param(p, id=p.stem) for p in sorted((CONF_DIR / "method").glob("*.yaml"))),
    *(
        pytest.param(p, id=f"plugin:{p.stem}")
        for p in sorted((PLUGIN / "conf" / "method").glob("*.yaml"))
    ),
]
BASE = [
    "experiment=quickstart",
    "epochs=2",
    "batch_size=256",
    "dataset.reader.test_size=1297",  # 500 training images: 2 steps per epoch
    "progress=false",
    "logger=[]",
]
DEVICE = torch.device("cpu")


def _kd_overrides(request: pytest.FixtureRequest) -> list[str]:
    teacher = request.getfixturevalue("teacher_run")
    return [f"method.teacher_runs=['{teacher}']"]


EXTRA_OVERRIDES: dict[str, Callable[[pytest.FixtureRequest], list[str]]] = {
    "kd": _kd_overrides,
    # One warm-up epoch, so the second epoch runs the co-divide (GMM) and MixMatch phase.
    # Digits has no value from DivideMix's / ELR's authors (conf/baseline_presets.yaml): the
    # code's argparse defaults / ELR's CIFAR-10 config, given explicitly.
    "dividemix": lambda _: [
        "method.warm_up=1",
        "method.lambda_u=25",
        "method.p_threshold=0.5",
        "method.loss_history=1",
        "method.confidence_penalty=false",
    ],
    "elr": lambda _: ["method.beta=0.7", "method.lam=3"],
    # No warm-up: the first step already trains the correction, MixUp and the projection head.
    "dulc": lambda _: ["method.warm_up=0"],
    # The code's CIFAR-10 warm-up: both epochs ordinary (these tests count ordinary steps);
    # the planned MixMatch epochs run through the engine in tests/test_baselines_otfilter.py.
    "otfilter": lambda _: ["method.warm_up=10"],
    # One warm-up epoch, so the second epoch runs CSOT's OT division and its two streams; B 128
    # (warm-up batches of 2 B = 256: the 2 nominal steps on the 500 images).
    "csot": lambda _: [
        "method.warm_up=1",
        "method.confidence_penalty=false",
        "method.batch_size=128",
    ],
    # Truncated L_q with pruning from epoch 2 on: the pruning pass runs in the test.
    "gce": lambda _: ["method.truncated=true", "method.start_prune=2", "method.prune_every=1"],
}


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*BASE, *overrides])


def method_cfg(path: Path, request: pytest.FixtureRequest) -> DictConfig:
    """The quickstart config with ``method=<path's stem>``; a plug-in's config directory
    goes on Hydra's search path and its module directory on ``sys.path``."""
    extra = EXTRA_OVERRIDES.get(path.stem, lambda _: [])(request)
    if path.parent != CONF_DIR / "method":
        request.getfixturevalue("plugin_importable")
        extra.append(f"hydra.searchpath=[file://{path.parent.parent}]")
    return compose_cfg(f"method={path.stem}", *extra)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch cross-entropy run of the same data and model (a kd teacher)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "ce"
    threads = torch.get_num_threads()
    try:
        result = run_experiment(compose_cfg("method=ce", "epochs=1"), run_dir=run_dir)
    finally:
        torch.set_num_threads(threads)
    assert result["status"] == "finished"
    return run_dir


@pytest.fixture(scope="module")
def plugin_importable() -> Iterator[None]:
    """``examples/plugin`` on ``sys.path``, as ``PYTHONPATH=examples/plugin`` would put it,
    and its package allowed as ``allow_targets=[my_methods.]`` would (noisybench.safety)."""
    from noisybench import safety

    sys.path.insert(0, str(PLUGIN))
    safety.allow(["my_methods."])
    yield
    safety.reset()
    sys.path.remove(str(PLUGIN))
    for module in [m for m in sys.modules if m == "my_methods" or m.startswith("my_methods.")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return instantiate(compose_cfg().dataset.reader)


# --------------------------------------------------------------------------- helpers
@dataclass
class Parts:
    model: nn.Module
    method: Method
    loader: InMemorySource
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ctx: MethodContext

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        modules = [self.model, *self.method.extra_modules()]
        return [
            (f"{j}.{name}", p)
            for j, module in enumerate(modules)
            for name, p in module.named_parameters()
            if p.requires_grad
        ]


def build(cfg: DictConfig, data: ImageData, noisy: Tensor) -> Parts:
    """Model, method, loader, optimizer and schedule, built by noisybench.build as a run
    builds them, on the given noisy labels."""
    exp = noisybench.build.build(cfg, device=DEVICE, noisy_labels=noisy.numpy())
    ctx = MethodContext(
        num_samples=data.train_labels.shape[0],
        num_classes=data.num_classes,
        noisy_labels=noisy.to(DEVICE),
        epochs=int(cfg.epochs),
        steps_per_epoch=len(exp.source),
        device=DEVICE,
        build_model=exp.build_model,
    )
    exp.model.train()
    exp.method.train()
    return Parts(exp.model, exp.method, exp.source, exp.optimizer, exp.scheduler, ctx)


def train_step(parts: Parts, batch: Batch, epoch: int) -> StepOutput:
    """One step in the engine's order: training_step, backward, optimizer, schedule,
    after_step."""
    out = parts.method.training_step(parts.model, batch, epoch)
    parts.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()
    parts.method.after_step(batch, out, epoch)
    return out


# Parameters a method trains only after its warm-up, so the first epoch's step leaves them
# without gradient, as in the authors' code: CSOT's SimSiam predictor (unlabelled stream only;
# tests/test_baselines_csot.py checks its gradient after the first OT division).
WARM_UP_ONLY_UNUSED: dict[str, tuple[str, ...]] = {"csot": ("predictor.",)}


def epoch_batches(parts: Parts, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """The epoch's batches as the engine draws them: the method's own plan, if it lays the
    epoch out itself (``Method.epoch_plan``), else the ordinary pass."""
    plan = parts.method.epoch_plan(epoch, plan_seed(parts.loader.seed, epoch))
    return parts.loader.epoch(epoch, start_step, plan)


def wrong_labels(clean: Tensor, num_classes: int) -> Tensor:
    """Labels that differ from ``clean`` on every sample."""
    gen = torch.Generator().manual_seed(1)
    shift = torch.randint(1, num_classes, clean.shape, generator=gen)
    return (clean + shift) % num_classes


def all_tensors(obj: Any, seen: set[int] | None = None) -> Iterator[Tensor]:
    """Every tensor reachable from ``obj`` through module attributes, dicts, lists, tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        yield from all_tensors(vars(obj), seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from all_tensors(value, seen)
    elif isinstance(obj, list | tuple | set):
        for value in obj:
            yield from all_tensors(value, seen)


def holds_labels(tensor: Tensor, labels: Tensor, num_classes: int) -> bool:
    """``tensor`` is ``labels`` itself or its one-hot encoding (any dtype)."""
    t = tensor.detach().cpu()
    if t.shape == labels.shape:
        return torch.equal(t.to(torch.float64), labels.to(torch.float64))
    if t.shape == (labels.shape[0], num_classes):
        return torch.equal(t.to(torch.float64), F.one_hot(labels, num_classes).to(torch.float64))
    return False


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("path", METHODS)
def test_two_epochs_through_the_engine(
    path: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    digits: ImageData,
) -> None:
    name = path.stem
    cfg = method_cfg(path, request)
    cls = get_class(cfg.method._target_)
    seen: dict[str, Any] = {"ctx": [], "instances": [], "train": [], "after": [], "plans": {}}
    setup, training_step, after_step = cls.setup, cls.training_step, cls.after_step
    epoch_plan = cls.epoch_plan

    def spy_setup(self: Method, ctx: MethodContext) -> None:
        seen["ctx"].append(ctx)
        seen["instances"].append(self)
        setup(self, ctx)

    def spy_training_step(self: Method, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        seen["train"].append((batch.idx.detach().cpu(), batch.target.detach().cpu()))
        return training_step(self, model, batch, epoch)

    def spy_after_step(self: Method, batch: Batch, out: StepOutput, epoch: int) -> None:
        seen["after"].append((batch.idx.detach().cpu(), batch.target.detach().cpu()))
        after_step(self, batch, out, epoch)

    def spy_epoch_plan(self: Method, epoch: int, seed: int) -> EpochPlan | None:
        plan = epoch_plan(self, epoch, seed)
        seen["plans"][epoch] = plan
        return plan

    monkeypatch.setattr(cls, "setup", spy_setup)
    monkeypatch.setattr(cls, "training_step", spy_training_step)
    monkeypatch.setattr(cls, "after_step", spy_after_step)
    monkeypatch.setattr(cls, "epoch_plan", spy_epoch_plan)

    result = run_experiment(cfg, run_dir=tmp_path)

    assert result["status"] == "finished"
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    for record in result["history"]:
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float)}
        assert math.isfinite(record["train/loss"]), f"{name}: loss {record['train/loss']}"
        # Shares over an empty subset (e.g. recovery/detect_precision while no target has left
        # its given label) are NaN by design (noisybench.metrics); nothing else may be.
        bad = {
            key: v
            for key, v in numbers.items()
            if not math.isfinite(v)
            and not (math.isnan(v) and key.startswith(("recovery/", "memorisation/")))
        }
        assert not bad, f"{name}: non-finite numbers in epoch {record['epoch']}: {bad}"
        assert all(math.isfinite(record[key]) for key in ("test/acc", "test/nll", "test/ece"))

    # Only the noisy labels reach the method.
    clean = digits.train_labels
    noisy = torch.from_numpy(np.load(tmp_path / LABEL_FILE))
    assert 0.3 < (noisy != clean).float().mean() < 0.6  # the check below can tell them apart
    (ctx,) = seen["ctx"]
    assert torch.equal(ctx.noisy_labels.cpu(), noisy)
    # an epoch the method lays out itself (Method.epoch_plan) has its plan's steps
    plans = [seen["plans"].get(epoch) for epoch in range(len(result["history"]))]
    steps = sum(ctx.steps_per_epoch if p is None else p.steps for p in plans)
    assert len(seen["train"]) == len(seen["after"]) == steps
    for idx, target in seen["train"] + seen["after"]:
        assert torch.equal(target, noisy[idx]), f"{name} got a Batch.target that is not noisy"
    (method,) = seen["instances"]
    k = digits.num_classes
    leaks = [t.shape for t in all_tensors(method) if holds_labels(t, clean, k)]
    assert leaks == [], f"{name} keeps the clean labels in a tensor of shape {leaks}"
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["method"]
    assert not [key for key, t in saved.items() if holds_labels(t, clean, k)]


@pytest.mark.parametrize("path", METHODS)
def test_gradients_reach_the_model(
    path: Path, request: pytest.FixtureRequest, digits: ImageData
) -> None:
    name = path.stem
    cfg = method_cfg(path, request)
    parts = build(cfg, digits, wrong_labels(digits.train_labels, digits.num_classes))
    batches = epoch_batches(parts, 0)
    train_step(parts, next(batches), 0)
    batch = next(batches)  # the second batch: DLB's carried samples are distilled here
    out = parts.method.training_step(parts.model, batch, 0)
    assert out.loss.dim() == 0 and bool(torch.isfinite(out.loss))
    assert out.logits.shape[1] == digits.num_classes
    assert out.logits.shape[0] <= batch.size
    parts.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    trainable = parts.trainable()
    assert trainable
    for pname, param in trainable:
        if any(part in pname for part in WARM_UP_ONLY_UNUSED.get(name, ())):
            continue
        assert param.grad is not None, f"{name}: no gradient reaches {pname}"
        assert bool(torch.isfinite(param.grad).all()), f"{name}: non-finite gradient of {pname}"
        assert bool((param.grad != 0).any()), f"{name}: zero gradient of {pname}"


@pytest.mark.parametrize("path", METHODS)
def test_resume_is_identical(path: Path, request: pytest.FixtureRequest, digits: ImageData) -> None:
    name = path.stem
    cfg = method_cfg(path, request)
    noisy = wrong_labels(digits.train_labels, digits.num_classes)
    a = build(cfg, digits, noisy)
    for batch in epoch_batches(a, 0):
        train_step(a, batch, 0)
    a.method.on_epoch_end(0)
    batches = epoch_batches(a, 1)
    train_step(a, next(batches), 1)

    ckpt = roundtrip(
        {
            "model": a.model.state_dict(),
            "method": a.method.state_dict(),
            "optimizer": a.optimizer.state_dict(),
            "scheduler": a.scheduler.state_dict(),
            "rng": rng_state(),
        }
    )
    train_step(a, next(batches), 1)  # carry on without stopping

    b = build(cfg, digits, noisy)  # fresh objects, same context
    b.model.load_state_dict(ckpt["model"])
    b.method.load_state_dict(ckpt["method"])
    b.optimizer.load_state_dict(ckpt["optimizer"])
    b.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    train_step(b, next(epoch_batches(b, 1, start_step=1)), 1)

    params_a, params_b = dict(a.trainable()), dict(b.trainable())
    assert params_a.keys() == params_b.keys()
    for pname in params_a:
        assert torch.equal(params_a[pname], params_b[pname]), f"{name}: parameter {pname} differs"
    state_a, state_b = a.method.state_dict(), b.method.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), f"{name}: method state {key} differs"
    # The clean labels never reach the method's state (its only labels are wrong everywhere).
    k = digits.num_classes
    assert not [t.shape for t in all_tensors(a.method) if holds_labels(t, digits.train_labels, k)]
