"""The deep-ensemble teacher (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017).

The networks of ``method.teacher_runs``: an ensemble run's members
(:class:`noisybench.baselines.ensemble.Ensemble`, checkpoint keys ``members.<j>.*``) and/or
several finished runs. Its predictive distribution is the uniform mixture
``(1/M) sum_m softmax(f_m(x))``, one forward pass per member and sample. This is what
``method=kd`` did before teacher kinds existed, and it remains the default (one network is
the ensemble of one).
"""

from __future__ import annotations

from noisybench.method import MethodContext
from noisybench.teachers.base import TeacherSource
from noisybench.teachers.deterministic import DeterministicTeacher

__all__ = ["EnsembleTeacher"]


class EnsembleTeacher(DeterministicTeacher):
    """Every network of the teacher runs, averaged (see the module docstring)."""

    kind = "ensemble"

    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        self.networks = [net for source in sources for net in source.networks]
