"""SWAG teachers (Maddox, Izmailov, Garipov, Vetrov & Wilson, "A Simple Baseline for Bayesian
Uncertainty in Deep Learning", NeurIPS 2019).

Two halves:

* :class:`SWAGCollector` (``method=swag``): wraps the teacher's training objective (default
  cross-entropy) and, at the end of each of the last epochs (from ``start``), records the
  weights ``theta_i`` (the parameters, flattened in ``model.parameters()`` order) into
  the running first and second moments and a ring of the last ``rank`` deviations
  (Maddox et al., Section 4, Algorithm 1)::

      mean  <- (n mean + theta_i) / (n + 1)
      sq    <- (n sq + theta_i^2) / (n + 1)
      D[:, i mod rank] <- theta_i - mean          (the *updated* running mean)

  It only reads the model: the wrapped method's steps, state and RNG use are unchanged, so
  the run trains exactly as without the wrapper (tests/test_teachers.py checks the history).
  The moments are buffers of the method, so they are in every checkpoint and survive resume.
* :class:`SWAGTeacher` (``+teacher=swag`` on ``method=kd``): reads them from the run's
  ``checkpoint.pt`` and draws ``S`` weight samples from the Gaussian with mean ``mean`` and
  covariance ``scale * (Sigma_diag + D D^T / (K - 1)) / 2`` with
  ``Sigma_diag = diag(sq - mean^2)`` (Maddox et al., Eq. 1-3 and the sampling of their
  Algorithm 1, ``K`` the number of deviation columns):

      theta~ = mean + sqrt(scale) * ( Sigma_diag^(1/2) z1 / sqrt(2) + D z2 / sqrt(2 (K - 1)) )

  with ``z1 ~ N(0, I_d)``, ``z2 ~ N(0, I_K)``; ``scale = 0.5`` is the value the authors use
  in their experiments. For every sample the BatchNorm running statistics are recomputed
  (reset, then one pass in train mode over the training set, each batch weighted by its
  size: their ``bn_update``) before the sample predicts.

Choices (documented in docs/teachers.md): the snapshots are taken at epoch ends of the
teacher's own schedule (no separate constant-lr SWA phase; with a schedule that decays to 0
the collected epochs are close together and the posterior is narrow: start collecting
before the decay, or use a constant/cyclic tail); BatchNorm is recomputed on the plain
(un-augmented) view of the training set; with several processes each recomputes on its block
and the statistics are averaged over processes.

Cost: memory ``(rank + 2) x d`` floats in the teacher run's checkpoint (d parameters); the
store costs ``2 S`` passes over the training set (BatchNorm, then prediction; ``S`` without
BatchNorm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from noisybench import distributed as dist
from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput
from noisybench.teachers.base import Evaluate, Teacher, TeacherSource, single_network

__all__ = ["SWAGCollector", "SWAGTeacher", "bn_layers", "swag_sample"]

_KEYS = ("swag_mean", "swag_sq_mean", "swag_dev", "swag_n")


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel / torch.compile wrapper."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


class SWAGCollector(Method):
    """Trains with ``base`` and collects SWAG moments at the ends of the last epochs.

    Args:
        base: the training objective (a :class:`Method`; Hydra builds it from its config).
        start: collect at the end of every epoch ``e`` (0-based) with ``e >= start * epochs``
            (Maddox et al. collect over the last 25 % of their budget; default 0.5 here,
            because the noisybench schedules decay to 0).
        rank: ``K``, the number of deviation columns kept (Maddox et al.: 20).
    """

    def __init__(self, base: Method, start: float = 0.5, rank: int = 20) -> None:
        super().__init__()
        if not isinstance(base, Method):
            raise UserError("method.base must be a method config (e.g. conf/method/ce.yaml)")
        if type(base).carry_previous:
            raise UserError("method=swag cannot wrap a method that carries batches (DLB)")
        if not 0.0 <= float(start) < 1.0:
            raise UserError(f"method.start={start} must be in [0, 1); use e.g. 0.5")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UserError(f"method.rank={rank!r} must be a whole number >= 1; use e.g. 20")
        self.base = base
        self.views = base.views
        self.start = float(start)
        self.rank = int(rank)
        self.first_epoch = 0
        self._model: list[nn.Module] = []  # a plain list: not a submodule, not in state_dict

    def setup(self, ctx: MethodContext) -> None:
        """Set up ``base``; allocate the moments (the parameter count from one model built
        under a forked RNG)."""
        super().setup(ctx)
        self.base.setup(ctx)
        if ctx.build_model is None:
            raise RuntimeError("SWAGCollector needs MethodContext.build_model")
        devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            d = sum(p.numel() for p in ctx.build_model().parameters())
        self.first_epoch = math.ceil(self.start * ctx.epochs)
        if self.first_epoch >= ctx.epochs:
            self.first_epoch = ctx.epochs - 1
        dev = ctx.device
        self.register_buffer("swag_mean", torch.zeros(d, device=dev))
        self.register_buffer("swag_sq_mean", torch.zeros(d, device=dev))
        self.register_buffer("swag_dev", torch.zeros(self.rank, d, device=dev))
        self.register_buffer("swag_n", torch.zeros((), dtype=torch.long, device=dev))

    def extra_modules(self) -> list[nn.Module]:
        return self.base.extra_modules()

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if not self._model or self._model[0] is not model:
            self._model[:] = [model]
        return self.base.training_step(model, batch, epoch)

    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        self._model[:] = [model]
        self.base.on_epoch_start(model, epoch, evaluate_train)

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        self.base.after_step(batch, out, epoch)

    @torch.no_grad()
    def collect(self, model: nn.Module) -> None:
        """Add the weights of ``model`` to the moments (Algorithm 1 of Maddox et al.)."""
        theta = parameters_to_vector(_unwrap(model).parameters()).detach().float()
        n = self.swag_n.to(theta.dtype)
        self.swag_mean.mul_(n / (n + 1)).add_(theta / (n + 1))
        self.swag_sq_mean.mul_(n / (n + 1)).add_(theta * theta / (n + 1))
        column = torch.remainder(self.swag_n, self.rank)  # device index: no host sync
        self.swag_dev.index_copy_(0, column.reshape(1), (theta - self.swag_mean).unsqueeze(0))
        self.swag_n.add_(1)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        if epoch >= self.first_epoch:
            if not self._model:
                raise RuntimeError("SWAGCollector saw no training step before the epoch end")
            self.collect(self._model[0])
        logs = self.base.on_epoch_end(epoch)
        return {**logs, "swag_n": self.swag_n.float()}

    def soft_targets(self) -> Tensor | None:
        return self.base.soft_targets()

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        return self.base.predict(model, images)


def swag_sample(
    mean: Tensor, sq_mean: Tensor, dev: Tensor, scale: float = 0.5, diagonal_only: bool = False
) -> Tensor:
    """One weight sample from the SWAG Gaussian (see the module docstring), drawn from
    torch's global generator. ``dev``: ``(K, d)``, the deviation columns actually collected."""
    var = (sq_mean - mean * mean).clamp(min=1e-30)
    sample = var.sqrt() * torch.randn_like(mean)
    k = int(dev.shape[0])
    if not diagonal_only and k > 1:
        z2 = torch.randn(k, device=mean.device, dtype=mean.dtype)
        sample = (sample + dev.t().mv(z2) / math.sqrt(k - 1)) / math.sqrt(2.0)
    elif not diagonal_only:  # one snapshot: its deviation from the mean is 0
        sample = sample / math.sqrt(2.0)
    return mean + math.sqrt(scale) * sample


def bn_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _BNTrain(nn.Module):
    """Runs ``net`` with its BatchNorm layers in train mode, everything else in eval mode,
    whatever mode this wrapper is put in. Batch ``i`` of size ``b_i`` enters the running
    statistics with momentum ``b_i / (b_1 + ... + b_i)``, as in Maddox et al.'s
    ``bn_update``: the running mean is then the mean over all samples of the pass and the
    running variance the size-weighted mean of the batches' (unbiased) variances."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        layers = bn_layers(self.net)
        b = int(x.shape[0])
        for m in layers:
            m.train()
            m.momentum = b / (self.seen + b)
        self.seen += b
        try:
            return self.net(x)
        finally:
            for m in layers:
                m.eval()


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, train_pass: Evaluate) -> None:
    """Reset the BatchNorm statistics of ``net`` and recompute them over one pass of the
    training set in train mode (Maddox et al.'s ``bn_update``, see :class:`_BNTrain`)."""
    layers = bn_layers(net)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
    try:
        train_pass(_BNTrain(net))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
    if dist.world_size() > 1:
        for m in layers:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce_sum(buf).div_(dist.world_size())


class SWAGTeacher(Teacher):
    """``samples`` weight samples of the SWAG posterior of a ``method=swag`` run.

    Args:
        samples: ``S`` (Maddox et al.: 30).
        scale: covariance scale (Maddox et al.: 0.5).
        diagonal_only: SWAG-Diagonal (ignore the deviation columns).
        seed, store: see :class:`~noisybench.teachers.base.Teacher`.
    """

    kind = "swag"

    def __init__(
        self,
        samples: int = 30,
        scale: float = 0.5,
        diagonal_only: bool = False,
        seed: int = 0,
        store: bool = True,
    ) -> None:
        super().__init__(samples=samples, seed=seed, store=store)
        if not 0 <= float(scale) < math.inf:
            raise UserError(f"method.teacher.scale={scale!r} must be >= 0; use e.g. 0.5")
        self.scale = float(scale)
        self.diagonal_only = bool(diagonal_only)
        self.moments: dict[str, Tensor] = {}

    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        net = single_network(self.kind, sources)
        state = sources[0].checkpoint.get("method") or {}
        if any(key not in state for key in _KEYS):
            raise UserError(
                f"the teacher run {sources[0].run} holds no SWAG moments; train it with "
                "method=swag (which wraps cross-entropy by default)"
            )
        n = int(state["swag_n"])
        if n < 1:
            raise UserError(f"the teacher run {sources[0].run} collected no SWAG snapshot yet")
        d = sum(p.numel() for p in net.parameters())
        if int(state["swag_mean"].numel()) != d:
            raise UserError(f"the SWAG moments of {sources[0].run} do not fit the model")
        rank = int(state["swag_dev"].shape[0])
        self.moments = {
            "mean": state["swag_mean"].float(),
            "sq_mean": state["swag_sq_mean"].float(),
            "dev": state["swag_dev"][: min(n, rank)].float(),
        }
        self.networks = [net]

    def draw(self) -> Tensor:
        """One weight vector from the posterior (torch's global generator)."""
        m = self.moments
        return swag_sample(m["mean"], m["sq_mean"], m["dev"], self.scale, self.diagonal_only)

    def sample_logits(self, evaluate: Evaluate, train_pass: Evaluate) -> Iterator[Tensor]:
        net = self.networks[0]
        for _ in range(self.samples):
            vector_to_parameters(self.draw().to(next(net.parameters())), net.parameters())
            recompute_batchnorm(net, train_pass)
            yield evaluate(net)

    def passes(self) -> int:
        has_bn = bool(bn_layers(self.networks[0])) if self.networks else True
        return self.samples * (2 if has_bn else 1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale, "diagonal_only": self.diagonal_only}
