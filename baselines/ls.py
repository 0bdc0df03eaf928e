"""Label smoothing (LS) on the noisy labels.

Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for Computer
Vision", CVPR 2016, Section 7 ("Model regularization via label smoothing"): the one-hot target
``delta_{k,y}`` is replaced by

    q'(k) = (1 - s) * delta_{k,y} + s / K,                              (Szegedy 2016, Sec. 7)

and the loss is the cross-entropy ``H(q', p) = -sum_k q'(k) log p(k)``. ``s`` is the paper's
``epsilon``; they use ``epsilon = 0.1`` (ImageNet), which is noisybench's default. The BSD paper
(Table 4) compares against LS without stating ``s``.

Note: the LS baseline ("lsr") in the official SCE code base uses
``onehot * (1 - s - s/10) + s/10``, whose entries sum to ``1 - s/10`` rather than 1; noisybench
uses Szegedy's normalised form above (identical to ``F.cross_entropy(label_smoothing=s)``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, StepOutput, soft_cross_entropy

__all__ = ["LabelSmoothing"]


class LabelSmoothing(Method):
    """Cross-entropy against ``(1 - s) * onehot(y~) + s / K`` on the weak view.

    Args:
        smoothing: ``s`` in ``[0, 1]``; ``s = 0`` is plain cross-entropy, ``s = 1`` the uniform
            target.
    """

    views = ("weak",)

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        smoothing = float(smoothing)
        if not 0.0 <= smoothing <= 1.0:
            raise UserError(
                f"method.smoothing={smoothing} is outside [0, 1]; set it to a value in [0, 1] "
                "(0.1 is the usual choice)."
            )
        self.smoothing = smoothing

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.views["weak"])
        num_classes = logits.shape[-1]
        onehot = F.one_hot(batch.target, num_classes).float()
        target = (1.0 - self.smoothing) * onehot + self.smoothing / num_classes
        loss = soft_cross_entropy(logits, target)
        return StepOutput(loss=loss, logits=logits)
