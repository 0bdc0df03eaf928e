"""result.json schema 2 (issue 22 item 5): version, environment, times and cost; the report
reads schema 1 (no version) and 2, and refuses a newer one in one line."""

from __future__ import annotations

import datetime
import json
import platform
import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from noisybench.config import compose
from noisybench.provenance import cost
from noisybench.report import main
from noisybench.run import run_experiment


@pytest.fixture(autouse=True)
def _restore(restore_torch_globals: None) -> None:
    pass


def test_a_finished_run_records_schema_2(tmp_path: Path) -> None:
    cfg = compose(["experiment=quickstart", "method=ce", "epochs=2", f"out_dir={tmp_path}"])
    OmegaConf.set_struct(cfg, False)
    cfg.progress = False
    cfg.logger = {}
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    run_experiment(cfg, run_dir=tmp_path / "run")
    after = datetime.datetime.now(datetime.timezone.utc)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["schema_version"] == 2
    env = result["environment"]
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    assert env["host"] == socket.gethostname()
    assert env["python"] == platform.python_version()
    assert "torchvision" in env and "cudnn" in env and env["device_name"]
    started = datetime.datetime.fromisoformat(result["started_at"])
    ended = datetime.datetime.fromisoformat(result["ended_at"])
    assert before <= started <= ended <= after
    # Cost: the epoch times summed, and 1,300 digits training images per epoch (the
    # quickstart's digits split) divided by them.
    times = [r["epoch_time_s"] for r in result["history"]]
    assert result["train_images"] == 1300
    assert result["cost"]["train_time_s"] == pytest.approx(sum(times), abs=1e-3)
    assert result["cost"]["images_per_s"] == pytest.approx(2 * 1300 / sum(times), rel=1e-3)
    assert result["cost"]["peak_memory_bytes"] > 10 * 2**20  # torch alone is more
    # Every schema-1 key is still there.
    for key in ("status", "config", "seeds", "noise", "history", "last", "best", "wall_time_s"):
        assert key in result


def test_cost_by_hand() -> None:
    history = [{"epoch_time_s": 2.0}, {"epoch_time_s": 3.0}]
    assert cost(history, 1000) == {"train_time_s": 5.0, "images_per_s": 400.0}
    assert cost([{"epoch_time_s": 2.0}, {}], 1000) == {"train_time_s": None, "images_per_s": None}
    assert cost(history, None)["images_per_s"] is None


def _result(version: int | None, seed: int, acc: float) -> dict:
    body = {
        "status": "finished",
        "config": {
            "seed": seed,
            "dataset": {"name": "digits"},
            "model": {"name": "small_cnn"},
            "noise": {"name": "sym50", "seed": seed},
            "method": {"name": "ce"},
        },
        "seeds": {"train": seed, "noise": seed},
        "history": [{"epoch": 1, "test/acc": acc}],
    }
    if version is not None:
        body["schema_version"] = version
    return body


def test_report_reads_every_schema_and_refuses_a_newer_one(tmp_path: Path, capsys) -> None:
    for i, (version, acc) in enumerate(((None, 0.5), (1, 0.6), (2, 0.7))):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "result.json").write_text(json.dumps(_result(version, i, acc)))
    assert main([str(tmp_path), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    (cell,) = [c for k, c in row["cells"].items() if k.endswith("|acc|last")]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(60.0)
    (tmp_path / "r9").mkdir()
    (tmp_path / "r9" / "result.json").write_text(json.dumps(_result(3, 9, 0.9)))
    assert main([str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "schema_version 3" in captured.err and "update noisybench" in captured.err
    (row,) = json.loads(captured.out)["rows"]
    assert next(iter(row["cells"].values()))["n"] == 3
