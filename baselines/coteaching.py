"""Co-teaching: two networks, each trained on the small-loss samples of the other.

Reference: Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, "Co-teaching: Robust Training of Deep
Neural Networks with Extremely Noisy Labels", NeurIPS 2018 (Algorithm 1); authors' code:
github.com/bhanML/Co-teaching (``loss.py`` ``loss_coteaching``, ``main.py`` schedule).

Per mini-batch (Algorithm 1, steps 4-8): both networks ``f`` (the engine's model) and ``g``
(built with ``MethodContext.build_model``, trained by the engine's optimizer through
:meth:`extra_modules`) compute per-sample cross-entropies on the batch; each keeps the
``floor((1 - R(e)) * B)`` samples of smallest loss (the code's ``int(remember_rate * B)``);
``f`` is updated on ``g``'s selection and ``g`` on ``f``'s. The loss handed to the engine is
the sum of the two (no shared parameters, so each network is trained as with its own
optimizer of the same settings).

Forget-rate schedule ``1 - R``, for the 0-based epoch ``e`` (``tau`` = ``forget_rate``, by
default the noise config's rate as the code's ``forget_rate = noise_rate``; ``T_k = 10``,
exponent ``c = 1``):

* ``schedule=code`` (default): the code's ``rate_schedule = np.ones(n_epoch) * tau;
  rate_schedule[:T_k] = np.linspace(0, tau**c, T_k)`` read at the code's epoch ``e + 1``: its
  training loop is ``for epoch in range(1, n_epoch)`` (epoch 0 only evaluates the random
  initialisation), so its first training epoch already forgets ``tau**c / (T_k - 1)`` (0.0556
  at tau 0.5: 120 of a batch of 128 kept, not 128) and ``tau`` is reached in our epoch
  ``T_k - 2``. The code therefore trains ``n_epoch - 1`` epochs (199 of its 200).
* ``schedule=code_epoch0``: the same linspace read at ``e`` (this project's reading before
  0.2.1, one epoch late against the code; kept for comparing old runs).
* ``schedule=paper``: ``tau * min((e / T_k)**c, 1)`` (Algorithm 1, step 9:
  ``R(T) = 1 - min(T^c tau / T_k, tau)``), reaching ``tau`` at epoch ``T_k``.

Paper/code disagreement exposed as ``code_double_mean``: the code divides the mean
cross-entropy of the selected samples by the number selected once more (``torch.sum(mean) /
num_remember``), which scales the gradient by ``1/num_remember``; harmless with its Adam
optimizer, but with SGD it divides the learning rate by about the batch size. Default
``false`` (the mean, as the paper's ``l(f, D)``); ``true`` reproduces the code.

The code's loader also has ``drop_last=True`` (390 steps of 128 per CIFAR epoch, not 391);
``drop_last: true`` asks the engine's loader for the same (default ``false``: every sample is
seen every epoch, as for every other method here).

Both networks see the same augmented view (the code uses the same images for both);
evaluation uses the engine's model ``f`` (the code reports both networks' accuracies).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput

__all__ = ["CoTeaching", "forget_rate_at", "small_loss_indices"]


def forget_rate_at(
    epoch: int,
    forget_rate: float,
    num_gradual: int = 10,
    exponent: float = 1.0,
    schedule: str = "code",
) -> float:
    """The forget rate ``1 - R`` used during 0-based ``epoch`` (see the module docstring)."""
    if schedule in ("code", "code_epoch0"):
        # The code's epoch: its training loop starts at 1 (``code``); ``code_epoch0`` is the
        # earlier reading that started it at 0.
        step = epoch + 1 if schedule == "code" else epoch
        if step < num_gradual:
            # np.linspace itself, so the kept count int((1 - rate) * B) is the code's bit for bit
            return float(np.linspace(0.0, forget_rate**exponent, num_gradual)[step])
        return forget_rate
    return forget_rate * min((epoch / num_gradual) ** exponent, 1.0)


def small_loss_indices(losses: Tensor, num_remember: int) -> Tensor:
    """Indices of the ``num_remember`` smallest entries of ``losses`` (ascending loss)."""
    return torch.argsort(losses.detach(), stable=True)[:num_remember]


class CoTeaching(Method):
    """Co-teaching of the engine's model and a second network of the same architecture.

    Args:
        forget_rate: ``tau`` (default in the YAML: ``${noise.rate}``, the code's choice).
        num_gradual: ``T_k`` (code: 10).
        exponent: ``c`` (code: 1).
        schedule: ``"code"``, ``"code_epoch0"`` or ``"paper"`` (see the module docstring).
        code_double_mean: divide the selected samples' mean loss by their number (the code).
        seed: seed of the second network's initialisation (``None``: derived from the run's
            seed without advancing the global generator).
        drop_last: drop each epoch's last, smaller batch, as the code's ``DataLoader`` does.
        view: the training view, ``"weak"`` (crop + flip, as every method here) or
            ``"plain"`` (no augmentation: the code's ``transforms.ToTensor()`` only).
    """

    views = ("weak",)

    def __init__(  # noqa: PLR0913
        self,
        forget_rate: float = 0.2,
        num_gradual: int = 10,
        exponent: float = 1.0,
        schedule: str = "code",
        code_double_mean: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        view: str = "weak",
    ) -> None:
        super().__init__()
        if not 0.0 <= float(forget_rate) < 1.0:
            raise UserError(
                f"method.forget_rate={forget_rate} must be in [0, 1); the code uses the noise rate"
            )
        if int(num_gradual) < 1 or float(exponent) <= 0:
            raise UserError(
                f"method.num_gradual={num_gradual} must be >= 1 and method.exponent={exponent} "
                "> 0; the code uses 10 and 1"
            )
        if schedule not in ("code", "code_epoch0", "paper"):
            raise UserError(
                f"method.schedule={schedule} is unknown; use code, code_epoch0 or paper"
            )
        self.forget_rate = float(forget_rate)
        self.num_gradual = int(num_gradual)
        self.exponent = float(exponent)
        self.schedule = schedule
        self.code_double_mean = bool(code_double_mean)
        self.seed = seed
        self.drop_last = bool(drop_last)
        if view not in ("weak", "plain"):
            raise UserError(f"method.view={view} is unknown; use weak or plain (the code's)")
        self.view = view
        self.views = (view,)
        self.peer = nn.ModuleList()

    def setup(self, ctx: MethodContext) -> None:
        """Build the second network with ``ctx.build_model`` under its own seed."""
        super().setup(ctx)
        self.peer = nn.ModuleList(ctx.build_models(1, self.seed, "CoTeaching"))

    def extra_modules(self) -> list[nn.Module]:
        return list(self.peer)

    def _second(self, model: nn.Module) -> nn.Module:
        net = self.peer[0]
        if net.training != model.training:
            net.train(model.training)
        return net

    def rate(self, epoch: int) -> float:
        return forget_rate_at(
            epoch, self.forget_rate, self.num_gradual, self.exponent, self.schedule
        )

    def kept(self, epoch: int, batch_size: int) -> int:
        """Samples each network keeps of a batch of ``batch_size`` in ``epoch``: the code's
        ``int((1 - forget_rate) * B)`` (at least one)."""
        return max(1, int((1.0 - self.rate(epoch)) * batch_size))

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        x = batch.views[self.view]
        y = batch.target
        logits_1 = model(x)
        logits_2 = self._second(model)(x)
        loss_1 = F.cross_entropy(logits_1.float(), y, reduction="none")
        loss_2 = F.cross_entropy(logits_2.float(), y, reduction="none")
        keep = self.kept(epoch, batch.size)
        sel_1 = small_loss_indices(loss_1, keep)  # network 1's small-loss samples
        sel_2 = small_loss_indices(loss_2, keep)
        update_1 = loss_1[sel_2].mean()  # network 1 learns from network 2's selection
        update_2 = loss_2[sel_1].mean()
        if self.code_double_mean:
            update_1, update_2 = update_1 / keep, update_2 / keep
        extras = {"loss_1": update_1.detach(), "loss_2": update_2.detach()}
        return StepOutput(loss=update_1 + update_2, logits=logits_1, extras=extras)
