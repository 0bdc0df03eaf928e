"""Reliability, round two (issue 14): a full disk, checkpoints that load but do not fit, damaged
label files, result files of the wrong shape, run-directory skeletons, file modes, a Ctrl-C at
exit, the epoch-1 divergence message, and readable logs when output is not a terminal.

Faults are made at the operating-system boundary: a real small tmpfs where this process may
mount one (root), and otherwise ``os.fsync`` failing with ENOSPC for one file (the way a full
disk shows on file systems that allocate late), installed through a ``sitecustomize`` module
on the subprocess's path. Runs are subprocesses of ``python -m noisybench`` on the quickstart,
started side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    CLI,
    KILL_ENV,
    NAN_PLUGIN_MODULE,
    assert_only_hydra_added,
    epoch_metrics,
    error_line,
    read_result,
    snapshot,
)

from noisybench.config import compose, resolved, validate_choices
from noisybench.data.noise import label_hash, load_labels
from noisybench.errors import UserError
from noisybench.io import atomic_write_json, atomic_write_text, load_checkpoint
from noisybench.report import load_results
from noisybench.rundir import RunDir

SIGKILLED = -signal.SIGKILL
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+): train loss ([0-9.]+), test acc ([0-9.]+), [0-9.]+ s")

# Installed as sitecustomize in the subprocesses that need a fault (each switched on by an
# environment variable, so the same module serves every test).
SITECUSTOMIZE = """
import errno
import os

_enospc = os.environ.get("NB_TEST_ENOSPC")  # "<file name>:<n>": the n-th fsync of it fails
if _enospc:
    _name, _nth = _enospc.rsplit(":", 1)
    _count = [0]
    _real_fsync = os.fsync

    def _fsync(fd):
        try:
            target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            target = ""
        if target.startswith(f".{_name}.") and target.endswith(".tmp"):
            _count[0] += 1
            if _count[0] == int(_nth):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_fsync(fd)

    os.fsync = _fsync

if os.environ.get("NB_TEST_SIGINT_AT_EXIT"):  # a Ctrl-C that arrives while the process exits
    import atexit
    import signal
    import time

    def _late_sigint():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)

    atexit.register(_late_sigint)
"""

NAN_PLUGIN = NAN_PLUGIN_MODULE  # diverges in the first epoch with a small ``at``


def _faults(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    return root


def _ckpt_epoch(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"])


# ------------------------------------------------------------------------------ chains of runs
def _full_disk_chain(cli: CLI, out: Path, faults: Path, *extra: str) -> dict[str, Any]:
    """The checkpoint write of epoch 2 fails with ENOSPC; then the same command resumes."""
    common = (f"out_dir={out}", "run_name=full", "epochs=3", *extra)
    seen: dict[str, Any] = {"dir": out / "full"}
    seen["full"] = cli(*common, env={"NB_TEST_ENOSPC": "checkpoint.pt:2"}, pythonpath=[faults])
    seen["after_full"] = read_result(out / "full")
    seen["ckpt_epoch"] = _ckpt_epoch(out / "full")
    seen["leftovers"] = sorted(p.name for p in (out / "full").glob(".*.tmp"))
    seen["resume"] = cli(*common)
    seen["resumed"] = read_result(out / "full")
    return seen


def _tmpfs_chain(cli: CLI, out: Path) -> dict[str, Any] | None:
    """A real 2 MiB tmpfs: the epoch-3 checkpoint (about 1 MB, next to the two it rotates)
    does not fit. Then the file system grows and the same command resumes."""
    out.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(out)], capture_output=True
    )
    if mount.returncode != 0:
        return None
    try:
        common = (f"out_dir={out}", "run_name=full", "epochs=3")
        seen: dict[str, Any] = {"dir": out / "full", "full": cli(*common)}
        seen["after_full"] = read_result(out / "full")
        seen["ckpt_epoch"] = _ckpt_epoch(out / "full")
        seen["leftovers"] = sorted(p.name for p in (out / "full").glob(".*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)
        seen["resume"] = cli(*common)
        seen["resumed"] = read_result(out / "full")
        return seen
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def _reference(cli: CLI, out: Path) -> dict[str, Any]:
    proc = cli(f"out_dir={out}", "run_name=full", "epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_result(out / "full")


def _killed_bsd(cli: CLI, out: Path) -> Path:
    """BSD, 2 epochs, SIGKILLed at step 3 of epoch 2: a checkpoint of epoch 1."""
    proc = cli(f"out_dir={out}", "run_name=run", "epochs=2", "method=bsd", env={KILL_ENV: "2:3"})
    assert proc.returncode == SIGKILLED, proc.stderr[-3000:]
    assert _ckpt_epoch(out / "run") == 1
    return out / "run"


def _finished_ce(cli: CLI, out: Path) -> Path:
    proc = cli(f"out_dir={out}", "run_name=run", "epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run"


def _misfit(cli: CLI, base: Path, out: Path, change: str) -> tuple:
    """A copy of the killed BSD run whose checkpoint loads but does not fit the code."""
    shutil.copytree(base, out / "run")
    path = out / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    if change == "missing-entry":
        ckpt["model"].pop(next(iter(ckpt["model"])))
    elif change == "mis-shaped-tensor":
        key = next(k for k, v in ckpt["model"].items() if v.ndim > 1)
        ckpt["model"][key] = torch.zeros(3)
    elif change == "empty-method-state":
        ckpt["method"] = {}
    torch.save(ckpt, path)
    before = snapshot(out / "run")
    proc = cli(f"out_dir={out}", "run_name=run", "epochs=2", "method=bsd")
    return proc, before, snapshot(out / "run")


def _labels_damaged_on_resume(cli: CLI, base: Path, out: Path) -> dict[str, Any]:
    shutil.copytree(base, out / "run")
    (out / "run" / "noisy_labels.npy").write_bytes(b"\x93NUMPY\x01\x00not really")
    proc = cli(f"out_dir={out}", "run_name=run", "epochs=2", "method=bsd")
    return {"proc": proc, "dir": out / "run"}


def _finished_with_bad_labels(cli: CLI, base: Path, out: Path, damage: str) -> tuple:
    shutil.copytree(base, out / "run")
    labels = out / "run" / "noisy_labels.npy"
    if damage == "garbage":
        labels.write_bytes(b"garbage")
    elif damage == "missing":
        labels.unlink()
    elif damage == "other-labels":
        np.save(labels, np.zeros(1300, dtype=np.int64))
    before = snapshot(out / "run")
    proc = cli(f"out_dir={out}", "run_name=run", "epochs=2")
    return proc, before, snapshot(out / "run")


def _logs(cli: CLI, out: Path, progress: str) -> dict[str, Any]:
    """A 3-epoch run whose output is a pipe (not a terminal); ``progress`` as given."""
    proc = cli(
        f"out_dir={out}",
        "run_name=run",
        "epochs=3",
        base=("experiment=quickstart", "logger=[]", f"progress={progress}"),
    )
    return {
        "proc": proc,
        "result": read_result(out / "run"),
        "log": (out / "run" / "noisybench.log").read_text(),
    }


def _sigint_at_exit(cli: CLI, out: Path, faults: Path) -> subprocess.CompletedProcess:
    """Ctrl-C at step 3 of epoch 2 (the run stops and writes a checkpoint), then another
    Ctrl-C while the process exits."""
    return cli(
        f"out_dir={out}",
        "run_name=run",
        "epochs=3",
        env={KILL_ENV: "2:3:INT", "NB_TEST_SIGINT_AT_EXIT": "1"},
        pythonpath=[faults],
    )


def _diverges_in_epoch_1(cli: CLI, out: Path) -> dict[str, Any]:
    plugin = out / "plugin"
    (plugin / "conf" / "method").mkdir(parents=True)
    (plugin / "nan_first_epoch.py").write_text(textwrap.dedent(NAN_PLUGIN))
    (plugin / "conf" / "method" / "nanat.yaml").write_text(
        "name: nanat\n_target_: nan_first_epoch.NaNAt\nat: 3\n"
    )
    proc = cli(
        f"out_dir={out}",
        "run_name=run",
        "epochs=2",
        "method=nanat",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        "allow_targets=[nan_first_epoch.]",  # a plug-in runs once allowed
        pythonpath=[plugin],
    )
    return {"proc": proc, "dir": out / "run"}


def _skeletons(cli: CLI, out: Path) -> dict[str, Any]:
    """Bad input found only while building (CIFAR-10 files missing: the checks before Hydra
    do not read data), in a new out_dir and in an existing empty one."""
    fresh, existing, no_data = out / "fresh", out / "existing", out / "no_data"
    existing.mkdir(parents=True)
    no_data.mkdir()
    missing = ("dataset=cifar10", f"data_dir={no_data}")
    return {
        "fresh": cli(f"out_dir={fresh}", *missing),
        "fresh_dir": fresh,
        "existing": cli(f"out_dir={existing}", *missing),
        "existing_dir": existing,
    }


@pytest.fixture(scope="module")
def runs(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    tmp = tmp_path_factory.mktemp("reliability")
    faults = _faults(tmp / "faults")
    killed = cli.submit(_killed_bsd, cli, tmp / "killed")
    finished = cli.submit(_finished_ce, cli, tmp / "finished")
    jobs: dict[str, Future] = {
        "full_disk": cli.submit(_full_disk_chain, cli, tmp / "full_disk", faults),
        "full_disk_async": cli.submit(
            _full_disk_chain, cli, tmp / "full_disk_async", faults, "checkpoint_async=true"
        ),
        "tmpfs": cli.submit(_tmpfs_chain, cli, tmp / "tmpfs"),
        "reference": cli.submit(_reference, cli, tmp / "reference"),
        "logs_bars": cli.submit(_logs, cli, tmp / "logs_bars", "true"),
        "logs_plain": cli.submit(_logs, cli, tmp / "logs_plain", "false"),
        "sigint_at_exit": cli.submit(_sigint_at_exit, cli, tmp / "sigint", faults),
        "diverges": cli.submit(_diverges_in_epoch_1, cli, tmp / "diverges"),
        "skeletons": cli.submit(_skeletons, cli, tmp / "skeletons"),
    }

    def after(base: Future, fn: Any, *args: Any) -> Future:
        return cli.submit(lambda: fn(cli, base.result(), *args))

    for change in ("missing-entry", "mis-shaped-tensor", "empty-method-state"):
        jobs[f"misfit-{change}"] = after(killed, _misfit, tmp / change, change)
    jobs["labels_resume"] = after(killed, _labels_damaged_on_resume, tmp / "labels_resume")
    for damage in ("garbage", "missing", "other-labels"):
        jobs[f"finished-{damage}"] = after(
            finished, _finished_with_bad_labels, tmp / f"finished-{damage}", damage
        )
    return jobs


# ------------------------------------------------------------------------------ full disk
def _check_full_disk(seen: dict[str, Any], reference: dict[str, Any]) -> None:
    proc = seen["full"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "is full (No space left on device" in line, line
    assert str(seen["dir"]) in line and "free some space" in line, line
    assert "run the same command again to resume" in line, line
    assert f"the checkpoint of epoch {seen['ckpt_epoch']} and a result file" in line, line
    # The result never claims more epochs than the checkpoint holds.
    failed = seen["after_full"]
    assert failed["status"] == "failed" and "is full" in failed["error"]
    assert len(failed["history"]) == seen["ckpt_epoch"] < 3
    assert seen["leftovers"] == []  # the failed write left no temporary file
    # After space is freed, the same command resumes and ends exactly like an uninterrupted run.
    assert seen["resume"].returncode == 0, seen["resume"].stderr[-3000:]
    assert seen["resumed"]["status"] == "finished"
    assert epoch_metrics(seen["resumed"]["history"]) == epoch_metrics(reference["history"])


def test_full_disk_at_a_checkpoint_write_is_one_line_and_resumes_exactly(
    runs: dict[str, Future],
) -> None:
    seen = runs["full_disk"].result()
    _check_full_disk(seen, runs["reference"].result())
    assert seen["ckpt_epoch"] == 1  # the fault hit the epoch-2 checkpoint


def test_full_disk_in_a_background_checkpoint_write(runs: dict[str, Future]) -> None:
    """``checkpoint_async=true``: the epoch-2 write fails in the writer thread; the error
    comes out at the next wait (epoch 3's end) as the same one line, the result file holds
    the epoch-1 checkpoint's history, and the same command resumes exactly."""
    seen = runs["full_disk_async"].result()
    _check_full_disk(seen, runs["reference"].result())
    assert seen["ckpt_epoch"] == 1


def test_full_disk_on_a_real_small_file_system(runs: dict[str, Future]) -> None:
    seen = runs["tmpfs"].result()
    if seen is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    _check_full_disk(seen, runs["reference"].result())


def test_disk_full_is_found_behind_torch_runtime_error() -> None:
    """torch.save reports ENOSPC as a RuntimeError raised while handling the OSError."""
    from noisybench.io import disk_full

    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904
    except RuntimeError as exc:
        assert disk_full(exc) is not None and disk_full(exc).errno == 28
    assert disk_full(RuntimeError("other")) is None
    try:  # a message already made from it ("raise ... from None") is not found again
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise UserError("the disk is full") from None
    except UserError as exc:
        assert disk_full(exc) is None
    assert disk_full(OSError(13, "Permission denied")) is None


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("change", ["missing-entry", "mis-shaped-tensor", "empty-method-state"])
def test_checkpoint_that_does_not_fit_is_one_line_and_nothing_is_rewritten(
    change: str, runs: dict[str, Future]
) -> None:
    proc, before, after = runs[f"misfit-{change}"].result()
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "does not fit this version of noisybench or this config" in line, line
    assert "restart=true" in line
    assert_only_hydra_added(before, after)


def test_checkpoint_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(UserError, match="is not a regular file") as info:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "does not exist" not in str(info.value)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_refusal_gives_no_unsafe_advice_and_no_warning(tmp_path: Path, capfd) -> None:
    """A checkpoint with code in it, and a TorchScript file: one message each, without
    torch's advice to load unsafely, and no warning printed before it."""
    import pickle

    with open(tmp_path / "code.pt", "wb") as f:
        torch.save({"model": _Payload()}, f, pickle_module=pickle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")
    capfd.readouterr()
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("code.pt", "script.pt"):
            with pytest.raises(UserError) as info:
                load_checkpoint(tmp_path / name)
            messages.append(str(info.value))
    assert caught == []
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
    assert "not tensors or plain data" in messages[0] and "print" in messages[0]
    assert "TorchScript" in messages[1]
    for message in messages:
        assert "\n" not in message and "\x1b" not in message
        for advice in ("can still be loaded", "weights_only", "trust", "add_safe_globals"):
            assert advice not in message, message


# ------------------------------------------------------------------------------ label files
def test_label_file_damaged_before_a_resume_is_rewritten(runs: dict[str, Future]) -> None:
    seen = runs["labels_resume"].result()
    assert seen["proc"].returncode == 0, seen["proc"].stderr[-3000:]
    result = read_result(seen["dir"])
    labels = np.load(seen["dir"] / "noisy_labels.npy", allow_pickle=False)
    assert result["status"] == "finished"
    assert label_hash(labels) == result["noise"]["sha256"]
    assert "damaged or stale; rewritten" in (seen["dir"] / "noisybench.log").read_text()


@pytest.mark.parametrize(
    ("damage", "state"),
    [("garbage", "is damaged"), ("missing", "is missing"), ("other-labels", "is damaged")],
)
def test_finished_run_reports_a_damaged_label_file(
    damage: str, state: str, runs: dict[str, Future]
) -> None:
    proc, before, after = runs[f"finished-{damage}"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already finished" in proc.stdout
    assert f"warning: noisy_labels.npy {state}" in proc.stdout, proc.stdout
    assert "restart=true" in proc.stdout
    assert after == before  # reported, not touched


def test_text_and_directory_label_files_are_named_as_such(tmp_path: Path) -> None:
    text = tmp_path / "labels.txt"
    text.write_text("1\n2\n3\n")
    with pytest.raises(UserError, match="is a text file") as info:
        load_labels(text, 3, 10)
    assert "pickle" not in str(info.value)
    with pytest.raises(UserError, match="is a directory, not a file"):
        load_labels(tmp_path, 3, 10)


# ------------------------------------------------------------------------------ result shapes
def _config() -> dict[str, Any]:
    return resolved(compose(["experiment=quickstart", "epochs=2"]))


WRONG_SHAPES = {
    "list": [1, 2, 3],
    "string": "finished",
    "config-a-number": {"status": "finished", "config": 5},
    "config-of-wrong-shape": {"status": "finished", "config": {"method": 5, "epochs": [1]}},
    "summary-of-wrong-shape": {"status": "finished", "history": "x", "last": 3, "best": [1]},
    "status-a-list": {"status": ["finished"], "config": None},
}


@pytest.mark.parametrize("shape", WRONG_SHAPES, ids=list(WRONG_SHAPES))
def test_result_of_the_wrong_shape_is_refused_or_ignored(shape: str, tmp_path: Path) -> None:
    """The re-run check either ignores the file (the checkpoint decides), or refuses it in one
    line; it never crashes. A finished-looking file with a damaged summary is not reported."""
    config = _config()
    content = WRONG_SHAPES[shape]
    if shape == "summary-of-wrong-shape":
        content = {**content, "config": config}
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    (rd.path / "checkpoint.pt").write_bytes(b"")  # a run is here: its config is compared
    rd.result_file.write_text(json.dumps(content))
    try:
        assert rd.check_existing(config) is None
    except UserError as exc:
        assert "\n" not in str(exc)
        assert shape in ("config-a-number", "config-of-wrong-shape", "status-a-list")


def test_report_skips_results_of_the_wrong_shape(tmp_path: Path, capsys) -> None:
    good = {
        "status": "finished",
        "config": {"method": {"name": "ce"}},
        "history": [{"epoch": 1, "test/acc": 0.5}],
        "last": {"epoch": 1, "test/acc": 0.5},
        "best": {"epoch": 1, "test/acc": 0.5},
    }
    bad = {
        "list": [1, 2],
        "config": {**good, "config": 5},
        "method": {**good, "config": {"method": "ce"}},
        "history": {**good, "history": {"a": 1}},
        "last": {**good, "last": 0.5},
        "acc": {**good, "last": {"test/acc": "high"}},
    }
    for name, content in {"good": good, **bad}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(content))
    results = load_results([tmp_path])
    assert [Path(r["run_dir"]).name for r in results] == ["good"]
    skipped = capsys.readouterr().err
    assert skipped.count("not a noisybench result") == len(bad)


# ------------------------------------------------------------------------------ run directories
def test_bad_input_found_while_building_leaves_no_skeleton(runs: dict[str, Future]) -> None:
    seen = runs["skeletons"].result()
    for which in ("fresh", "existing"):
        proc = seen[which]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "CIFAR-10 not found" in error_line(proc.stderr)
    assert not seen["fresh_dir"].exists()  # everything this command created is gone
    assert seen["existing_dir"].is_dir() and list(seen["existing_dir"].iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_of_the_umask(umask: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
        atomic_write_text(tmp_path / "metrics.csv", "a\n1\n")
        with open(tmp_path / "plain", "w") as f:  # what open() gives, the reference
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    for name in ("result.json", "metrics.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


# ------------------------------------------------------------------------------ config values
@pytest.mark.parametrize("arg", ["method=null", "dataset=null", "~model", "noise=[null]"])
def test_a_required_group_cannot_be_emptied(arg: str) -> None:
    with pytest.raises(UserError, match="which every run needs"):
        validate_choices([arg])


def test_optional_groups_may_be_null() -> None:
    validate_choices(["experiment=null", "logger=null"])


# ------------------------------------------------------------------------------ signals
def test_ctrl_c_while_exiting_prints_no_traceback(runs: dict[str, Future]) -> None:
    proc = runs["sigint_at_exit"].result()
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "stopped by SIGINT at epoch 2, step 3" in line
    assert "Exception ignored" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


def test_divergence_in_the_first_epoch_claims_no_checkpoint(runs: dict[str, Future]) -> None:
    seen = runs["diverges"].result()
    proc = seen["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "became non-finite at epoch 1, step 3" in line
    assert "no checkpoint was written yet" in line and "is kept" not in line
    assert not (seen["dir"] / "checkpoint.pt").exists()
    result = read_result(seen["dir"])
    assert result["status"] == "failed" and result["history"] == []


# ------------------------------------------------------------------------------ logs
@pytest.mark.parametrize("which", ["logs_bars", "logs_plain"])
def test_piped_output_has_one_plain_line_per_epoch(which: str, runs: dict[str, Future]) -> None:
    """Output to a pipe (progress=true or false): one line per epoch on the console and in
    noisybench.log, with the numbers of the result file, and no escape code or carriage
    return anywhere."""
    seen = runs[which].result()
    proc = seen["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "\x1b" not in console and "\r" not in console
    expected = [
        (str(h["epoch"]), "3", f"{h['test/acc']:.4f}", f"{h['train/loss']:.4f}")
        for h in seen["result"]["history"]
    ]
    assert len(expected) == 3
    for text in (console, seen["log"]):
        found = [(e, n, acc, loss) for e, n, loss, acc in EPOCH_LINE.findall(text)]
        assert found == expected, text[-2000:]
