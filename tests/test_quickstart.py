"""The foundation end to end on the offline quickstart (real digits, real engine)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import quick_run_dir

# Every test here runs ``python -m noisybench``.
pytestmark = pytest.mark.cli

TIMING_KEYS = ("epoch_time_s",)


def _run(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "noisybench", "experiment=quickstart", f"out_dir={tmp}"]
    cmd += ["progress=false", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _metrics(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def test_run_writes_result_labels_and_tensorboard(tmp_path: Path) -> None:
    proc = _run(tmp_path, "epochs=3")
    assert proc.returncode == 0, proc.stderr
    run_dir = quick_run_dir(tmp_path, "epochs=3")
    result = _result(run_dir)
    assert result["status"] == "finished"
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["config"]["noise"]["name"] == "sym50"
    assert result["seeds"] == {"train": 0, "noise": 0}
    assert result["code_version"]["package"]
    for key in ("test/acc", "test/ece", "test/nll", "memorisation/fit_given", "train/loss"):
        assert 0.0 <= result["history"][-1][key] < 10.0, key
    assert result["best"]["selected_on"] == "test set"

    noise = result["noise"]
    labels = np.load(run_dir / "noisy_labels.npy", allow_pickle=False)
    assert noise["sha256"] == hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest()
    assert noise["variant"] == "sym_incl" and noise["nominal_rate"] == 0.5
    # Include-true-class noise at 50% on 10 classes changes about 45% of the labels.
    assert abs(noise["realised_rate"] - 0.45) < 0.03
    transition = np.array(noise["transition"])
    assert transition.shape == (10, 10)
    np.testing.assert_allclose(transition.sum(axis=1), 1.0)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    # Beyond scalars: the config as text, the realised transition matrix as an image, and the
    # hyperparameters with the final metrics for the HParams tab.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "noise/transition" in events.Tags()["images"]
    assert "config/text_summary" in events.Tags()["tensors"]
    assert [s.value for s in events.Scalars("test/acc")] == pytest.approx(
        [h["test/acc"] for h in result["history"]]
    )
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # same run


def test_same_seeds_give_identical_labels_and_metrics(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run(out, "epochs=2", "logger=[]").returncode == 0
    ra = _result(quick_run_dir(a, "epochs=2"))
    rb = _result(quick_run_dir(b, "epochs=2"))
    assert ra["noise"]["sha256"] == rb["noise"]["sha256"]
    assert _metrics(ra["history"]) == _metrics(rb["history"])
    # Another training seed with the noise seed pinned: same labels, different training.
    c = tmp_path / "c"
    assert _run(c, "epochs=2", "logger=[]", "seed=1", "noise.seed=0").returncode == 0
    rc = _result(quick_run_dir(c, "epochs=2", "noise.seed=0", seed=1))
    assert rc["noise"]["sha256"] == ra["noise"]["sha256"]
    assert rc["seeds"] == {"train": 1, "noise": 0}
    assert _metrics(rc["history"]) != _metrics(ra["history"])


def test_saved_label_file_reproduces_the_noise(tmp_path: Path) -> None:
    assert _run(tmp_path / "a", "epochs=1", "logger=[]").returncode == 0
    first = quick_run_dir(tmp_path / "a", "epochs=1")
    labels_file = first / "noisy_labels.npy"
    # A different noise seed, but the label file wins: exactly the same labels.
    proc = _run(
        tmp_path / "b",
        "epochs=1",
        "logger=[]",
        "noise.seed=5",
        f"noise.label_file={labels_file}",
    )
    assert proc.returncode == 0, proc.stderr
    second = _result(
        quick_run_dir(tmp_path / "b", "epochs=1", "noise.seed=5", f"noise.label_file={labels_file}")
    )
    assert second["noise"]["sha256"] == _result(first)["noise"]["sha256"]
    assert second["noise"]["label_file"] == str(labels_file)


@pytest.mark.slow
def test_cross_entropy_memorises_symmetric_noise(tmp_path: Path) -> None:
    """The paper's phenomenon in miniature: CE's test accuracy peaks early, then falls as it
    fits the flipped labels (Fig. 5; Section 4.2.3)."""
    proc = _run(tmp_path, "logger=[]")
    assert proc.returncode == 0, proc.stderr
    result = _result(quick_run_dir(tmp_path))
    history = result["history"]
    assert result["last"]["test/acc"] < result["best"]["test/acc"] - 0.05
    assert (
        history[-1]["memorisation/fit_given"]
        > history[result["best"]["epoch"] - 1]["memorisation/fit_given"]
    )


def test_validation_split_suites_and_snapshots_during_training(tmp_path: Path) -> None:
    """validation.fraction holds out 10 % of the 1,300 noisy training digits (130), val/acc is
    recorded per epoch and the noisy-validation selection picks its arg-max epoch; a suite with
    every=1 adds its numbers to each epoch; snapshots save one file per epoch."""
    overrides = (
        "epochs=3",
        "logger=[]",
        "eval=[calibration]",
        "eval.suites.calibration.every=1",
        "validation.fraction=0.1",
        "eval.snapshots.size=50",
    )
    proc = _run(tmp_path, *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = quick_run_dir(tmp_path, "epochs=3", "validation.fraction=0.1")
    result = _result(run_dir)
    assert (result["validation"]["n_train"], result["validation"]["n_val"]) == (1170, 130)
    history = result["history"]
    val = [h["val/acc"] for h in history]
    assert all(v * 130 == pytest.approx(round(v * 130)) for v in val)  # counts out of 130
    best = max(range(3), key=lambda i: (val[i], -i))
    assert result["selection"]["noisy_val"]["epoch"] == best + 1
    for h in history:
        assert h["eval/calibration/acc"] == pytest.approx(h["test/acc"])
        assert 0.0 <= h["eval/calibration/ace"] <= 1.0
    files = sorted(p.name for p in (run_dir / "predictions").iterdir())
    assert files == ["epoch_0001.npy", "epoch_0002.npy", "epoch_0003.npy", "indices.npy"]
    assert np.load(run_dir / "predictions" / "epoch_0003.npy").shape == (50, 10)
