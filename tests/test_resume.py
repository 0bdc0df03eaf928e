"""Checkpoint and resume on the command line: crashes at chosen points, signals, a truncated
checkpoint, and the numbers of the resumed run compared with an uninterrupted one.

The kill points come from the engine's test-only hook ``NOISYBENCH_TEST_KILL_AT``
(``EPOCH:POINT[:SIGNAL]``, see :mod:`noisybench.engine`): the process sends itself the signal
at that point, so every crash lands at the same place on every machine. A resumed run must
reproduce the uninterrupted run's per-epoch numbers exactly (CPU, deterministic mode, same
seeds); only wall-clock timings may differ.

Each scenario is a chain of runs of the same command in one run directory; the chains are
independent, so the module starts them all at once (one per core) and each test checks one.
Quickstart digits: 1,300 training images in batches of 128, so 11 steps per epoch.
"""

from __future__ import annotations

import signal
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    CLI,
    KILL_ENV,
    epoch_metrics,
    error_line,
    quick_run_dir,
    read_result,
    snapshot,
)

from noisybench.report import collect, load_results

EPOCHS = 4
SIGKILLED = -signal.SIGKILL  # subprocess's return code of a process killed by SIGKILL


def _run_dir(out: Path, method: str = "ce", epochs: int = EPOCHS) -> Path:
    return quick_run_dir(out, f"epochs={epochs}", method=method)


def _checkpoint(run_dir: Path, name: str = "checkpoint.pt") -> dict[str, Any]:
    return torch.load(run_dir / name, map_location="cpu", weights_only=True)


def _position(run_dir: Path, name: str = "checkpoint.pt") -> tuple[int, int]:
    """(0-based epoch to continue at, step within it) of a checkpoint."""
    ckpt = _checkpoint(run_dir, name)
    assert len(ckpt["history"]) == ckpt["epoch"]  # one record per completed epoch
    return ckpt["epoch"], ckpt["step"]


def _reference(cli: CLI, out: Path, method: str, epochs: int) -> list[dict[str, Any]]:
    proc = cli(f"out_dir={out}", f"method={method}", f"epochs={epochs}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(_run_dir(out, method, epochs))
    assert result["status"] == "finished"
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    return result["history"]


def _killed(
    cli: CLI, common: tuple[str, ...], run_dir: Path, hook: str, ckpt: tuple[int, int] | None
) -> dict[str, Any]:
    """Run with a SIGKILL at ``hook``; check the crash left the checkpoint at ``ckpt`` (or
    none) and a readable result file marked "running"; return that result."""
    proc = cli(*common, env={KILL_ENV: hook})
    assert proc.returncode == SIGKILLED, (hook, proc.stderr[-3000:])
    if ckpt is None:
        assert not (run_dir / "checkpoint.pt").exists(), hook
    else:
        assert _position(run_dir) == ckpt, hook
    result = read_result(run_dir)
    assert result["status"] == "running", hook
    # The result tooling reads the unfinished run (and keeps it out of the tables).
    (loaded,) = load_results([run_dir])
    assert loaded["status"] == "running" and loaded["history"] == result["history"]
    assert collect([loaded]) == []
    return result


def _ce_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """Cross-entropy, 4 epochs, TensorBoard on, killed at four points and resumed, with a
    truncated checkpoint on the way:

    1. SIGKILL at epoch 1, step 5: no checkpoint yet; the result file exists, empty.
    2. SIGKILL while the epoch-2 checkpoint is written (complete temporary file, not yet
       renamed): the epoch-1 checkpoint stays.
    3. SIGKILL after the epoch-3 checkpoint, before the result file and TensorBoard caught up.
    4. checkpoint.pt truncated by hand: refused with a one-line error naming
       checkpoint.pt.prev, nothing modified; renaming .prev as told resumes from epoch 2.
    5. SIGKILL at epoch 4, step 6; 6. the run finishes.
    """
    run_dir = _run_dir(out)
    common = (f"out_dir={out}", f"epochs={EPOCHS}", "logger=[tensorboard]")
    seen: dict[str, Any] = {"partial": []}

    seen["partial"].append(_killed(cli, common, run_dir, "1:5", None)["history"])
    seen["partial"].append(_killed(cli, common, run_dir, "2:checkpoint", (1, 0))["history"])
    seen["partial"].append(_killed(cli, common, run_dir, "3:result", (3, 0))["history"])
    assert [len(h) for h in seen["partial"]] == [0, 1, 2]
    assert _position(run_dir, "checkpoint.pt.prev") == (2, 0)

    path = run_dir / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = snapshot(run_dir)
    proc = cli(*common)
    assert proc.returncode == 2, proc.stderr[-3000:]
    seen["truncated_error"] = error_line(proc.stderr)
    after = snapshot(run_dir)
    for name, content in before.items():
        if name == "noisybench.log":  # Hydra's log is appended to, never rewritten
            assert after[name].startswith(content)
        else:
            assert after[name] == content, f"{name} changed by a refused run"
    (run_dir / "checkpoint.pt.prev").replace(path)  # what the message says to do

    _killed(cli, common, run_dir, "4:6", (3, 0))
    proc = cli(*common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(run_dir.glob(".*tmp")), "a killed write's temporary file was left behind"
    seen["result"] = read_result(run_dir)
    seen["run_dir"] = run_dir
    return seen


def _bsd_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """BSD, 3 epochs: stopped by SIGTERM in the middle of epoch 2 (a mid-epoch checkpoint,
    with the per-sample stores half updated for the epoch), SIGKILLed while the epoch-3
    checkpoint is written (back to the epoch-2 one), then resumed to the end."""
    run_dir = _run_dir(out, "bsd", epochs=3)
    common = (f"out_dir={out}", "method=bsd", "epochs=3")
    proc = cli(*common, env={KILL_ENV: "2:6:TERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert _position(run_dir) == (1, 6)
    _killed(cli, common, run_dir, "3:checkpoint", (2, 0))
    proc = cli(*common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"result": read_result(run_dir), "method_state": _checkpoint(run_dir)["method"]}


def _signal_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """Cross-entropy, 4 epochs: SIGTERM before step 5 of epoch 2; SIGTERM during the
    evaluation of epoch 2; SIGINT before step 4 of epoch 3 followed by a second SIGINT while
    that checkpoint is written; then to the end."""
    run_dir = _run_dir(out)
    common = (f"out_dir={out}", f"epochs={EPOCHS}")
    seen: dict[str, Any] = {}
    for name, hook in (("term", "2:5:TERM"), ("term_eval", "2:end:TERM"), ("int", "3:4:INT")):
        if name == "int":
            hook += ",3:checkpoint:INT"
        proc = cli(*common, env={KILL_ENV: hook})
        result = read_result(run_dir)
        seen[name] = {
            "returncode": proc.returncode,
            "line": error_line(proc.stderr),
            "position": _position(run_dir),
            "sums_steps": (_checkpoint(run_dir)["epoch_sums"] or {}).get("steps"),
            "status": result["status"],
            "error": result.get("error", ""),
            "history": result["history"],
        }
    proc = cli(*common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen["result"] = read_result(run_dir)
    return seen


def _async_chain(cli: CLI, out: Path) -> dict[str, Any]:
    """Cross-entropy, 4 epochs, checkpoints written in the background (``checkpoint_async``,
    the CUDA default): SIGKILL while the writer thread writes the epoch-2 checkpoint, SIGKILL
    at epoch 3 step 5 (the epoch-2 write may or may not be done), SIGTERM at epoch 4 step 3
    (the interruption waits for the write in flight, then saves at that boundary), resume."""
    run_dir = _run_dir(out)
    common = (f"out_dir={out}", f"epochs={EPOCHS}", "checkpoint_async=true")
    seen: dict[str, Any] = {"kills": []}
    for hook in ("2:checkpoint", "3:5"):
        proc = cli(*common, env={KILL_ENV: hook})
        assert proc.returncode == SIGKILLED, (hook, proc.stderr[-3000:])
        seen["kills"].append((hook, _position(run_dir), read_result(run_dir)["history"]))
    proc = cli(*common, env={KILL_ENV: "4:3:TERM"})
    seen["term"] = (proc.returncode, _position(run_dir), read_result(run_dir))
    proc = cli(*common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen["result"] = read_result(run_dir)
    seen["final"] = _checkpoint(run_dir)
    return seen


@pytest.fixture(scope="module")
def chains(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    tmp = tmp_path_factory.mktemp("resume")
    return {
        "ref_ce": cli.submit(_reference, cli, tmp / "reference", "ce", EPOCHS),
        "ce": cli.submit(_ce_chain, cli, tmp / "ce"),
        "ref_bsd": cli.submit(_reference, cli, tmp / "reference", "bsd", 3),
        "bsd": cli.submit(_bsd_chain, cli, tmp / "bsd"),
        "signals": cli.submit(_signal_chain, cli, tmp / "signals"),
        "async": cli.submit(_async_chain, cli, tmp / "async"),
        "ref_ce_dir": cli.submit(lambda: _run_dir(tmp / "reference", "ce", EPOCHS)),
    }


@pytest.mark.slow
def test_sigkill_at_four_points_then_resume_is_identical(chains: dict[str, Future]) -> None:
    reference = chains["ref_ce"].result()
    seen = chains["ce"].result()
    result = seen["result"]
    assert result["status"] == "finished"
    assert epoch_metrics(result["history"]) == epoch_metrics(reference)
    # The partial histories the crashes left were the reference's first epochs.
    for partial in seen["partial"]:
        assert epoch_metrics(partial) == epoch_metrics(reference[: len(partial)])


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_and_previous_kept(chains: dict[str, Future]) -> None:
    line = chains["ce"].result()["truncated_error"]
    assert "corrupt or truncated" in line
    assert "rename it to checkpoint.pt" in line and "checkpoint.pt.prev" in line


@pytest.mark.slow
def test_tensorboard_has_one_value_per_epoch_after_resumes(chains: dict[str, Future]) -> None:
    """Each resumed writer purges from the last completed epoch (TensorBoard's purge_step)
    and logs that epoch again, so the crash after the epoch-3 checkpoint leaves no gap and
    the epochs computed twice appear once, with the final run's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen = chains["ce"].result()
    tb = seen["run_dir"] / "tb"
    files = sorted(tb.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    starts = [
        event.step
        for path in files
        for event in EventFileLoader(str(path)).Load()
        if event.HasField("session_log") and event.session_log.status == 1  # START
    ]
    # Fresh start (no purge), resume from epoch 1, from epoch 2 (.prev), from epoch 3.
    assert starts == [1, 2, 3]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    history = seen["result"]["history"]
    for key in ("test/acc", "train/loss"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3, 4], key
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)


@pytest.mark.slow
def test_stateful_method_resumes_identically(chains: dict[str, Future]) -> None:
    """BSD's per-sample target stores (Eq. 5) survive a mid-epoch stop and a crash."""
    reference = chains["ref_bsd"].result()
    seen = chains["bsd"].result()
    assert seen["result"]["status"] == "finished"
    assert epoch_metrics(seen["result"]["history"]) == epoch_metrics(reference)
    stores = [v for v in seen["method_state"].values() if v.dim() == 2 and v.shape[0] == 1300]
    assert stores, "no (N, K) per-sample store in the checkpoint's method state"


@pytest.mark.slow
def test_signals_checkpoint_at_step_boundaries_and_resume(chains: dict[str, Future]) -> None:
    reference = chains["ref_ce"].result()
    seen = chains["signals"].result()

    term = seen["term"]  # SIGTERM before step 5 of epoch 2
    assert term["returncode"] == 128 + signal.SIGTERM
    assert "SIGTERM at epoch 2, step 5" in term["line"]
    assert "run the same command again" in term["line"]
    assert term["position"] == (1, 5) and term["sums_steps"] == 5
    assert term["status"] == "interrupted" and "SIGTERM" in term["error"]
    assert epoch_metrics(term["history"]) == epoch_metrics(reference[:1])

    term_eval = seen["term_eval"]  # SIGTERM while epoch 2 is evaluated: its own checkpoint
    assert term_eval["returncode"] == 128 + signal.SIGTERM
    assert "after epoch 2" in term_eval["line"]
    assert term_eval["position"] == (2, 0) and term_eval["sums_steps"] is None
    assert epoch_metrics(term_eval["history"]) == epoch_metrics(reference[:2])

    sigint = seen["int"]  # the second SIGINT during the write did not cut it short
    assert sigint["returncode"] == 128 + signal.SIGINT
    assert "SIGINT at epoch 3, step 4" in sigint["line"]
    assert sigint["position"] == (2, 4) and sigint["sums_steps"] == 4
    assert sigint["status"] == "interrupted"

    assert seen["result"]["status"] == "finished"
    assert epoch_metrics(seen["result"]["history"]) == epoch_metrics(reference)


@pytest.mark.slow
def test_background_checkpoints_resume_identically(chains: dict[str, Future]) -> None:
    """``checkpoint_async=true``: kills and a SIGTERM on the way, same numbers and same final
    checkpoint as the synchronous reference run; ``result.json`` never claims an epoch that
    the checkpoint on disk does not hold."""
    reference = chains["ref_ce"].result()
    seen = chains["async"].result()
    (_, pos1, hist1), (_, pos2, hist2) = seen["kills"]
    assert pos1 == (1, 0)  # the epoch-2 write was killed: the epoch-1 checkpoint stays
    assert pos2 in ((1, 0), (2, 0))  # the epoch-2 write may not have been done by step 5
    for (epoch, _), history in ((pos1, hist1), (pos2, hist2)):
        assert len(history) <= epoch
        assert epoch_metrics(history) == epoch_metrics(reference[: len(history)])
    returncode, position, interrupted = seen["term"]
    assert returncode == 128 + signal.SIGTERM
    assert position == (3, 3)  # the in-flight write finished, then the boundary was saved
    assert interrupted["status"] == "interrupted" and len(interrupted["history"]) == 3
    result = seen["result"]
    assert result["status"] == "finished"
    assert epoch_metrics(result["history"]) == epoch_metrics(reference)
    # the final checkpoint holds the very tensors of the synchronous run's
    final = _checkpoint(chains["ref_ce_dir"].result())
    for part in ("model", "method"):
        mine, theirs = seen["final"][part], final[part]
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert torch.equal(mine[key], value), (part, key)
    mine = seen["final"]["optimizer"]["state"]
    assert mine.keys() == final["optimizer"]["state"].keys()
    for key, state in final["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(mine[key][name]), torch.as_tensor(value)), name
