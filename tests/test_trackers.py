"""``logger=[wandb]`` (offline) and ``logger=[mlflow]`` (a local store) record each epoch's
numbers at step = epoch, the experiment's hyperparameters (no paths, devices or loggers) and
the final last/best epochs, and a resumed run continues the same tracker run.

Read back independently: MLflow through its own client API, W&B by parsing the offline run's
``.wandb`` file (a LevelDB-style log of protobuf records: 7-byte file header, 32 KiB blocks,
each record chunk prefixed by CRC32, uint16 length and a FULL/FIRST/MIDDLE/LAST type byte)."""

from __future__ import annotations

import glob
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from noisybench.rundir import RunDir

CONFIG = {
    "seed": 0,
    "epochs": 2,
    "out_dir": "OUT",
    "data_dir": "/data",
    "device": "cpu",
    "progress": True,
    "run_name": "digits/small_cnn/sym50/bsd/seed0",
    "method": {"name": "bsd", "_target_": "noisybench.methods.bsd.BSD", "gamma": 0.85},
    "logger": {"mlflow": {"experiment": "noisybench"}},
}
HISTORY = [
    {"epoch": 1, "test/acc": 0.5, "train/loss": 2.0, "test/nll": float("nan")},
    {"epoch": 2, "test/acc": 0.75, "train/loss": 1.5, "test/nll": 0.9},
]


def _trainer(history: list[dict], resumed: bool = False) -> SimpleNamespace:
    return SimpleNamespace(history=history, resumed=resumed)


def _config(tmp_path: Path) -> dict:
    return {**CONFIG, "out_dir": str(tmp_path)}


def _train(logger, history, start: int = 0, resumed: bool = False) -> None:
    done = history[:start]
    logger.on_fit_start(_trainer(list(done), resumed), start, 0)
    for record in history[start:]:
        done.append(record)
        logger.on_epoch_end(_trainer(list(done), resumed), record["epoch"] - 1, record)
    logger.on_fit_end(_trainer(list(done), resumed))


# ------------------------------------------------------------------------------ MLflow
def test_mlflow_local_store(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from noisybench.trackers.mlflow_logger import MLflowLogger

    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    header = {"config": _config(tmp_path)}
    _train(MLflowLogger(run_dir, header), HISTORY[:1])
    # killed after epoch 1, resumed: the same MLflow run goes on
    _train(MLflowLogger(run_dir, header), HISTORY, start=1, resumed=True)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("noisybench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "digits/small_cnn/sym50/bsd/seed0"
    history = client.get_metric_history(run.info.run_id, "test/acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test/nll")] == [0.9]
    assert run.data.metrics["best/test/acc"] == 0.75 and run.data.metrics["best/epoch"] == 2
    params = run.data.params
    assert params["method.gamma"] == "0.85" and params["seed"] == "0"
    for key in ("out_dir", "data_dir", "device", "progress", "method._target_"):
        assert key not in params
    assert not any(k.startswith("logger") for k in params)


def test_mlflow_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import builtins

    from noisybench.errors import UserError
    from noisybench.trackers.mlflow_logger import MLflowLogger

    real = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name.split(".")[0] == "mlflow":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    monkeypatch.delitem(__import__("sys").modules, "mlflow", raising=False)
    with pytest.raises(UserError, match=r"pip install 'noisybench\[mlflow\]'"):
        MLflowLogger(RunDir(tmp_path), {"config": _config(tmp_path)})


# ------------------------------------------------------------------------------ W&B
def _wandb_records(path: str) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    block, pos, chunks, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            partial += chunk
        elif kind == 4:
            chunks.append(partial + chunk)
            partial = b""
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    import json

    from noisybench.trackers.wandb_logger import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    logger = WandbLogger(run_dir, {"config": _config(tmp_path)})
    _train(logger, HISTORY)

    import wandb

    wandb.teardown()  # the W&B service writes the offline file asynchronously: wait for it
    (path,) = glob.glob(str(run_dir.path / "wandb" / "offline-run-*" / "*.wandb"))
    assert logger.run_id() in path
    for _ in range(60):
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {_key(i): json.loads(i.value_json) for i in r.history.item}
            steps[items["_step"]] = items
    assert set(steps) == {1, 2}, steps
    assert steps[1]["test/acc"] == 0.5 and steps[2]["test/acc"] == 0.75
    assert "test/nll" not in steps[1] and steps[2]["test/nll"] == 0.9
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["best/test/acc"] == 0.75 and summary["last/epoch"] == 2
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {_key(u): json.loads(u.value_json) for u in run.config.update}
    assert config["method.gamma"] == 0.85
    assert "out_dir" not in config and "method._target_" not in config
