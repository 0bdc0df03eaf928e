"""The deterministic teacher: the one network of a finished run (Hinton et al. 2015).

Its predictive distribution is ``softmax(f(x))`` of the run's model in eval mode; one forward
pass per sample (``store=true``: one pass over the training set, then none).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from noisybench.errors import UserError
from noisybench.method import MethodContext
from noisybench.teachers.base import Evaluate, Teacher, TeacherSource

__all__ = ["DeterministicTeacher"]


class DeterministicTeacher(Teacher):
    """One network, no posterior (``samples`` must be 1)."""

    kind = "deterministic"
    online = True

    def __init__(self, seed: int = 0, store: bool = False) -> None:
        super().__init__(samples=1, seed=seed, store=store)

    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        networks = [net for source in sources for net in source.networks]
        if len(networks) != 1:
            raise UserError(
                f"the deterministic teacher is one network but method.teacher_runs hold "
                f"{len(networks)}; use +teacher=ensemble for several networks or an ensemble run"
            )
        self.networks = networks

    @torch.no_grad()
    def online_logits(self, images: Tensor) -> list[Tensor]:
        out = []
        for net in self.networks:
            if net.training:
                net.eval()
            out.append(net(images))
        return out

    def sample_logits(self, evaluate: Evaluate, train_pass: Evaluate) -> Iterator[Tensor]:
        for net in self.networks:
            yield evaluate(net)

    def passes(self) -> int:
        return len(self.networks)
