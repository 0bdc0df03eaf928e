"""Where a run's numbers go: the result file (JSON, atomic) and TensorBoard scalars.

The result file ``RUN_DIR/result.json`` is written atomically when a run starts (empty
history) and rewritten after every epoch, so a crash at any point leaves a readable file with
the history so far, marked with its ``status`` ("running", "interrupted", "failed",
"finished"); :mod:`noisybench.report` reads finished and unfinished runs alike. A SIGKILL
leaves "running" (nothing can run at a SIGKILL).
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

from noisybench.io import atomic_write_json

__all__ = ["RESULT_FILE", "Recorder", "code_version", "summarise"]

RESULT_FILE = "result.json"


def code_version() -> dict[str, Any]:
    """The package version and, when run from a git checkout, the commit and a dirty flag."""
    from importlib import metadata

    root = Path(__file__).resolve().parents[1]
    try:
        version: str | None = metadata.version("noisybench")
    except metadata.PackageNotFoundError:
        version = None
    info: dict[str, Any] = {"package": version}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch and the best epoch by test accuracy.

    The best epoch is selected on the test set, as the BSD paper (Table 4) and the CIFAR-N
    paper report it; it is flagged as such in the result file.
    """
    if not history:
        return {"last": None, "best": None}
    last = history[-1]
    scored = [h for h in history if not math.isnan(h.get("test/acc", math.nan))]
    best = max(scored, key=lambda h: h["test/acc"]) if scored else None
    pick = ("epoch", "test/acc", "test/ece", "test/nll")
    return {
        "last": {k: last.get(k) for k in pick},
        "best": None
        if best is None
        else {**{k: best.get(k) for k in pick}, "selected_on": "test set"},
    }


class Recorder:
    """Collects per-epoch records and writes them to the result file and TensorBoard."""

    def __init__(
        self,
        run_dir: Path,
        header: dict[str, Any],
        history: list[dict[str, Any]] | None = None,
        tensorboard: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.header = header
        self.history: list[dict[str, Any]] = list(history or [])
        self.started = time.time()
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard's readers drop the events at and after purge_step that earlier
            # writers left, so epochs a resumed run logs again appear once.
            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)

    def add(self, record: dict[str, Any]) -> None:
        """Append one epoch's numbers to the history (checkpoints carry the history)."""
        self.history.append(record)

    def log_scalars(self, record: dict[str, Any]) -> None:
        """Write one epoch's numbers to TensorBoard (at step = the 1-based epoch)."""
        if self._writer is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def publish(self, record: dict[str, Any]) -> None:
        """Write an epoch already added to TensorBoard and the result file (status "running")."""
        self.log_scalars(record)
        self.write("running")

    def write(self, status: str, **extra: Any) -> dict[str, Any]:
        """Write the result file atomically and return its content."""
        result = {
            "status": status,
            **self.header,
            "history": self.history,
            **summarise(self.history),
            "wall_time_s": round(time.time() - self.started, 3),
            **extra,
        }
        atomic_write_json(self.run_dir / RESULT_FILE, result)
        return result

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
