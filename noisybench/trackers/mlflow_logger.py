"""MLflow (``logger=[mlflow]``): a local store by default, the SQLite file ``<out_dir>/mlflow.db``
(one store for every run of an output directory, so the MLflow UI compares them:
``mlflow ui --backend-store-uri sqlite:///<out_dir>/mlflow.db``; MLflow 3 no longer writes its
older ``mlruns/`` file store); ``logger.mlflow.tracking_uri=...`` points at a tracking server.

One noisybench run is one MLflow run: its id is kept in ``<run dir>/mlflow_run_id``, so a
resumed run continues it; ``restart=true`` (which moves the run's files aside) starts a new one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisybench.callbacks import summarise
from noisybench.engine import Callback, Trainer
from noisybench.io import atomic_write_text
from noisybench.rundir import RunDir
from noisybench.trackers import epoch_metrics, experiment_params, require

__all__ = ["MLflowLogger"]

ID_FILE = "mlflow_run_id"


class MLflowLogger(Callback):
    """Per-epoch metrics (step = 1-based epoch), the experiment's hyperparameters as params,
    the last and best epochs as ``last/...`` and ``best/...`` metrics, and the run's status.

    Args:
        run_dir: the run directory.
        header: the result file's header (``config``: the resolved config).
        tracking_uri: None: the SQLite file ``<out_dir>/mlflow.db``; else any MLflow URI.
        experiment: MLflow experiment name.
    """

    def __init__(
        self,
        run_dir: RunDir,
        header: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        experiment: str = "noisybench",
    ) -> None:
        require("mlflow", "mlflow")
        self.run_dir = run_dir
        self.header = dict(header or {})
        config = self.header.get("config", {})
        if tracking_uri is None:
            out_dir = Path(str(config.get("out_dir", run_dir.path.parent))).resolve()
            out_dir.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{out_dir / 'mlflow.db'}"
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client: Any = None
        self.run_id: str | None = None

    def on_fit_start(self, trainer: Trainer, start_epoch: int, start_step: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        id_file = self.run_dir.path / ID_FILE
        if trainer.resumed and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        config = self.header.get("config", {})
        run = self.client.create_run(exp_id, run_name=str(config.get("run_name", "")) or None)
        self.run_id = run.info.run_id
        atomic_write_text(id_file, self.run_id + "\n")
        params = [Param(k, str(v)[:6000]) for k, v in experiment_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        for record in trainer.history:  # a run resumed without its id file: replay
            self._log(record)

    def _log(self, record: Mapping[str, Any]) -> None:
        self._log_values(epoch_metrics(record), int(record["epoch"]))

    def _log_values(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self._log(record)

    def on_fit_end(self, trainer: Trainer) -> None:
        summary = summarise(trainer.history)
        final = {
            f"{which}/{key}": value
            for which in ("last", "best")
            for key, value in (summary.get(which) or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._log_values(final, step=len(trainer.history))
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.client = None

    def on_interrupt(self, trainer: Trainer, *args: Any) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="KILLED")
