"""Learning-rate schedules, stepped once per optimizer step by the engine.

Each builder takes ``(optimizer, total_steps, steps_per_epoch, **config)`` and returns a
``torch.optim.lr_scheduler.LRScheduler``; configs name them with ``_target_`` under
``optim.scheduler`` (see ``conf/optim``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from noisybench.errors import UserError

__all__ = [
    "Beta1Rampdown",
    "adam_beta1",
    "constant",
    "cosine",
    "cosine_restarts",
    "gaussian_ramps",
    "linear_decay",
    "multistep",
    "one_cycle",
    "with_beta1_rampdown",
]


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    """Cosine annealing (Loshchilov & Hutter 2017) from the base lr to ``min_lr_ratio * lr``
    over the run, after an optional linear warm-up of ``warmup_epochs`` (ImageNet: 5)."""
    warmup = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(1.0, progress)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def one_cycle(  # noqa: PLR0913
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> LRScheduler:
    """The 1cycle policy (Smith & Topin 2019) with the optimizer's lr as the maximum lr, as the
    BSD paper's clean CIFAR/TinyImageNet runs use (Appendix A.1: Adam, max lr 0.01).

    Every default is PyTorch ``OneCycleLR``'s: the lr rises from ``lr / div_factor`` to ``lr``
    over the first ``pct_start`` of the steps and falls to ``lr / (div_factor *
    final_div_factor)`` (``anneal_strategy`` ``"cos"`` or ``"linear"``), while the momentum
    (Adam's beta1, SGD's momentum) cycles inversely between ``max_momentum`` and
    ``base_momentum`` when ``cycle_momentum`` is true, as Smith's policy does.
    """
    if anneal_strategy not in ("cos", "linear"):
        raise UserError(
            f"optim.scheduler.anneal_strategy={anneal_strategy!r} is unknown; use cos or linear"
        )
    if not 0.0 < float(pct_start) < 1.0:
        raise UserError(f"optim.scheduler.pct_start={pct_start} must lie strictly between 0 and 1")
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=max(1, total_steps),
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=bool(cycle_momentum),
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """A constant learning rate."""
    return LambdaLR(optimizer, lambda step: 1.0)


def multistep(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    milestones: list[int] | tuple[int, ...] = (),
    gamma: float = 0.1,
) -> LRScheduler:
    """The lr times ``gamma`` at each 0-based epoch of ``milestones`` (PyTorch ``MultiStepLR``
    stepped once per epoch, as GCE's and ELR's code do: ``milestones=[40, 80]``)."""
    marks = sorted(int(m) for m in milestones)
    spe = max(1, int(steps_per_epoch))
    return LambdaLR(optimizer, lambda step: gamma ** sum(step // spe >= m for m in marks))


def cosine_restarts(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    period_epochs: int = 10,
    eta_min: float = 0.0,
) -> LRScheduler:
    """Cosine annealing with warm restarts every ``period_epochs`` epochs down to the absolute
    lr ``eta_min`` (PyTorch ``CosineAnnealingWarmRestarts(T_0, eta_min)`` stepped once per
    epoch, as ELR's CIFAR-10 config: ``T_0 = 10, eta_min = 0.001``)."""
    base = [group["lr"] for group in optimizer.param_groups]
    spe = max(1, int(steps_per_epoch))
    period = max(1, int(period_epochs))

    def factor_for(lr0: float):
        def factor(step: int) -> float:
            t = (step // spe) % period
            return (eta_min + (lr0 - eta_min) * 0.5 * (1 + math.cos(math.pi * t / period))) / lr0

        return factor

    return LambdaLR(optimizer, [factor_for(lr0) for lr0 in base])


class _LinearDecay(LambdaLR):
    """:func:`linear_decay`'s schedule; also sets Adam's beta1 from the decay epoch on. Holds
    numbers only, so its state dict pickles into a checkpoint."""

    def __init__(
        self,
        optimizer: Optimizer,
        spe: int,
        n: int,
        decay_start: int,
        offset: int,
        beta1: tuple[float | None, float | None],
    ) -> None:
        self._spe, self._n, self._start, self._offset = spe, n, decay_start, offset
        self._beta1 = beta1
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        c = step // self._spe + self._offset
        return 1.0 if c < self._start else (self._n - c) / (self._n - self._start)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["lr_lambdas"] = [None]  # a bound method of this object: rebuilt, not saved
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        state.pop("lr_lambdas", None)
        self.__dict__.update(state)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        super().step(epoch)
        c = self.last_epoch // self._spe + self._offset
        beta1 = self._beta1[1] if c >= self._start else self._beta1[0]
        if beta1 is None:
            return
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])


def linear_decay(  # noqa: PLR0913
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    decay_start: int = 80,
    epoch_offset: int = 1,
    beta1_before: float | None = None,
    beta1_after: float | None = None,
) -> LRScheduler:
    """Co-teaching's plan (bhanML/Co-teaching ``main.py``): with the code's epoch ``c = e +
    epoch_offset`` (its loop starts at 1: offset 1) and ``n = epochs + epoch_offset`` (its
    ``n_epoch``), the lr is ``lr`` before ``decay_start`` and ``(n - c) / (n - decay_start) *
    lr`` from it on, set once per epoch; Adam's beta1 is ``beta1_before`` (code 0.9) before and
    ``beta1_after`` (code 0.1) from ``decay_start`` on (``None``: left alone)."""
    spe = max(1, int(steps_per_epoch))
    n = -(-int(total_steps) // spe) + int(epoch_offset)
    return _LinearDecay(
        optimizer, spe, n, int(decay_start), int(epoch_offset), (beta1_before, beta1_after)
    )


def gaussian_ramps(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    rampup_epochs: int = 80,
    rampdown_epochs: int = 50,
) -> LRScheduler:
    """Temporal Ensembling's lr plan (Laine & Aila 2017, Sec. 3 / Appendix; s-laine/tempens
    ``train.py`` ``rampup`` and ``rampdown``), set once per epoch ``e`` (0-based) of ``E``:
    ``lr * up(e) * down(e)`` with ``up(e) = exp(-5 (1 - e / rampup_epochs)^2)`` for
    ``e < rampup_epochs`` (so ``exp(-5)`` at epoch 0), else 1, and ``down(e) = exp(-(d / 2)^2
    / rampdown_epochs)`` with ``d = e - (E - rampdown_epochs)`` over the last
    ``rampdown_epochs`` epochs, else 1. Adam's beta1 follows the same ramp-down through
    ``optim.beta1_rampdown_epochs`` (:func:`adam_beta1`)."""
    spe = max(1, int(steps_per_epoch))
    epochs = -(-int(total_steps) // spe)
    up_len, down_len = int(rampup_epochs), int(rampdown_epochs)

    def factor(step: int) -> float:
        e = step // spe
        up = math.exp(-5.0 * (1.0 - e / up_len) ** 2) if e < up_len else 1.0
        d = e - (epochs - down_len)
        down = math.exp(-((d * 0.5) ** 2) / down_len) if down_len > 0 and d >= 0 else 1.0
        return up * down

    return LambdaLR(optimizer, factor)


def adam_beta1(
    base_beta1: float, final_beta1: float, epoch: int, epochs: int, rampdown_epochs: int
) -> float:
    """Adam's beta1 annealed towards ``final_beta1`` over the last ``rampdown_epochs`` epochs.

    Temporal Ensembling (Laine & Aila 2017), as their original code does it: with
    ``d = epoch - (epochs - rampdown_epochs)`` (0 at the first ramp-down epoch, so beta1 is
    still ``base_beta1`` there) the ramp weight is ``exp(-(d / 2)^2 / rampdown_epochs)``
    (for 50 ramp-down epochs this equals ``exp(-12.5 (d / 50)^2)``). The BSD paper
    (Appendix A.1) anneals it "to zero during the final 50 epochs". ``epoch`` is 0-based.
    """
    if rampdown_epochs <= 0 or epoch < epochs - rampdown_epochs:
        return base_beta1
    d = epoch - (epochs - rampdown_epochs)
    ramp = math.exp(-((d * 0.5) ** 2) / rampdown_epochs)
    return final_beta1 + (base_beta1 - final_beta1) * ramp


class Beta1Rampdown:
    """A schedule that also anneals Adam's beta1 at epoch boundaries (:func:`adam_beta1`).

    Wraps the learning-rate schedule ``inner`` (stepped once per optimizer step, as every
    schedule here) and, after each of its steps, sets every param group's beta1 for the epoch
    the next step belongs to: ``final + (b - final) * ramp(epoch)``, where ``b`` is the
    optimizer's base beta1, or, when ``inner`` cycles momentum itself (1cycle with
    ``cycle_momentum``), the beta1 it has just set, so the ramp-down scales the cycled value
    instead of being overwritten by it. Its state is ``inner``'s (the step count is
    ``inner.last_epoch``), so a resumed run continues exactly. Temporal Ensembling asks for it
    through ``conf/method_optim/te.yaml``; the engine knows nothing about it.
    """

    def __init__(
        self,
        inner: LRScheduler,
        epochs: int,
        steps_per_epoch: int,
        rampdown_epochs: int,
        final_beta1: float,
    ) -> None:
        self.inner = inner
        self.optimizer = inner.optimizer
        self.epochs, self.steps_per_epoch = int(epochs), max(1, int(steps_per_epoch))
        self.rampdown_epochs, self.final_beta1 = int(rampdown_epochs), float(final_beta1)
        self.cycles = bool(getattr(inner, "cycle_momentum", False))
        self.base_beta1 = [float(g["betas"][0]) for g in self._groups()]
        self._apply()

    def _groups(self) -> list[dict]:
        # Looked up each time: optimizer.load_state_dict replaces the param-group dicts.
        return [g for g in self.optimizer.param_groups if "betas" in g]

    def _apply(self) -> None:
        epoch = min(int(self.inner.last_epoch) // self.steps_per_epoch, self.epochs - 1)
        for group, base in zip(self._groups(), self.base_beta1, strict=True):
            start = float(group["betas"][0]) if self.cycles else base
            beta1 = adam_beta1(start, self.final_beta1, epoch, self.epochs, self.rampdown_epochs)
            group["betas"] = (beta1, group["betas"][1])

    def step(self) -> None:
        self.inner.step()
        self._apply()

    def get_last_lr(self) -> list[float]:
        return self.inner.get_last_lr()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        # The optimizer's own state (loaded beside this one) holds the betas of the step it
        # was saved at; a cycling inner schedule would be ramped twice by applying again.
        self.inner.load_state_dict(state)
        if not self.cycles:
            self._apply()


def with_beta1_rampdown(
    scheduler: LRScheduler,
    epochs: int,
    steps_per_epoch: int,
    rampdown_epochs: int,
    final_beta1: float,
) -> LRScheduler | Beta1Rampdown:
    """``scheduler`` itself, or wrapped in :class:`Beta1Rampdown` when ``rampdown_epochs`` > 0
    (the ``optim.beta1_rampdown_epochs`` key)."""
    if rampdown_epochs <= 0:
        return scheduler
    return Beta1Rampdown(scheduler, epochs, steps_per_epoch, rampdown_epochs, final_beta1)
