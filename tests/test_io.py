"""Atomic writes and safe checkpoint reads."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from noisybench.errors import UserError
from noisybench.io import atomic_save_checkpoint, atomic_write_json, load_checkpoint


class _Boom:
    def __reduce__(self):  # an object whose pickling fails midway through a write
        raise RuntimeError("disk full")


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        atomic_save_checkpoint({"model": _Boom()}, tmp_path / "ckpt.pt")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_json_nan_becomes_null(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"x": float("nan"), "y": [1.5, float("inf")]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": [1.5, None]}


def test_checkpoint_rotation_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    atomic_save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(path.with_name("checkpoint.pt.prev"))["epoch"] == 1


def test_truncated_checkpoint_is_refused_and_previous_kept(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save_checkpoint({"model": {"w": torch.ones(100)}, "epoch": 1}, path)
    atomic_save_checkpoint({"model": {"w": torch.ones(100)}, "epoch": 2}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"corrupt or truncated.*checkpoint\.pt\.prev"):
        load_checkpoint(path)
    assert path.with_name("checkpoint.pt.prev").exists()
    assert path.stat().st_size == len(data) // 2  # nothing deleted or rewritten


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_code_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        torch.save({"model": _Payload()}, f, pickle_module=pickle)
    with pytest.raises(UserError, match="not tensors or plain data"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_missing_and_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a noisybench checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
