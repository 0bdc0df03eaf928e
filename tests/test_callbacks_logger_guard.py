"""A failing logger switches itself off, not the run (``noisybench.callbacks.LoggerGuard``).

Before: a logger raising at the end of training (a tracker out of reach, a value TensorBoard's
hparams cannot serialise) turned a run that had trained every epoch into ``status: failed``
with a traceback, and again on every re-run of the command. Checked here in-process through
``run_experiment`` with the quickstart config and a logger of the test's own that fails in a
chosen hook.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from conftest import epoch_metrics
from omegaconf import OmegaConf

from noisybench.config import compose
from noisybench.errors import UserError
from noisybench.run import run_experiment

hooks_seen: list[str] = []  # every hook the failing logger received, in order


class FailingLogger:
    """A logger (duck-typed: only some hooks) that raises ``error`` in ``fail_in`` at the
    ``fail_at``-th call of that hook."""

    def __init__(self, run_dir: Any, header: Any, fail_in: str, fail_at: int, error: str) -> None:
        self.fail_in, self.fail_at, self.error = fail_in, fail_at, error
        self.seen = 0

    def _hook(self, name: str) -> None:
        hooks_seen.append(name)
        if name == self.fail_in:
            self.seen += 1
            if self.seen == self.fail_at:
                if self.error == "enospc":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise ConnectionError("tracker unreachable")

    def on_fit_start(self, trainer: Any, start_epoch: int, start_step: int) -> None:
        self._hook("on_fit_start")

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, Any]) -> None:
        self._hook("on_epoch_end")

    def on_fit_end(self, trainer: Any) -> None:
        self._hook("on_fit_end")

    def close(self) -> None:
        self._hook("close")


def _cfg(out: Path, loggers: dict[str, Any]) -> Any:
    cfg = compose(["experiment=quickstart", "method=ce", "epochs=3", f"out_dir={out}"])
    OmegaConf.set_struct(cfg, False)
    cfg.progress = False
    cfg.logger = loggers
    return cfg


def _failing(fail_in: str, fail_at: int = 1, error: str = "connection") -> dict[str, Any]:
    target = f"{__name__}.FailingLogger"
    return {"_target_": target, "fail_in": fail_in, "fail_at": fail_at, "error": error}


@pytest.fixture(autouse=True)
def _restore(restore_torch_globals: None, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks_seen.clear()
    # The failing loggers live in this test module: allowed explicitly (noisybench.safety).
    monkeypatch.setenv("NOISYBENCH_ALLOW_TARGETS", f"{__name__}.")


@pytest.fixture(scope="module")
def plain_history(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("plain")
    result = run_experiment(_cfg(out, {}), run_dir=out / "run")
    assert result["status"] == "finished"
    return epoch_metrics(result["history"])


@pytest.mark.parametrize(
    ("fail_in", "fail_at", "before"),
    [
        ("on_epoch_end", 2, ["on_fit_start", "on_epoch_end"]),
        ("on_fit_end", 1, ["on_fit_start", "on_epoch_end", "on_epoch_end", "on_epoch_end"]),
    ],
)
def test_failing_logger_is_switched_off_and_the_run_finishes(
    fail_in: str,
    fail_at: int,
    before: list[str],
    plain_history: list[dict[str, Any]],
    tmp_path: Path,
    caplog,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = {
        "bad": _failing(fail_in, fail_at),
        "tensorboard": {"_target_": "noisybench.callbacks.TensorBoardLogger"},
    }
    run_dir = tmp_path / "run"
    result = run_experiment(_cfg(tmp_path, loggers), run_dir=run_dir)

    assert result["status"] == "finished"
    assert result["logger_failures"] == [
        f"logger bad failed in {fail_in} (ConnectionError: tracker unreachable)"
    ]
    # training is what it is without any logger: every per-epoch number equal
    assert epoch_metrics(result["history"]) == plain_history
    # after its failure the logger got nothing but one close
    assert hooks_seen == [*before, fail_in, "close"]
    # the logger listed after it still logged every epoch and its hparams
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [s.step for s in events.Scalars("test/acc")] == [1, 2, 3]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("logger bad failed in") and "switched off" in w for w in warnings)

    # running the command again reports the finished run instead of failing again
    again = run_experiment(_cfg(tmp_path, loggers), run_dir=run_dir)
    assert again["status"] == "finished" and again["history"] == result["history"]


def test_a_logger_failing_in_close_is_reported_once(tmp_path: Path) -> None:
    result = run_experiment(_cfg(tmp_path, {"bad": _failing("close")}), run_dir=tmp_path / "r")
    assert result["status"] == "finished"
    assert result["logger_failures"] == [
        "logger bad failed in close (ConnectionError: tracker unreachable)"
    ]
    epochs = ["on_epoch_end"] * 3
    assert hooks_seen == ["on_fit_start", *epochs, "on_fit_end", "close"]


def test_a_full_disk_in_a_logger_is_the_run_s_full_disk_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"bad": _failing("on_epoch_end", 2, error="enospc")})
    with pytest.raises(UserError, match="disk") as info:
        run_experiment(cfg, run_dir=tmp_path / "r")
    assert "\n" not in str(info.value)
    result = (tmp_path / "r" / "result.json").read_text()
    assert '"status": "failed"' in result
