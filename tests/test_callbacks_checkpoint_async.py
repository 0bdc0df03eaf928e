"""Checkpoints written in the background (``checkpoint_async``; ``Checkpointer(background=True)``).

In-process, with the real :class:`Checkpointer` and :class:`ResultWriter` and a run directory
whose ``save_checkpoint`` can be held at its start, so that the order of events between the
training thread and the writer thread is fixed by the test, not by timing. The end-to-end
kills, SIGTERM and resume in this mode are in ``tests/test_resume.py``, its full disk in
``tests/test_reliability.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from noisybench.callbacks import Checkpointer, ResultWriter, host_copy
from noisybench.io import load_checkpoint
from noisybench.rundir import RunDir


class HeldRunDir(RunDir):
    """A run directory whose checkpoint writes wait for ``release`` (and may fail)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail: OSError | None = None

    def save_checkpoint(self, state: Any, before_replace: Any = None) -> None:
        self.started.set()
        assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        super().save_checkpoint(state, before_replace)


class FakeTrainer:
    """The part of :class:`noisybench.engine.Trainer` the two callbacks use: its history,
    ``state_dict`` (here: one weight tensor that training changes in place) and
    ``critical``."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.epochs = 5
        self.weight = torch.zeros(3)

    def state_dict(self, epoch: int, step: int = 0, sums: Any = None) -> dict[str, Any]:
        return {
            "model": {"w": self.weight},
            "epoch": epoch,
            "step": step,
            "history": list(self.history),
        }

    def critical(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def finish_epoch(self, callbacks: list[Any]) -> None:
        epoch = len(self.history)
        self.history.append({"epoch": epoch + 1, "test/acc": 0.1 * (epoch + 1)})
        for callback in callbacks:
            callback.on_epoch_end(self, epoch, self.history[-1])


def _setup(tmp_path: Path) -> tuple[HeldRunDir, Checkpointer, ResultWriter, FakeTrainer]:
    run_dir = HeldRunDir(tmp_path / "run")
    run_dir.path.mkdir(parents=True)
    checkpointer = Checkpointer(run_dir, {"config": {}}, background=True)
    writer = ResultWriter(run_dir, {"config": {}}, checkpointer=checkpointer)
    trainer = FakeTrainer()
    for callback in (checkpointer, writer):
        callback.on_fit_start(trainer, 0, 0)
    return run_dir, checkpointer, writer, trainer


def _result_epochs(run_dir: RunDir) -> list[int]:
    return [h["epoch"] for h in json.loads(run_dir.result_file.read_text())["history"]]


def test_the_snapshot_is_taken_before_training_goes_on(tmp_path: Path) -> None:
    run_dir, checkpointer, writer, trainer = _setup(tmp_path)
    trainer.finish_epoch([checkpointer, writer])
    assert run_dir.started.wait(10)
    trainer.weight += 7.0  # the next epoch trains while epoch 1's checkpoint is written
    run_dir.release.set()
    checkpointer.wait()
    saved = load_checkpoint(run_dir.checkpoint_file)
    assert torch.equal(saved["model"]["w"], torch.zeros(3))
    assert saved["epoch"] == 1 and len(saved["history"]) == 1


def test_result_file_never_runs_ahead_of_the_checkpoint(tmp_path: Path) -> None:
    run_dir, checkpointer, writer, trainer = _setup(tmp_path)
    run_dir.release.set()
    trainer.finish_epoch([checkpointer, writer])  # epoch 1 (its write may be in flight)
    assert _result_epochs(run_dir) in ([], [1])
    checkpointer.wait()
    run_dir.release.clear()
    trainer.finish_epoch([checkpointer, writer])  # epoch 2's write is held
    assert checkpointer.epochs_saved == 1
    assert _result_epochs(run_dir) == [1]  # not epoch 2: a crash now would lose it
    run_dir.release.set()
    checkpointer.on_fit_end(trainer)
    writer.on_fit_end(trainer)
    assert checkpointer.epochs_saved == 2
    assert [h["epoch"] for h in writer.write("finished")["history"]] == [1, 2]


def test_a_failed_background_write_is_raised_at_the_next_wait(tmp_path: Path) -> None:
    run_dir, checkpointer, writer, trainer = _setup(tmp_path)
    run_dir.release.set()
    trainer.finish_epoch([checkpointer, writer])
    checkpointer.wait()
    run_dir.fail = OSError(errno.ENOSPC, "No space left on device")
    trainer.finish_epoch([checkpointer, writer])  # epoch 2's write fails in the thread
    with pytest.raises(OSError, match="No space left") as info:
        trainer.finish_epoch([checkpointer, writer])  # epoch 3 waits for it first
    assert info.value.errno == errno.ENOSPC
    writer.follow(trainer)
    assert [h["epoch"] for h in writer.history] == [1]  # what the checkpoint holds
    assert load_checkpoint(run_dir.checkpoint_file)["epoch"] == 1
    checkpointer.close()  # nothing left in flight, no second error


def test_host_copy_copies_every_tensor_and_container() -> None:
    t = torch.arange(4.0)
    state = {"a": t, "b": [t, (t, 3)], "c": "x", "d": {"e": t}}
    copied = host_copy(state)
    t += 1
    assert torch.equal(copied["a"], torch.arange(4.0))
    assert torch.equal(copied["b"][1][0], torch.arange(4.0)) and copied["b"][1][1] == 3
    assert isinstance(copied["b"][1], tuple) and copied["c"] == "x"
    assert copied["d"]["e"].data_ptr() != t.data_ptr()
