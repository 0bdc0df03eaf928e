"""Deep ensemble of M models of the run's architecture, trained jointly in one run.

Reference: Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", NeurIPS 2017 (random initialisation as the only source of
diversity; the prediction is the uniform mixture of the members' predictive distributions;
no adversarial training here). The BSD paper (Section 4.2, Table 1) reports "an ensemble of three
models" as a reference point and distils it with :mod:`baselines.kd`.

Member 0 is the engine's ``model``; members ``1 .. M-1`` are built in :meth:`setup` with
``MethodContext.build_model`` under distinct seeds and live in the ``members``
:class:`~torch.nn.ModuleList`, so they are in ``method.state_dict()`` (checkpoint keys
``"method"/"members.<j-1>.<param>"`` for member ``j``) and the engine hands their parameters
to the optimizer through :meth:`extra_modules`.

Objective: the sum of the members' cross-entropies on the noisy labels,
``L = sum_j CE(f_j(x_j), y~)``. Because no parameter is shared and optimizers act per
parameter, the sum trains each member exactly as if it were trained alone with the same
optimizer settings (a mean would scale SGD's learning rate by 1/M). Caveat: a global
gradient-norm clip, if configured, would couple the members.

Prediction (Lakshminarayanan et al.'s uniform mixture): ``log( (1/M) sum_j softmax(f_j(x)) )``,
returned as logits, so the engine's accuracy, ECE and NLL are those of the averaged
distribution.

Choices:

- ``independent_views=True`` (default): member ``j`` sees its own random augmentation of the
  batch (views ``weak``, ``weak_1``, ..., ``weak_{M-1}``), as separately trained models
  would; the batch order is shared. ``False`` feeds every member the same ``weak`` view.
- Member seeds: ``seed`` (an int) seeds member ``j`` with ``seed + j``; ``None`` (default)
  draws one base seed from the global torch generator without advancing it, so the members
  are deterministic given the run's seed and differ between seeds of a multi-seed study.
- The members follow ``model.training`` in every call (train mode for the step, eval mode for
  evaluation), whether or not the engine switches the method's mode.
- ``StepOutput.logits`` are member 0's logits (training accuracy of the engine's model); the
  per-member losses are logged as ``train/ce_<j>``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput

__all__ = ["Ensemble", "mean_probability_logits"]


def mean_probability_logits(logits: list[Tensor]) -> Tensor:
    """``log((1/M) sum_j softmax(logits_j))``: the ensemble's predictive distribution as
    logits (the uniform mixture of Lakshminarayanan et al. 2017), computed stably with
    logsumexp."""
    stacked = torch.stack([F.log_softmax(z.float(), dim=-1) for z in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


class Ensemble(Method):
    """An ensemble of ``members`` models trained jointly; predicts the mean softmax.

    Args:
        members: ensemble size M (the BSD paper: 3), counting the engine's model.
        independent_views: give each member its own random weak augmentation.
        seed: base seed of the extra members' initialisation (``None``: derived from the
            run's seed).
    """

    def __init__(
        self, members: int = 3, independent_views: bool = True, seed: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise UserError(f"method.members={members} must be a whole number >= 1; use e.g. 3")
        self.size = int(members)
        self.independent_views = bool(independent_views)
        self.seed = seed
        if self.independent_views:
            self.views = ("weak", *(f"weak_{j}" for j in range(1, self.size)))
        else:
            self.views = ("weak",)
        self.members = nn.ModuleList()

    def _view(self, j: int) -> str:
        return self.views[j] if self.independent_views else "weak"

    def setup(self, ctx: MethodContext) -> None:
        """Build members ``1 .. M-1`` with ``ctx.build_model`` under seeds ``base + j``."""
        super().setup(ctx)
        members = ctx.build_models(self.size - 1, self.seed, "Ensemble") if self.size > 1 else []
        self.members = nn.ModuleList(members)

    def extra_modules(self) -> list[nn.Module]:
        """Members ``1 .. M-1``; the engine trains their parameters with the model's."""
        return list(self.members)

    def _all(self, model: nn.Module) -> list[nn.Module]:
        for member in self.members:
            if member.training != model.training:
                member.train(model.training)
        return [model, *self.members]

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """Sum of the members' cross-entropies, each on its own view."""
        losses = []
        first = None
        for j, member in enumerate(self._all(model)):
            logits = member(batch.views[self._view(j)])
            if first is None:
                first = logits
            losses.append(F.cross_entropy(logits.float(), batch.target))
        loss = torch.stack(losses).sum()
        extras = {f"ce_{j}": value.detach() for j, value in enumerate(losses)}
        return StepOutput(loss=loss, logits=first, extras=extras)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """``log`` of the members' mean softmax (uniform mixture of the members)."""
        return mean_probability_logits([member(images) for member in self._all(model)])
