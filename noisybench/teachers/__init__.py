"""Teacher kinds of ``method=kd`` (issue 27): how a finished run's predictive distribution is
obtained. ``method.teacher.kind`` names the kind (the key ``report`` groups students by); the
other keys of ``method.teacher`` are the kind's options (``conf/teacher/<kind>.yaml``).

=================  =====================================================================
``deterministic``  the run's one network (:mod:`noisybench.teachers.deterministic`)
``ensemble``       the mean softmax of several networks (:mod:`noisybench.teachers.ensemble`)
``mc_dropout``     dropout on at prediction, T passes (:mod:`noisybench.teachers.mc_dropout`)
``swag``           SWAG weight samples of a ``method=swag`` run (:mod:`noisybench.teachers.swag`)
``laplace``        last-layer Laplace, diagonal GGN (:mod:`noisybench.teachers.laplace`)
=================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noisybench.errors import UserError
from noisybench.teachers.base import Teacher, TeacherSource
from noisybench.teachers.deterministic import DeterministicTeacher
from noisybench.teachers.ensemble import EnsembleTeacher
from noisybench.teachers.laplace import LaplaceTeacher
from noisybench.teachers.mc_dropout import MCDropoutTeacher
from noisybench.teachers.swag import SWAGTeacher

__all__ = ["KINDS", "Teacher", "TeacherSource", "make_teacher"]

KINDS: dict[str, type[Teacher]] = {
    cls.kind: cls
    for cls in (
        DeterministicTeacher,
        EnsembleTeacher,
        MCDropoutTeacher,
        SWAGTeacher,
        LaplaceTeacher,
    )
}


def make_teacher(spec: Mapping[str, Any] | str | None) -> Teacher:
    """The teacher a ``method.teacher`` config describes (``None``: the ensemble of every
    network of ``teacher_runs``, KD's behaviour before teacher kinds)."""
    if spec is None:
        return EnsembleTeacher()
    if isinstance(spec, str):
        spec = {"kind": spec}
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in KINDS:
        raise UserError(
            f"method.teacher.kind={kind!r} is unknown; use one of {sorted(KINDS)} "
            "(e.g. +teacher=swag)"
        )
    try:
        return KINDS[kind](**options)
    except TypeError as exc:
        raise UserError(
            f"method.teacher for kind {kind}: {exc}; see conf/teacher/{kind}.yaml for its options"
        ) from None
