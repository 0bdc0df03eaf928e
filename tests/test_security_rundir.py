"""Run directories and data identity, round three (issue 20, items 3, 7, 9, 11): a run
directory trained on other data is refused in one line, never reported as this run's result;
a sweep whose jobs share a directory is refused before anything runs; ``evaluate`` checks what
it reads from a run directory; a missing mandatory path is one line with nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, error_line, quick_run_dir, snapshot, write_image_folder

from noisybench.data import fingerprint as fp
from noisybench.errors import UserError

FOLDER = (
    "dataset=folder",
    "dataset.reader.image_size=8",
    "dataset.reader.resize=8",
    "dataset.loader.workers=0",
    "model=small_mlp",
    "noise=sym50",
    "method=ce",
    "epochs=1",
    "batch_size=16",
    "progress=false",
    "logger=[]",
    "eval.batch_size=16",
)


# ------------------------------------------------------------------------------ fingerprints
def test_folder_fingerprint_follows_names_sizes_and_classes(tmp_path: Path) -> None:
    """Hand-made folders: the digest changes with a file's size, name or class, and not with
    the folder's location or a file's modification time."""
    import os

    def make(root: Path, files: dict[str, bytes]) -> str:
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        fp._SCANS.clear()
        return fp.data_fingerprint(
            {"_target_": "noisybench.data.folder.load_folder", "root": str(root)}
        )

    base = {"train/a/1.jpg": b"xx", "train/b/2.jpg": b"yyy", "val/a/3.jpg": b"z"}
    first = make(tmp_path / "one", base)
    assert make(tmp_path / "copy", base) == first  # same names and sizes elsewhere
    os.utime(tmp_path / "copy" / "train/a/1.jpg", (1, 1))
    assert make(tmp_path / "copy", {}) == first  # mtime is not part of it
    assert make(tmp_path / "size", {**base, "train/a/1.jpg": b"xxx"}) != first
    renamed = {"train/a/9.jpg": b"xx", "train/b/2.jpg": b"yyy", "val/a/3.jpg": b"z"}
    assert make(tmp_path / "name", renamed) != first
    moved = {
        "train/a/1.jpg": b"xx",
        "train/a/2.jpg": b"yyy",
        "train/b/4.jpg": b"w",
        "val/a/3.jpg": b"z",
    }
    assert make(tmp_path / "cls", moved) != first
    assert len(first) == 24 and int(first, 16) >= 0


def test_npz_fingerprint_sees_a_changed_label(tmp_path: Path) -> None:
    """Same size, one label changed: the zip directory's CRC-32 differs."""
    x = np.zeros((4, 4, 4), np.uint8)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(
        a,
        train_images=x,
        train_labels=np.array([0, 1, 0, 1]),
        test_images=x,
        test_labels=np.arange(4) % 2,
    )
    np.savez(
        b,
        train_images=x,
        train_labels=np.array([0, 1, 1, 1]),
        test_images=x,
        test_labels=np.arange(4) % 2,
    )
    assert a.stat().st_size == b.stat().st_size
    assert fp.npz_digest(a) != fp.npz_digest(b)
    shutil.copy(a, tmp_path / "c.npz")
    assert fp.npz_digest(tmp_path / "c.npz") == fp.npz_digest(a)


@pytest.mark.cli
def test_another_folder_is_not_reported_as_this_runs_result(cli: CLI, tmp_path: Path) -> None:
    """Issue 20 item 3: root=imgs trains; root=imgs2 (other folder, two classes) printed
    "already finished: last-epoch test acc ..." with imgs's result and exited 0."""
    write_image_folder(tmp_path / "imgs", classes=3, per_class=8, val_per_class=2, sides=(8, 12))
    write_image_folder(
        tmp_path / "imgs2", classes=2, per_class=8, val_per_class=2, sides=(8, 12), seed=1
    )
    out = tmp_path / "runs"
    first = cli(
        *FOLDER, f"dataset.reader.root={tmp_path / 'imgs'}", f"out_dir={out}", "run_name=r", base=()
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(out)
    second = cli(
        *FOLDER,
        f"dataset.reader.root={tmp_path / 'imgs2'}",
        f"out_dir={out}",
        "run_name=r",
        base=(),
    )
    assert second.returncode == 2, second.stdout + second.stderr[-3000:]
    assert "already finished" not in second.stdout
    line = error_line(second.stderr)
    assert "dataset.reader.fingerprint" in line and "restart=true" in line, line
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost
    # the same folder again is still reported as finished
    third = cli(
        *FOLDER, f"dataset.reader.root={tmp_path / 'imgs'}", f"out_dir={out}", "run_name=r", base=()
    )
    assert third.returncode == 0 and "already finished" in third.stdout
    # the reader itself, handed the saved digest (what evaluate does), refuses other data
    from noisybench.data.folder import load_folder

    saved = json.loads((out / "r" / "result.json").read_text())["config"]["dataset"]["reader"]
    assert isinstance(saved["fingerprint"], str) and len(saved["fingerprint"]) == 24
    load_folder(str(tmp_path / "imgs"), fingerprint=saved["fingerprint"])
    with pytest.raises(UserError, match="holds other data than the run was trained on"):
        load_folder(str(tmp_path / "imgs2"), fingerprint=saved["fingerprint"])


# ------------------------------------------------------------------------------ sweeps
@pytest.mark.cli
def test_sweep_jobs_sharing_a_run_directory_are_refused(cli: CLI, tmp_path: Path) -> None:
    """Issue 20 item 9: the refused job was shown "finished" with the other's accuracy."""
    out = tmp_path / "runs"
    proc = cli("-m", "seed=0,1", "epochs=1", "run_name=shared", f"out_dir={out}")
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert "jobs 0 and 1 of the sweep both write to" in line and "run_name" in line
    assert "finished" not in proc.stdout
    assert not out.exists()


# ------------------------------------------------------------------------------ missing paths
@pytest.mark.cli
@pytest.mark.parametrize(
    ("dataset", "key"), [("arrays", "dataset.reader.path"), ("folder", "dataset.reader.root")]
)
def test_a_missing_data_path_is_one_line_and_no_skeleton(
    cli: CLI, tmp_path: Path, dataset: str, key: str
) -> None:
    """Issue 20 item 11: MissingMandatoryValue traceback, exit 1, a skeleton run directory."""
    out = tmp_path / "runs"
    proc = cli(f"dataset={dataset}", "model=small_mlp", f"out_dir={out}", "epochs=1")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert f"{key} must be set" in line and f"{key}=/data/mine" in line
    assert not out.exists()


# ------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def finished(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rundir")
    proc = cli(f"out_dir={out / 'runs'}", "epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return quick_run_dir(out / "runs", "epochs=1")


def _damaged(finished: Path, tmp_path: Path, damage) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage(run)
    return run


def _set_config(run: Path, edit) -> None:
    result = json.loads((run / "result.json").read_text())
    edit(result["config"])
    (run / "result.json").write_text(json.dumps(result))


EVALUATE_CASES = {
    "config-not-a-mapping": (
        lambda run: _set_config(run, lambda c: c.__setitem__("model", "small_cnn")),
        "config.model is missing or not a mapping",
    ),
    "reader-without-target": (
        lambda run: _set_config(run, lambda c: c["dataset"].__setitem__("reader", {"name": 1})),
        "config.dataset.reader has no _target_ string",
    ),
    "epochs-not-int": (
        lambda run: _set_config(run, lambda c: c.__setitem__("epochs", "ten")),
        "config.epochs='ten' is not an integer",
    ),
    "labels-wrong-length": (
        lambda run: np.save(run / "noisy_labels.npy", np.zeros(7, np.int64)),
        "holds 7 labels",
    ),
    "labels-out-of-range": (
        lambda run: np.save(run / "noisy_labels.npy", np.full(1300, 10, np.int64)),
        "outside 0..9",
    ),
    "labels-float": (
        lambda run: np.save(run / "noisy_labels.npy", np.zeros(1300, np.float32)),
        "float32",
    ),
    "evaluation-json-not-an-object": (
        lambda run: (run / "evaluation.json").write_text("[1, 2"),
        "evaluation.json",
    ),
}


@pytest.mark.cli
@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_checks_the_run_directory(
    cli: CLI, finished: Path, tmp_path: Path, case: str
) -> None:
    """Issue 20 item 7: malformed configs and evaluation.json gave tracebacks; wrong-length,
    out-of-range or float noisy_labels.npy passed silently."""
    damage, expect = EVALUATE_CASES[case]
    run = _damaged(finished, tmp_path, damage)
    before = snapshot(run)
    proc = cli("evaluate", str(run), "eval=[calibration]", base=())
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("noisybench.evaluate: error:"), proc.stderr
    assert expect in lines[0], lines[0]
    assert snapshot(run) == before


@pytest.mark.cli
def test_evaluate_refuses_an_unfinished_run_unless_told(
    cli: CLI, finished: Path, tmp_path: Path
) -> None:
    """Issue 22: an unfinished run is refused (one line, nothing written) unless
    allow_unfinished=true, which evaluates it with a warning."""

    def unfinish(run: Path) -> None:
        result = json.loads((run / "result.json").read_text())
        result["status"] = "running"
        (run / "result.json").write_text(json.dumps(result))

    run = _damaged(finished, tmp_path, unfinish)
    before = snapshot(run)
    proc = cli("evaluate", str(run), "eval=[calibration]", base=())
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not finished" in lines[0] and "allow_unfinished=true" in lines[0]
    assert snapshot(run) == before
    proc = cli("evaluate", str(run), "eval=[calibration]", "allow_unfinished=true", base=())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" in proc.stderr and "not finished" in proc.stderr


def test_check_saved_config_unit() -> None:
    from noisybench.rundir import check_saved_config

    with pytest.raises(UserError, match="its config is not a mapping"):
        check_saved_config([1], "x/result.json")
    ok = {
        "dataset": {"reader": {"_target_": "noisybench.data.digits.load_digits"}},
        "model": {"_target_": "noisybench.models.small_cnn.small_cnn"},
        "method": {"_target_": "noisybench.methods.ce.CrossEntropy"},
        "epochs": 3,
        "seed": 0,
    }
    check_saved_config(ok, "x/result.json")
    with pytest.raises(
        UserError, match=r"^x/result\.json: method\._target_=os\.system is not allowed"
    ):
        check_saved_config({**ok, "method": {"_target_": "os.system"}}, "x/result.json")


# ------------------------------------------------------------------------------ out_dir
def test_run_dir_names_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Issue 20 item 11: '~/runs' quoted made a folder named '~'; a path over PATH_MAX and
    out_dir=/proc were tracebacks."""
    from noisybench.rundir import RunDir, run_dir_for

    with pytest.raises(UserError, match=r"out_dir=~/runs starts with '~'.*out_dir=/"):
        run_dir_for("~/runs", "x")
    deep = "/".join(["d" * 200] * 25)  # 25 components of 200 bytes: 5,024 bytes
    with pytest.raises(UserError, match=r"path is \d+ bytes, longer than the file system's 4000"):
        run_dir_for(str(tmp_path), deep)
    with pytest.raises(UserError, match="virtual file system"):
        RunDir(run_dir_for("/proc", "digits/x")).probe_writable()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cli
def test_out_dir_in_proc_is_one_line(cli: CLI) -> None:
    proc = cli("out_dir=/proc", "epochs=1")
    assert proc.returncode == 2
    assert "virtual file system" in error_line(proc.stderr)


def test_a_thread_failing_on_a_full_disk_prints_nothing_more(monkeypatch) -> None:
    """Issue 20 item 11: after the one line "the disk is full", TensorBoard's writer thread
    printed its own traceback. The command line's thread hook drops exactly that error (also
    when wrapped, as torch.save wraps it) and hands any other to Python's default hook."""
    import errno
    import os
    import threading
    from types import SimpleNamespace

    from noisybench import cli

    seen: list[BaseException] = []
    monkeypatch.setattr(cli, "_DEFAULT_THREAD_HOOK", lambda args: seen.append(args.exc_value))
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "events.out.tfevents")
    wrapped = RuntimeError("writer failed")
    wrapped.__cause__ = full
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "events.out.tfevents")
    for exc in (full, wrapped, denied):
        hook_args = SimpleNamespace(
            exc_type=type(exc), exc_value=exc, exc_traceback=None, thread=threading.current_thread()
        )
        cli._quiet_disk_full_in_threads(hook_args)
    assert seen == [denied]
    # main() installs it
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    with __import__("pytest").raises(SystemExit):
        cli.main(["--version"])
    assert threading.excepthook is cli._quiet_disk_full_in_threads
