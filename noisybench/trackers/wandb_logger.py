"""Weights & Biases (``logger=[wandb]``): offline by default, so a run needs no account and
no network; ``wandb sync <run dir>/wandb/offline-run-*`` uploads it later, or set
``logger.wandb.mode=online``.

One noisybench run is one W&B run: its id is derived from the run directory, so a resumed or
restarted run continues the same W&B run instead of adding one (W&B drops nothing on resume;
an epoch logged again after a kill keeps its latest value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from noisybench.callbacks import summarise
from noisybench.engine import Callback, Trainer
from noisybench.rundir import RunDir
from noisybench.trackers import epoch_metrics, experiment_params, require

__all__ = ["WandbLogger"]


class WandbLogger(Callback):
    """Per-epoch metrics (step = 1-based epoch), the experiment's hyperparameters as the W&B
    config, and the last and best epochs in the run summary.

    Args:
        run_dir: the run directory (W&B files go to ``<run dir>/wandb``).
        header: the result file's header (``config``: the resolved config).
        project: W&B project.
        mode: ``offline`` (default: no network), ``online`` or ``disabled``.
        entity: W&B entity (team or user); None: the account's default.
        group: W&B group (e.g. one per sweep); None: none.
    """

    def __init__(
        self,
        run_dir: RunDir,
        header: Mapping[str, Any] | None = None,
        project: str = "noisybench",
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
    ) -> None:
        self.wandb = require("wandb", "wandb")
        self.run_dir = run_dir
        self.header = dict(header or {})
        self.settings = {"project": project, "mode": mode, "entity": entity, "group": group}
        self.run: Any = None

    def run_id(self) -> str:
        """A W&B run id fixed by the run directory (letters and digits, as W&B requires)."""
        return hashlib.sha256(str(self.run_dir.path.resolve()).encode()).hexdigest()[:16]

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        config = self.header.get("config", {})
        self.run = self.wandb.init(
            dir=str(self.run_dir.path),
            id=self.run_id(),
            resume="allow",
            name=str(config.get("run_name", self.run_dir.path.name)),
            config=experiment_params(config),
            reinit="create_new",
            **{k: v for k, v in self.settings.items() if v is not None},
        )

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.run.log(epoch_metrics(record), step=int(record["epoch"]))

    def on_fit_end(self, trainer: Trainer) -> None:
        summary = summarise(trainer.history)
        self.run.summary.update(
            {
                f"{which}/{key}": value
                for which in ("last", "best")
                for key, value in (summary.get(which) or {}).items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            }
        )
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
