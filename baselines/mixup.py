"""MixUp on the noisy labels.

Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018:

    x~ = lam * x_i + (1 - lam) * x_j,   y~ = lam * y_i + (1 - lam) * y_j,   lam ~ Beta(a, a)
                                                                           (Zhang 2018, Eq. 1)

with ``(x_j, y_j)`` a random partner from the same mini-batch: as in the authors' CIFAR code
(facebookresearch/mixup-cifar10), one ``lam`` per batch and one random permutation of the batch
gives the partners. With one-hot ``y`` the cross-entropy against the mixed target equals

    lam * CE(f(x~), y_i) + (1 - lam) * CE(f(x~), y_j),

which is what is computed. ``a = 0`` means no mixing (``lam = 1``), as in the official code.

Default ``a = 1.0``: the official CIFAR code's default and the value the paper uses for its
CIFAR-10/100 classification results; the BSD paper (Table 4) does not state ``a``. The mixup
paper's own corrupted-label experiment (Sec. 3.4) used larger values (8 and 32).

``lam`` may be fixed (config key ``lam``) to turn off the sampling, e.g. for tests.
The logits returned for the engine's training accuracy are those of the *mixed* inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, StepOutput

__all__ = ["MixUp"]


class MixUp(Method):
    """Input/label mixing with ``lam ~ Beta(alpha, alpha)`` on the weak view.

    Args:
        alpha: the Beta distribution's parameter ``a >= 0``; ``0`` disables mixing.
        lam: if given, a fixed mixing coefficient in ``[0, 1]`` used instead of sampling.
    """

    views = ("weak",)

    def __init__(self, alpha: float = 1.0, lam: float | None = None) -> None:
        super().__init__()
        alpha = float(alpha)
        if not alpha >= 0:
            raise UserError(
                f"method.alpha={alpha} must be >= 0 (the Beta(a, a) parameter); use 1.0, or 0 "
                "to disable mixing."
            )
        if lam is not None:
            lam = float(lam)
            if not 0.0 <= lam <= 1.0:
                raise UserError(
                    f"method.lam={lam} must be in [0, 1], or null to sample it from Beta(a, a)."
                )
        self.alpha = alpha
        self.lam = lam

    def sample_lam(self, device: torch.device) -> Tensor:
        """One mixing coefficient for the batch, a 0-d float tensor on ``device`` (no host sync).

        The constants are filled on the device (``torch.full``, a kernel, instead of
        ``torch.tensor``, a blocking host-to-device copy) and the Beta distribution skips its
        argument validation (``alpha > 0`` is checked once in ``__init__``; validating on
        every step reads the concentrations back to the host), as CutMix in
        :mod:`noisybench.augment` does.
        """
        if self.lam is not None:
            return torch.full((), self.lam, device=device)
        if self.alpha == 0:
            return torch.ones((), device=device)
        conc = torch.full((2,), self.alpha, device=device)
        return torch.distributions.Beta(conc[0], conc[1], validate_args=False).sample()

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        x = batch.views["weak"]
        lam = self.sample_lam(x.device)
        perm = torch.randperm(x.shape[0], device=x.device)
        mixed = lam.to(x.dtype) * x + (1.0 - lam.to(x.dtype)) * x[perm]
        logits = model(mixed)
        logits32 = logits.float()
        ce_a = F.cross_entropy(logits32, batch.target)
        ce_b = F.cross_entropy(logits32, batch.target[perm])
        loss = lam * ce_a + (1.0 - lam) * ce_b
        return StepOutput(
            loss=loss,
            logits=logits,
            extras={"lam": lam.detach()},
            state={"lam": lam.detach(), "perm": perm},
        )
