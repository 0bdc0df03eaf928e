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

* ``schedule=code`` (default): ``np.linspace(0, tau**c, T_k)[e]`` for ``e < T_k``, else
  ``tau``; i.e. ``tau**c * e / (T_k - 1)``, reaching ``tau`` at epoch ``T_k - 1``.
* ``schedule=paper``: ``tau * min((e / T_k)**c, 1)`` (Algorithm 1, step 9:
  ``R(T) = 1 - min(T^c tau / T_k, tau)``), reaching ``tau`` at epoch ``T_k``.

Paper/code disagreement exposed as ``code_double_mean``: the code divides the mean
cross-entropy of the selected samples by the number selected once more (``torch.sum(mean) /
num_remember``), which scales the gradient by ``1/num_remember``; harmless with its Adam
optimizer, but with SGD it divides the learning rate by about the batch size. Default
``false`` (the mean, as the paper's ``l(f, D)``); ``true`` reproduces the code.

Both networks see the same augmented view (the code uses the same images for both);
evaluation uses the engine's model ``f`` (the code reports both networks' accuracies).
"""

from __future__ import annotations

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
    if schedule == "code":
        if epoch < num_gradual:
            if num_gradual == 1:
                return 0.0
            return forget_rate**exponent * epoch / (num_gradual - 1)
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
        schedule: ``"code"`` or ``"paper"`` (see the module docstring).
        code_double_mean: divide the selected samples' mean loss by their number (the code).
        seed: seed of the second network's initialisation (``None``: derived from the run's
            seed without advancing the global generator).
    """

    views = ("weak",)

    def __init__(
        self,
        forget_rate: float = 0.2,
        num_gradual: int = 10,
        exponent: float = 1.0,
        schedule: str = "code",
        code_double_mean: bool = False,
        seed: int | None = None,
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
        if schedule not in ("code", "paper"):
            raise UserError(f"method.schedule={schedule} is unknown; use code or paper")
        self.forget_rate = float(forget_rate)
        self.num_gradual = int(num_gradual)
        self.exponent = float(exponent)
        self.schedule = schedule
        self.code_double_mean = bool(code_double_mean)
        self.seed = seed
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

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        x = batch.views["weak"]
        y = batch.target
        logits_1 = model(x)
        logits_2 = self._second(model)(x)
        loss_1 = F.cross_entropy(logits_1.float(), y, reduction="none")
        loss_2 = F.cross_entropy(logits_2.float(), y, reduction="none")
        keep = max(1, int((1.0 - self.rate(epoch)) * batch.size))
        sel_1 = small_loss_indices(loss_1, keep)  # network 1's small-loss samples
        sel_2 = small_loss_indices(loss_2, keep)
        update_1 = loss_1[sel_2].mean()  # network 1 learns from network 2's selection
        update_2 = loss_2[sel_1].mean()
        if self.code_double_mean:
            update_1, update_2 = update_1 / keep, update_2 / keep
        extras = {"loss_1": update_1.detach(), "loss_2": update_2.detach()}
        return StepOutput(loss=update_1 + update_2, logits=logits_1, extras=extras)
