"""The public Method contract: everything a training objective may see and do.

A method is an ``nn.Module`` so that its per-sample stores (registered buffers) travel with
``state_dict()`` into every checkpoint. The engine owns the model's forward passes for
evaluation, ``backward``, the optimizer, the scheduler and AMP; a method only turns a
:class:`Batch` into a loss and keeps whatever per-sample state it needs, addressed by the
stable dataset indices in ``Batch.idx``.

What a method never sees: the clean labels. ``Batch.target`` holds the *noisy* labels, and
so does the ``noisy_labels`` tensor handed to :meth:`Method.setup`.

A new method is one Python file with a subclass of :class:`Method` and one YAML file under
``conf/method/`` whose ``_target_`` names the class; see docs/extending.md, "A method".
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Batch",
    "EpochPlan",
    "Method",
    "MethodContext",
    "SampleStore",
    "StepOutput",
    "kl_from_log",
    "kl_to_target",
    "label_rows",
    "resolve_dtype",
    "sharpen",
    "soft_cross_entropy",
    "uniform_prior_penalty",
]


@dataclass(frozen=True)
class Batch:
    """One training mini-batch, already on the training device.

    Attributes:
        idx: ``(B,)`` long tensor of stable dataset indices (for per-sample state).
        target: ``(B,)`` long tensor of the *noisy* labels.
        views: exactly the views the method declared in :attr:`Method.views`, each a
            normalised float tensor ``(B, C, H, W)`` made from the same images in the
            same order, each with its own random augmentation.
        carried: the first ``carried`` samples repeat samples of the previous batch (the last
            ``carried`` fresh samples of that batch, same order, freshly augmented); set by
            the loader when the method asks for ``carry_previous > 0`` (DLB), else 0.
        parts: for an epoch the method laid out (:meth:`Method.epoch_plan`), the name and row
            count of each part of the batch, in order (this process's rows); empty otherwise.
        step: the step within the epoch (0-based).
    """

    idx: Tensor
    target: Tensor
    views: dict[str, Tensor]
    carried: int = 0
    parts: tuple[tuple[str, int], ...] = ()
    step: int = 0

    @property
    def size(self) -> int:
        return int(self.idx.shape[0])

    def part(self, name: str) -> slice:
        """The rows of part ``name`` of a planned batch (an empty slice when the part has no
        rows in this step, e.g. a labelled stream that ran out).

        Raises:
            KeyError: the epoch has no part of that name.
        """
        start = 0
        for key, count in self.parts:
            if key == name:
                return slice(start, start + count)
            start += count
        raise KeyError(f"the batch has no part {name!r}; its parts: {[k for k, _ in self.parts]}")


@dataclass(frozen=True)
class EpochPlan:
    """An epoch whose steps the method lays out itself (:meth:`Method.epoch_plan`).

    The reference codes of the semi-supervised methods iterate over loaders of their own
    lengths (DivideMix's labelled loader of ``|L| / B`` steps with an unlabelled iterator
    restarted when exhausted; OT-Filter's and CSOT's MixMatch / FixMatch epochs). A plan says
    how many ``steps`` the epoch has and, per named part, a flat sequence of sample indices
    consumed ``per_step`` at a time: step ``s`` trains on rows
    ``indices[s * per_step : (s + 1) * per_step]`` of every part (fewer, or none, when a part
    runs out), concatenated in the order of ``parts``; the views are applied to all of them.
    A restarted iterator is the method's to write (concatenate permutations).

    Attributes:
        steps: optimizer steps of the epoch (>= 1).
        parts: ``{name: (int64 index tensor (M,), per_step)}``; indices into the training set.
    """

    steps: int
    parts: dict[str, tuple[Tensor, int]]

    def rows(self, step: int) -> list[tuple[str, Tensor]]:
        """The ``(name, indices)`` of each part at ``step`` (global, before any sharding)."""
        out = []
        for name, (indices, per_step) in self.parts.items():
            out.append((name, indices[step * per_step : (step + 1) * per_step]))
        return out


@dataclass
class StepOutput:
    """What :meth:`Method.training_step` returns.

    Attributes:
        loss: scalar tensor the engine back-propagates.
        logits: ``(B, K)`` logits of the main (first declared) view for the batch's samples,
            used by the engine for training accuracy; may keep its graph.
        extras: scalar tensors averaged over the epoch and logged under ``train/<name>``.
            Keep them as tensors: the engine converts to numbers once per epoch.
        state: anything the method wants to pass from ``training_step`` to ``after_step``
            (e.g. the detached probabilities of the forward pass).
    """

    loss: Tensor
    logits: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodContext:
    """Facts about the run that a method may size its state by.

    Attributes:
        num_samples: size of the training set (per-sample stores are ``num_samples`` long).
        num_classes: K.
        noisy_labels: ``(N,)`` long tensor of the given (noisy) training labels, on device.
        epochs: total number of training epochs.
        steps_per_epoch: optimizer steps in one epoch.
        device: the training device.
        build_model: builds a fresh, randomly initialised model of the run's architecture on
            ``device`` (for methods that train several models, e.g. an ensemble; the caller
            seeds the RNG as it wishes before calling it).
    """

    num_samples: int
    num_classes: int
    noisy_labels: Tensor
    epochs: int
    steps_per_epoch: int
    device: torch.device
    build_model: Callable[[], nn.Module] | None = None

    def build_models(self, count: int, seed: int | None, owner: str) -> list[nn.Module]:
        """``count`` fresh models of the run's architecture, model ``j`` (1-based) initialised
        from seed ``seed + j`` (``seed`` None: drawn from torch's RNG), without disturbing
        the global RNG streams the run draws from afterwards (an ensemble's members,
        Co-teaching's and DivideMix's second network).

        Raises:
            RuntimeError: the context has no ``build_model`` (``owner`` names the method).
        """
        if self.build_model is None:
            raise RuntimeError(f"{owner} needs MethodContext.build_model for its extra networks")
        devices = []
        if self.device.type == "cuda":
            index = self.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices):
            base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
            models = []
            for j in range(1, count + 1):
                torch.manual_seed(base + j)
                models.append(self.build_model())
        return models


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every training objective (Cross-entropy, BSD, BSD+, baselines).

    Subclasses set :attr:`views` and implement :meth:`training_step`; everything else has
    a sensible default. Per-sample stores are created in :meth:`setup` with
    ``self.register_buffer`` so that checkpoints carry them.

    Class attributes a subclass may set:
        views: keys of the augmented views the method needs; the data layer builds exactly
            these. A key is ``<kind>`` or ``<kind>_<tag>`` with kind ``"plain"``
            (normalisation only), ``"weak"`` (random crop + flip) or ``"strong"``
            (AutoAugment + random erasing); every key is an independent draw, e.g.
            ``("weak", "strong_1", "strong_2")``. The first one is the main view. May be set
            per instance in ``__init__`` when it depends on the config.
        carry_previous: fraction of the previous batch that the loader appends to the next
            one, freshly augmented (DLB uses 1.0: the whole previous batch, as its reference
            code does); 0 for ordinary batches.
        drop_last: the loader drops each epoch's last, smaller batch (Co-teaching's code
            does, ``drop_last=True``); ``False`` for every method by default. May be set per
            instance in ``__init__``.
    """

    views: ClassVar[tuple[str, ...]] = ("weak",)
    carry_previous: ClassVar[float] = 0.0
    drop_last: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.num_classes: int = 0

    def network(self, model: nn.Module) -> nn.Module:
        """The network trained, evaluated and checkpointed in place of ``model`` (a freshly
        built network of the run's architecture). Called once for every such network (the
        run's model and each ``MethodContext.build_model()`` network), before :meth:`setup`,
        the optimizer and any DistributedDataParallel wrapper.

        A method with heads of its own (OT-Filter's 512 -> 128 -> K head, CSOT's SimSiam
        projector and predictor, DULC's contrastive projection) returns a module that holds
        ``model`` and its heads; every architecture here exposes ``forward_features``,
        ``num_features`` and its final linear ``head``. The module's ``forward(x)`` must
        return the logits (evaluation, suites); it may take keyword arguments that
        :meth:`training_step` passes (they pass through DistributedDataParallel). Its
        parameters are the engine's to train. Default: ``model``."""
        return model

    def setup(self, ctx: MethodContext) -> None:
        """Allocate per-sample state. Called once, before training and before any
        ``load_state_dict`` on resume; must be deterministic given ``ctx``."""
        self.num_classes = ctx.num_classes

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """Forward the declared views through ``model`` and return the loss."""

    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """Called by the engine before the first step of every epoch that starts at step 0
        (not when a run resumes in the middle of an epoch), e.g. for DivideMix's per-epoch
        division of the training set.

        ``evaluate_train(module)`` returns the ``(N, D)`` float outputs of ``module`` in eval
        mode over the whole training set, plain (un-augmented) view, in index order (the
        logits for ``model``; features for a module of the method's that returns them); it
        restores the module's mode. ``model`` is the network :meth:`network` returned. With
        several processes every process gets the whole matrix. Whatever this hook computes
        must be stored in registered buffers, so that a checkpoint written mid-epoch carries
        it. Default: nothing.
        """

    def epoch_plan(self, epoch: int, seed: int) -> EpochPlan | None:
        """The steps of ``epoch`` when the method lays them out itself (labelled and
        unlabelled streams of their own lengths, see :class:`EpochPlan`); ``None`` (the
        default): the ordinary epoch, every training sample once in a ``(seed, epoch)`` order.

        Called after :meth:`on_epoch_start`, and again when a run resumes in the middle of
        ``epoch``, so it must be a pure function of the method's registered buffers and of
        ``seed`` (a 63-bit seed of ``(run seed, epoch)``; draw shuffles from
        ``torch.Generator().manual_seed(seed)`` on the CPU). The number of steps may change
        from epoch to epoch: the engine keeps the learning-rate schedule on its per-epoch
        course (at every epoch boundary the same value as with ordinary epochs).
        """
        return None

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        """Called after the optimizer step (e.g. BSD's Eq. 5 target update). Default: nothing."""

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        """Called once after each training epoch; returns scalars to log. Default: none."""
        return {}

    def soft_targets(self) -> Tensor | None:
        """The method's current per-sample target distributions ``(N, K)``, if it keeps any.

        The engine uses them for the label-recovery diagnostics (it alone knows the clean
        labels). Default: ``None``.
        """
        return None

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Logits used for evaluation. Default: ``model(images)``; an ensemble overrides it."""
        return model(images)

    def extra_modules(self) -> list[nn.Module]:
        """Modules besides ``model`` whose parameters the engine's optimizer must train
        (e.g. the other members of an ensemble, built in :meth:`setup` with
        ``ctx.build_model``). Called once, after :meth:`setup`. Default: none."""
        return []


# Part of the public method API (baselines import only noisybench.method): the soft-target
# losses (noisybench.losses; ``soft_cross_entropy`` used to live here) and the per-sample
# store (noisybench.stores).
from noisybench.losses import (  # noqa: E402
    kl_from_log,
    kl_to_target,
    sharpen,
    soft_cross_entropy,
    uniform_prior_penalty,
)
from noisybench.stores import SampleStore, label_rows, resolve_dtype  # noqa: E402
