"""The report's grouping and mean ± std against hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from noisybench.report import collect, format_table, load_results, main


def _result(root: Path, method: str, seed: int, last: float, best: float, status="finished"):
    run = root / method / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "dataset": {"name": "digits"},
        "model": {"name": "small_cnn"},
        "noise": {"name": "sym50", "seed": seed, "rate": 0.5},
        "method": {"name": method, "gamma": 0.9},
        "epochs": 10,
        "run_name": f"x/seed{seed}",
    }
    body = {
        "status": status,
        "config": cfg,
        "seeds": {"train": seed, "noise": seed},
        "noise": {"realised_rate": 0.45},
        "history": [{"epoch": 1}],
        "last": {"epoch": 10, "test/acc": last, "test/ece": 0.1},
        "best": {"epoch": 4, "test/acc": best, "test/ece": 0.2},
    }
    (run / "result.json").write_text(json.dumps(body))


def test_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    for seed, (last, best) in enumerate([(0.80, 0.90), (0.82, 0.91), (0.84, 0.95)]):
        _result(tmp_path, "ce", seed, last, best)
    _result(tmp_path, "bsd", 0, 0.9, 0.92)
    _result(tmp_path, "bsd", 1, 0.5, 0.6, status="running")
    rows = collect(load_results([tmp_path]))
    assert [r["method"] for r in rows] == ["bsd", "ce"]
    ce = rows[1]
    assert ce["seeds"] == [0, 1, 2]
    assert ce["last"][0] == pytest.approx(0.82)
    assert ce["last"][1] == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    assert ce["best"][0] == pytest.approx(0.92)
    assert ce["best"][1] == pytest.approx(math.sqrt((0.02**2 + 0.01**2 + 0.03**2) / 2))
    assert rows[0]["seeds"] == [0]  # the running bsd run is left out
    table = format_table(rows)
    assert "| digits | small_cnn | sym50 | ce | 10 | 3 | 82.00 ± 2.00 | 92.00 ± 2.65 |" in table
    assert table.count("n/a") == 4  # the fixtures have no memorisation or recovery records


def test_runs_with_other_hyperparameters_are_not_averaged(tmp_path: Path) -> None:
    _result(tmp_path / "a", "ce", 0, 0.8, 0.9)
    _result(tmp_path / "b", "ce", 1, 0.6, 0.7)
    other = tmp_path / "b" / "ce" / "seed1" / "result.json"
    body = json.loads(other.read_text())
    body["config"]["method"]["gamma"] = 0.5
    other.write_text(json.dumps(body))
    assert len(collect(load_results([tmp_path]))) == 2


def test_cli_lists_unfinished_and_fails_on_empty(tmp_path: Path, capsys) -> None:
    _result(tmp_path, "ce", 0, 0.8, 0.9, status="interrupted")
    assert main([str(tmp_path)]) == 0
    assert "interrupted after 1 epoch(s)" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no result.json" in capsys.readouterr().err
