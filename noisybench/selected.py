"""The weights of the epoch a run's selection rule picks, kept beside the last checkpoint.

A rule that selects an earlier epoch (``noisy_val``, ``clean_val``, ``best_test``; see
:mod:`noisybench.evaluation.selection`) is only useful if that epoch's model can be
evaluated and used afterwards: :class:`SelectedWeights` saves the model's weights (no
optimizer, no method state) to ``selected.pt`` whenever the rule picks the epoch just
finished. ``last`` keeps no extra file: the last checkpoint is its selection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from noisybench.engine import Callback, Trainer
from noisybench.errors import UserError
from noisybench.evaluation.selection import RULES, select_epoch

__all__ = ["SELECTED_FILE", "SelectedWeights"]

SELECTED_FILE = "selected.pt"


class SelectedWeights(Callback):
    """Writes ``selected.pt`` = ``{"model", "epoch", "rule", "selected_on"}`` (atomically)
    at each epoch end where ``rule`` selects that epoch. It runs before the checkpointer, so a
    run killed in between re-runs the epoch on resume and writes the same file again."""

    def __init__(self, run_dir: str | Path, rule: str) -> None:
        if rule not in RULES:
            raise UserError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
        self.path = Path(run_dir) / SELECTED_FILE
        self.rule = rule

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.rule == "last":
            return
        try:
            chosen = select_epoch(trainer.history, self.rule)
        except UserError:  # the history lacks the rule's key (no clean validation labels)
            return
        if chosen.get("epoch") != record.get("epoch"):
            return
        import torch

        from noisybench.io import atomic_write

        weights = {
            k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()
        }
        obj = {
            "model": weights,
            "epoch": record.get("epoch"),
            "rule": self.rule,
            "selected_on": chosen.get("selected_on"),
        }
        atomic_write(self.path, lambda f: torch.save(obj, f))
