"""Model selection under label noise: which epoch's numbers a result reports.

Pure functions over a run's history (the per-epoch records of result.json, each with
``epoch`` and e.g. ``test/acc``, and ``val/acc`` when a noisy validation split is used). Three
rules, reported side by side so that no table hides which one it uses:

``last``
    The last epoch (no selection).
``best_test``
    The epoch with the highest ``test/acc`` (earliest on ties). This is what the BSD paper
    and the CIFAR-N paper report as "best"; it selects on the test set, so it is optimistic,
    and is flagged ``selected_on: "test set"``.
``noisy_val``
    The epoch with the highest accuracy on the held-out part of the NOISY training set
    (``val/acc``; earliest on ties), which uses no clean label (flagged
    ``selected_on: "noisy validation"``); absent when the history has no ``val/acc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from noisybench.errors import UserError

__all__ = ["RULES", "best_record", "select_epoch", "selection_summary"]

RULES: dict[str, tuple[str | None, str]] = {
    "last": (None, "none (last epoch)"),
    "best_test": ("test/acc", "test set"),
    "noisy_val": ("val/acc", "noisy validation"),
}


def best_record(history: Sequence[Mapping[str, Any]], key: str | None) -> Mapping[str, Any] | None:
    """The record with the highest finite ``key`` (earliest on ties; the last record when
    ``key`` is None), or None when no record has a finite ``key``: the one place a run's
    epoch is selected (the result file's ``best``, :func:`select_epoch`, the report)."""
    if key is None:
        return history[-1] if history else None
    scored = [r for r in history if isinstance(r.get(key), int | float) and r[key] == r[key]]
    return max(scored, key=lambda r: r[key]) if scored else None


def select_epoch(history: Sequence[Mapping[str, Any]], rule: str) -> dict[str, Any]:
    """The record that ``rule`` selects, plus ``selected_on`` and ``rule``."""
    if rule not in RULES:
        raise UserError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
    if not history:
        raise UserError("the run has no finished epoch to select from; train it first")
    key, selected_on = RULES[rule]
    chosen = best_record(history, key)
    if chosen is None:
        raise UserError(
            f"selection rule {rule} needs {key} in the run's history; "
            + (
                "train with a noisy validation split"
                if rule == "noisy_val"
                else "the run recorded no test accuracy"
            )
        )
    return {**dict(chosen), "rule": rule, "selected_on": selected_on}


def selection_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every rule that applies to ``history``: ``{rule: {epoch, test/..., selected_on}}``
    restricted to the ``epoch``, ``test/*`` and ``val/*`` entries."""
    out: dict[str, dict[str, Any]] = {}
    for rule, (key, _) in RULES.items():
        if key is not None and not any(key in r for r in history):
            continue
        rec = select_epoch(history, rule)
        out[rule] = {
            k: v
            for k, v in rec.items()
            if k in ("epoch", "rule", "selected_on") or k.startswith(("test/", "val/"))
        }
    return out
