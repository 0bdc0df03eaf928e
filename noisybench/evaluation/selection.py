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
``clean_val``
    The epoch with the highest accuracy on CLEAN validation labels (``val/clean_acc``), for
    datasets that come with them; absent otherwise.

A run's ``selection`` setting (:func:`resolve`) names the rule behind its headline number,
the number it returns to a sweeper (:func:`objective`) and the weights it keeps beside the
last checkpoint (``selected.pt``). The default, ``auto``, is ``clean_val`` on a dataset that
ships clean validation labels (Clothing1M's clean val, the field's protocol), else
``noisy_val`` when the run holds out a validation split, else ``last``: no default ever looks
at the test labels.
A sweeper (Optuna) optimises a validation number; with none, it would tune on the test set,
which a run refuses unless ``tune_on_test=true`` (:func:`check_tuning`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from noisybench.errors import UserError

__all__ = [
    "OPTIMISTIC",
    "RULES",
    "best_record",
    "check_tuning",
    "objective",
    "resolve",
    "select_epoch",
    "selection_summary",
]

RULES: dict[str, tuple[str | None, str]] = {
    "last": (None, "none (last epoch)"),
    "best_test": ("test/acc", "test set"),
    "noisy_val": ("val/acc", "noisy validation"),
    "clean_val": ("val/clean_acc", "clean validation"),
}
# Rules that look at the test labels: their numbers are optimistic and always flagged.
OPTIMISTIC = frozenset({"best_test"})


def best_record(
    history: Sequence[Mapping[str, Any]],
    key: str | None,
    valid: Callable[[Any], bool] | None = None,
) -> Mapping[str, Any] | None:
    """The record with the highest finite ``key`` (earliest on ties; the last record when
    ``key`` is None), or None when no record has a finite ``key``: the one place a run's
    epoch is selected (the result file's ``best``, :func:`select_epoch`, the report).

    ``valid``: which values compete (default: numbers that are not NaN); the report passes
    a stricter test for files from elsewhere (finite numbers of sane magnitude)."""
    if key is None:
        return history[-1] if history else None
    best, top = None, None
    for record in history:  # one pass: the report selects in 10,000 histories at a time
        value = record.get(key)
        ok = (
            valid(value) if valid is not None else isinstance(value, int | float) and value == value
        )
        if ok and (best is None or value > top):
            best, top = record, value
    return best


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
            + {
                "noisy_val": "train with a noisy validation split",
                "clean_val": "train on a dataset with clean validation labels",
            }.get(rule, "the run recorded no test accuracy")
        )
    return {**dict(chosen), "rule": rule, "selected_on": selected_on}


def selection_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every rule that applies to ``history``: ``{rule: {epoch, test/..., selected_on}}``
    restricted to the ``epoch``, ``test/*``, extra test sets' (``test_imagenet/*``) and
    ``val/*`` entries."""
    out: dict[str, dict[str, Any]] = {}
    for rule, (key, _) in RULES.items():
        if key is not None and not any(key in r for r in history):
            continue
        rec = select_epoch(history, rule)
        out[rule] = {
            k: v
            for k, v in rec.items()
            if k in ("epoch", "rule", "selected_on") or k.startswith(("test/", "test_", "val/"))
        }
    return out


def resolve(selection: str | None, has_validation: bool, has_clean_val: bool = False) -> str:
    """The rule a run's ``selection`` setting names (``auto``: ``clean_val`` on a dataset
    with its own clean validation split, Clothing1M's protocol; else ``noisy_val`` with a
    noisy validation split; else ``last``); one line for a rule the run cannot apply."""
    name = "auto" if selection is None else str(selection)
    if name == "auto":
        if has_clean_val:
            return "clean_val"
        return "noisy_val" if has_validation else "last"
    if name not in RULES:
        raise UserError(f"unknown selection={name}; use one of auto, {', '.join(RULES)}")
    if name == "noisy_val" and not has_validation:
        raise UserError(
            "selection=noisy_val needs a noisy validation split: set validation.fraction=0.1 "
            "(or another fraction), or choose selection=last"
        )
    if name == "clean_val" and not has_clean_val:
        raise UserError(
            "selection=clean_val needs a dataset with clean validation labels (Clothing1M's "
            "clean val; Food-101N with dataset.reader.exclude_verified_val=true) and this one "
            "has none: choose selection=noisy_val with validation.fraction=0.1, or selection=last"
        )
    return name


def _has_validation(config: Mapping[str, Any]) -> bool:
    validation = config.get("validation") or {}
    fraction = validation.get("fraction") if isinstance(validation, Mapping) else None
    return isinstance(fraction, int | float) and fraction > 0


def objective(result: Mapping[str, Any]) -> float:
    """The number a sweeper maximises for a finished run: the validation accuracy
    (``val/clean_acc`` for ``clean_val``, else ``val/acc``) at the epoch the run's rule
    selects; with no validation split, the test accuracy at that epoch only when the run says
    ``tune_on_test=true`` (NaN otherwise: a basic sweep ignores it, and an optimising sweeper
    was refused before training by :func:`check_tuning`)."""
    config = result.get("config") or {}
    history = result.get("history") or []
    if not history:
        return float("nan")
    try:
        rule = result.get("selection_rule")  # as the run resolved it (knowing its data)
        if rule not in RULES:
            rule = resolve(config.get("selection"), _has_validation(config))
        record = select_epoch(history, rule)
    except UserError:
        return float("nan")
    key = "val/clean_acc" if rule == "clean_val" else "val/acc"
    uses_test = rule in OPTIMISTIC or key not in record
    if uses_test:
        if not config.get("tune_on_test"):
            return float("nan")
        key = "test/acc"
    value = record.get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


def check_tuning(config: Mapping[str, Any], sweeper: str | None) -> None:
    """Refuse (one line) a sweep by an optimising sweeper (anything but Hydra's basic
    sweeper, e.g. Optuna) whose number would be measured on the test set: no validation
    split, or the ``best_test`` rule, without ``tune_on_test=true``."""
    if not sweeper or sweeper.endswith("BasicSweeper") or config.get("tune_on_test"):
        return
    if config.get("selection") == "clean_val":  # a validation number (the run refuses the
        return  # rule before training on a dataset without clean validation labels)
    rule = resolve(config.get("selection"), _has_validation(config))
    if rule in OPTIMISTIC or not _has_validation(config):
        raise UserError(
            f"{sweeper.rsplit('.', 1)[-1]} would tune on the test set (selection={rule}"
            f"{'' if _has_validation(config) else ', no validation split'}); hold out a "
            "noisy validation split (validation.fraction=0.1), select on a dataset's clean "
            "validation labels (selection=clean_val), or pass tune_on_test=true to do it "
            "knowingly"
        )
