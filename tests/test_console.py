"""The console: the per-epoch line carries the learning rate and an ETA, and on a terminal it is
written on a row of its own (the progress bars cleared first and redrawn below it), instead of
being drawn into the progress bar's row."""

from __future__ import annotations

import io
import logging
import math
from types import SimpleNamespace

from noisybench.callbacks import ConsoleProgress, epoch_line


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_epoch_line_has_lr_and_eta() -> None:
    record = {"epoch": 3, "train/loss": 1.23456, "test/acc": 0.81234, "epoch_time_s": 0.24}
    line = epoch_line({**record, "lr": 0.0039512}, 100, eta_s=3725.4)
    assert line == (
        "epoch 3/100: train loss 1.2346, test acc 0.8123, 0.2 s, lr 0.00395, ETA 1:02:05"
    )
    # no lr recorded and no epoch timed yet: neither is printed
    assert epoch_line(record, 100, math.nan).endswith("0.2 s")


def test_epoch_line_on_a_terminal_gets_its_own_row() -> None:
    stream = FakeTTY()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("noisybench")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        trainer = SimpleNamespace(epochs=2, source=[0, 1, 2], epoch_steps=3)
        progress = ConsoleProgress(bars=True, stream=stream)
        progress.on_fit_start(trainer, 0, 0)
        for step in range(3):
            progress.on_step_start(trainer, 0, step)
            progress.on_step_end(trainer, 0, step)
        progress.on_train_epoch_end(trainer, 0)
        record = {"epoch": 1, "train/loss": 2.0, "test/acc": 0.5, "epoch_time_s": 0.1}
        progress.on_epoch_end(trainer, 0, record)
        progress.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = stream.getvalue()
    at = text.index("epoch 1/2: train loss")
    assert "epochs" in text[:at]  # the epoch bar was drawn before the line
    assert text[at - 1] in "\r\n"  # ... and cleared: the line starts its own row
    assert text[at:].split("\n", 1)[1].lstrip("\r").startswith("epochs")  # redrawn below


def test_report_figures_without_matplotlib_fail_before_any_output(
    tmp_path, monkeypatch, capsys
) -> None:
    """``noisybench report RUNS --figures DIR`` without matplotlib: one line and status 2
    before the table is printed (it used to print the whole table, then fail)."""
    import importlib.util
    import json

    from noisybench import report

    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"status": "finished", "config": {}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    assert report.main([str(tmp_path), "--figures", str(tmp_path / "figs")]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "--figures needs matplotlib" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "figs").exists()
