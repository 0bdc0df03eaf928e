"""The command line around a run directory: choices, sweeps, plug-ins, finished runs,
refused resumes, restart, and non-finite losses.

Runs are subprocesses of ``python -m noisybench`` on the quickstart (digits, small CNN);
independent ones start side by side (see ``conftest.CLI.submit``).
"""

from __future__ import annotations

import shutil
import signal
import textwrap
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
    epoch_metrics,
    error_line,
    quick_run_dir,
    read_result,
    snapshot,
)

from noisybench.cli import CONF_DIR, validate_choices
from noisybench.errors import UserError

STEPS_PER_EPOCH = 11  # ceil(1300 training digits / batch 128)
NAN_AT = 2 * STEPS_PER_EPOCH + 4  # the plug-in's loss is NaN at its 27th step: epoch 3, step 4

PLUGIN_MODULE = NAN_PLUGIN_MODULE


def _run_dir(out: Path, method: str = "ce", seed: int = 0) -> Path:
    return quick_run_dir(out, "epochs=4", method=method, seed=seed)


def _plugin(root: Path) -> Path:
    """Write the plug-in (module + conf/method/nanat.yaml) under ``root``."""
    (root / "conf" / "method").mkdir(parents=True)
    (root / "nanat_method.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (root / "conf" / "method" / "nanat.yaml").write_text(
        f"name: nanat\n_target_: nanat_method.NaNAt\nat: {NAN_AT}\n"
    )
    return root


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file below ``root``."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------- chains of runs
def _sweep_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """The README's command shape with two methods and two seeds, run twice."""
    common = ("-m", "experiment=quickstart", "method=ce,bsd", "seed=0,1", "epochs=1")
    first = cli(*common, f"out_dir={out}")
    before = {d: _files(d) for d in out.glob("digits/small_cnn/sym50/*/*/seed*")}
    again = cli(*common, f"out_dir={out}")
    after = {d: _files(d) for d in out.glob("digits/small_cnn/sym50/*/*/seed*")}
    return {"first": first, "again": again, "before": before, "after": after}


def _nonfinite_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """A sweep of ce and the NaN plug-in in stop mode (the sweep goes on past the failed
    run), the failed run again on its own (stops again), then with nonfinite=skip."""
    plugin = _plugin(out / "plugin")
    common = (
        f"out_dir={out}",
        "epochs=4",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        "allow_targets=[nanat_method.]",  # a plug-in runs once allowed (noisybench.safety)
    )
    seen: dict[str, Any] = {}
    seen["sweep"] = cli("-m", "method=ce,nanat", *common, pythonpath=[plugin])
    run_dir = _run_dir(out, "nanat")
    seen["after_sweep"] = read_result(run_dir)
    seen["ckpt_bytes"] = (run_dir / "checkpoint.pt").read_bytes()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    seen["ckpt_after_sweep"] = (ckpt["epoch"], ckpt["step"])
    seen["stop"] = cli("method=nanat", *common, pythonpath=[plugin])
    seen["after_stop"] = read_result(run_dir)
    seen["ckpt_bytes_after_stop"] = (run_dir / "checkpoint.pt").read_bytes()
    seen["skip"] = cli("method=nanat", "nonfinite=skip", *common, pythonpath=[plugin])
    seen["after_skip"] = read_result(run_dir)
    seen["ce"] = read_result(_run_dir(out, "ce"))
    seen["run_dir"] = run_dir
    return seen


def _finished_run(cli: CLI, out: Path) -> Path:
    proc = cli(f"out_dir={out}", "epochs=2", "run_name=done")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "done"


def _unfinished_run(cli: CLI, out: Path) -> dict[str, Any]:
    """A run on a saved label file, SIGKILLed in epoch 2 (checkpoint of epoch 1)."""
    out.mkdir(parents=True)
    labels = out / "labels.npy"
    np.save(labels, np.arange(1300, dtype=np.int64) % 10)
    common = (f"out_dir={out}", "epochs=3", "run_name=unfinished", f"noise.label_file={labels}")
    proc = cli(*common, env={KILL_ENV: "2:3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return {"run_dir": out / "unfinished", "labels": labels, "common": common}


@pytest.fixture(scope="module")
def runs(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    tmp = tmp_path_factory.mktemp("cli")
    return {
        "nonfinite": cli.submit(_nonfinite_chain, cli, tmp / "nonfinite"),
        "sweep": cli.submit(_sweep_chain, cli, tmp / "sweep"),
        "finished": cli.submit(_finished_run, cli, tmp / "finished"),
        "unfinished": cli.submit(_unfinished_run, cli, tmp / "unfinished"),
    }


# ------------------------------------------------------------------------- choices
def test_unknown_choice_is_one_line_listing_the_valid_ones() -> None:
    methods = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    with pytest.raises(UserError) as info:
        validate_choices(["experiment=quickstart", "method=bsdd"])
    message = str(info.value)
    assert "\n" not in message
    assert "unknown method 'bsdd'" in message
    assert f"choose one of: {', '.join(methods)}" in message
    with pytest.raises(UserError, match="unknown model 'resnet7'"):
        validate_choices(["-m", "model=resnet18,resnet7"])  # each sweep value is checked


def test_sweeps_and_plugin_dirs_are_accepted(tmp_path: Path) -> None:
    validate_choices(["-m", "method=ce,bsd", "noise=sym20,sym50", "seed=0,1"])
    validate_choices(["method=glob(*)"])  # Hydra's sweep functions are left to Hydra
    plugin = _plugin(tmp_path / "plugin")
    searchpath = f"hydra.searchpath=[file://{plugin / 'conf'}]"
    validate_choices([searchpath, "method=nanat"])
    with pytest.raises(UserError) as info:
        validate_choices([searchpath, "method=nanatt"])
    assert "nanat" in str(info.value).split("choose one of:")[1]  # plug-in options listed


@pytest.mark.slow
def test_sweep_makes_one_run_dir_per_job_and_reruns_report(runs: dict[str, Future]) -> None:
    """``python -m noisybench -m experiment=quickstart method=ce,bsd`` (README) with
    seed=0,1: four run directories; the same command again reports them all as finished and
    rewrites none of their files."""
    seen = runs["sweep"].result()
    assert seen["first"].returncode == 0, seen["first"].stderr[-3000:]
    dirs = sorted(str(d.relative_to(d.parents[2])) for d in seen["before"])
    assert dirs == [
        "bsd/quickstart+epochs:1/seed0",
        "bsd/quickstart+epochs:1/seed1",
        "ce/quickstart+epochs:1/seed0",
        "ce/quickstart+epochs:1/seed1",
    ]
    # The sweep ends with a summary table: one row per run, every one finished.
    summary = seen["first"].stdout.split("sweep summary (4 runs)")[1]
    assert summary.count("| finished |") == 4
    for run_dir in seen["before"]:
        result = read_result(run_dir)
        assert result["status"] == "finished" and len(result["history"]) == 1
    assert seen["again"].returncode == 0, seen["again"].stderr[-3000:]
    assert seen["again"].stdout.count("already finished") == 4
    for run_dir, files in seen["before"].items():
        after = seen["after"][run_dir]
        for name, content in files.items():
            if name == "noisybench.log":
                assert after[name][0].startswith(content[0])
            else:
                assert after[name] == content, f"{run_dir / name} was rewritten"


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_and_sweep_goes_on(runs: dict[str, Future]) -> None:
    """In a sweep the diverging plug-in run fails (result "failed", the partial history, the
    checkpoint of epoch 2) while the ce run finishes; the sweep ends with one summary line."""
    seen = runs["nonfinite"].result()
    sweep = seen["sweep"]
    assert sweep.returncode == 1, sweep.stderr[-3000:]
    line = error_line(sweep.stderr)
    assert "1 of 2 runs of the sweep did not finish" in line
    assert "method nanat" in line and "epoch 3, step 4" in line
    assert seen["ce"]["status"] == "finished" and len(seen["ce"]["history"]) == 4

    failed = seen["after_sweep"]
    assert failed["status"] == "failed"
    assert "epoch 3, step 4" in failed["error"] and "nanat" in failed["error"]
    # The partial history: the two good epochs, identical to ce's (NaN-free until then).
    assert epoch_metrics(failed["history"]) == epoch_metrics(seen["ce"]["history"][:2])
    assert seen["ckpt_after_sweep"] == (2, 0)  # the last good epoch's checkpoint


@pytest.mark.slow
def test_nonfinite_stop_is_one_line_and_keeps_the_last_good_checkpoint(
    runs: dict[str, Future],
) -> None:
    seen = runs["nonfinite"].result()
    stop = seen["stop"]  # the same run alone: resumes at epoch 3 and meets the NaN again
    assert stop.returncode == 1
    line = error_line(stop.stderr)
    assert "loss of method nanat became non-finite at epoch 3, step 4" in line
    assert "nonfinite=skip" in line
    assert seen["ckpt_bytes_after_stop"] == seen["ckpt_bytes"]
    assert seen["after_stop"]["status"] == "failed"
    assert len(seen["after_stop"]["history"]) == 2


@pytest.mark.slow
def test_nonfinite_skip_resumes_counts_and_finishes(runs: dict[str, Future]) -> None:
    """nonfinite=skip (allowed to differ on resume) skips the one bad step, counts it in
    epoch 3's record, and keeps the schedule on time: every epoch's learning rate equals the
    NaN-free ce run's."""
    seen = runs["nonfinite"].result()
    assert seen["skip"].returncode == 0, seen["skip"].stderr[-3000:]
    result = seen["after_skip"]
    assert result["status"] == "finished"
    assert [h["skipped_steps"] for h in result["history"]] == [0, 0, 1, 0]
    assert [h["lr"] for h in result["history"]] == [h["lr"] for h in seen["ce"]["history"]]
    assert epoch_metrics(result["history"][:2]) == epoch_metrics(seen["ce"]["history"][:2])
    assert result["history"][2]["train/loss"] == result["history"][2]["train/loss"]  # finite


# ------------------------------------------------------------------------- existing runs
def test_finished_run_is_reported_and_left_alone(cli: CLI, runs: dict[str, Future]) -> None:
    run_dir = runs["finished"].result()
    before = _files(run_dir)
    proc = cli(f"out_dir={run_dir.parent}", "epochs=2", "run_name=done")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(run_dir)
    assert "already finished" in proc.stdout
    assert f"{result['last']['test/acc']:.4f}" in proc.stdout
    assert _files(run_dir) == before  # nothing written, not even Hydra's files


def test_config_change_on_a_finished_run_is_refused(cli: CLI, runs: dict[str, Future]) -> None:
    run_dir = runs["finished"].result()
    before = _files(run_dir)
    proc = cli(f"out_dir={run_dir.parent}", "epochs=2", "run_name=done", "optim.optimizer.lr=0.02")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "different config" in line and "optim.optimizer.lr (saved 0.01, now 0.02)" in line
    assert "restart=true" in line
    assert _files(run_dir) == before


def test_method_change_on_resume_is_refused(cli: CLI, runs: dict[str, Future]) -> None:
    seen = runs["unfinished"].result()
    run_dir = seen["run_dir"]
    before = _files(run_dir)
    proc = cli(*seen["common"], "method=bsd")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    for key in ("method._target_", "method.gamma", "method.name"):
        assert key in line
    assert _files(run_dir) == before


@pytest.mark.slow
def test_checkpoint_config_is_checked_without_a_result_file(
    cli: CLI, runs: dict[str, Future], tmp_path: Path
) -> None:
    """The checkpoint's own config is authoritative: with result.json gone the change is
    still refused, by the run itself."""
    seen = runs["unfinished"].result()
    run_dir = tmp_path / "unfinished"
    shutil.copytree(seen["run_dir"], run_dir)
    (run_dir / "result.json").unlink()
    before = snapshot(run_dir)
    common = [c for c in seen["common"] if not c.startswith("out_dir=")]
    proc = cli(*common, f"out_dir={tmp_path}", "optim.optimizer.weight_decay=0.001")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "checkpoint" in line and "optim.optimizer.weight_decay (saved 0.0, now 0.001)" in line
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if k in before and k != "noisybench.log"} == {
        k: v for k, v in before.items() if k != "noisybench.log"
    }


@pytest.mark.slow
def test_noise_change_on_resume_is_refused(
    cli: CLI, runs: dict[str, Future], tmp_path: Path
) -> None:
    """Same config, but the label file's contents changed: refused, naming the noise record
    keys that differ; the run directory's files stay as they were."""
    seen = runs["unfinished"].result()
    run_dir = tmp_path / "unfinished"
    shutil.copytree(seen["run_dir"], run_dir)
    labels = tmp_path / "labels.npy"
    changed = np.arange(1300, dtype=np.int64) % 10
    changed[:5] = (changed[:5] + 1) % 10
    np.save(labels, changed)
    before = snapshot(run_dir)
    common = [c for c in seen["common"] if not c.startswith(("out_dir=", "noise.label_file="))]
    # Same path as the config recorded: overwrite the original file for this check.
    original = seen["labels"].read_bytes()
    try:
        seen["labels"].write_bytes(labels.read_bytes())
        proc = cli(*common, f"out_dir={tmp_path}", f"noise.label_file={seen['labels']}")
    finally:
        seen["labels"].write_bytes(original)
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "different noisy labels" in line and "sha256" in line and "realised_rate" in line
    after = snapshot(run_dir)
    for name, content in before.items():
        if name != "noisybench.log":
            assert after[name] == content, name


@pytest.mark.slow
def test_restart_moves_old_files_aside_and_starts_over(
    cli: CLI, runs: dict[str, Future], tmp_path: Path
) -> None:
    run_dir = tmp_path / "done"
    shutil.copytree(runs["finished"].result(), run_dir)
    before = snapshot(run_dir)
    proc = cli(f"out_dir={tmp_path}", "epochs=2", "run_name=done", "restart=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    moved = list((run_dir / "previous").iterdir())
    assert len(moved) == 1
    for name in ("result.json", "checkpoint.pt", "checkpoint.pt.prev", "noisy_labels.npy"):
        assert (moved[0] / name).read_bytes() == before[name], name
    result = read_result(run_dir)
    assert result["status"] == "finished"
    old = read_result(moved[0])
    # Started over from scratch with the same seeds: the same numbers again.
    assert epoch_metrics(result["history"]) == epoch_metrics(old["history"])
    # Hydra's record of the first invocation is untouched (each invocation has its own).
    for name, content in before.items():
        if name.startswith(".hydra/"):
            assert (run_dir / name).read_bytes() == content


BROKEN_PLUGIN_MODULE = """
from noisybench.methods.ce import CrossEntropy


class Broken(CrossEntropy):
    def training_step(self, model, batch, epoch):
        raise RuntimeError("a bug in the plug-in's step")
"""


def test_an_unexpected_error_prints_the_jobs_traceback_only(cli: CLI, tmp_path: Path) -> None:
    """A bug in a plug-in (not bad input): exit 1 and the traceback from the job's frame on,
    as Hydra prints it, then Hydra's hint; ``HYDRA_FULL_ERROR=1`` shows the whole stack."""
    plugin = tmp_path / "plugin"
    (plugin / "conf" / "method").mkdir(parents=True)
    (plugin / "broken_method.py").write_text(textwrap.dedent(BROKEN_PLUGIN_MODULE))
    (plugin / "conf" / "method" / "broken.yaml").write_text(
        "name: broken\n_target_: broken_method.Broken\n"
    )
    common = (
        "method=broken",
        "epochs=1",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        "allow_targets=[broken_method.]",
    )
    proc = cli(*common, f"out_dir={tmp_path / 'a'}", pythonpath=[plugin])
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" in err and "RuntimeError: a bug in the plug-in's step" in err
    assert 'broken_method.py", line 7, in training_step' in err
    assert err.rstrip().endswith("HYDRA_FULL_ERROR=1 for a complete stack trace."), err[-500:]
    frames = [line for line in err.splitlines() if line.lstrip().startswith('File "')]
    assert "noisybench/cli.py" in frames[0] and "_hydra_main" in frames[0], frames  # the job
    assert not any("/hydra/" in line for line in frames), frames
    full = cli(
        *common, f"out_dir={tmp_path / 'b'}", pythonpath=[plugin], env={"HYDRA_FULL_ERROR": "1"}
    )
    assert full.returncode == 1 and "RuntimeError: a bug in the plug-in's step" in full.stderr
    assert "/hydra/" in full.stderr and "for a complete stack trace" not in full.stderr


def test_a_second_process_in_the_same_run_dir_is_refused(cli: CLI, tmp_path: Path) -> None:
    """While one process holds the run directory's lock, another is refused in one line and
    writes none of the run's files."""
    fcntl = pytest.importorskip("fcntl")
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = cli(f"out_dir={tmp_path}", "run_name=busy", "epochs=1")
    assert proc.returncode == 2
    assert "another noisybench process is running in" in error_line(proc.stderr)
    for name in ("result.json", "checkpoint.pt", "noisy_labels.npy", "tb", "previous"):
        assert not (run_dir / name).exists(), name
