"""The report's faster paths (issue 22 item 6) read what the slower ones read: the file walk
against ``sorted(Path.rglob)``, orjson against the standard library's parser (including what
only the latter reads), the one-pass epoch selection against the earlier filter-then-max, and
``noisybench report`` starting without torch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import noisybench.report as report
from noisybench.evaluation.selection import best_record


def _tree(root: Path) -> None:
    for rel in ("a", "a-b", "a/b", "A", "a/previous/x", "previous", "z/10", "z/9", "a.b", "a b"):
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "result.json").write_text("{}")
    (root / "a" / "b" / "previous").mkdir()
    (root / "a" / "b" / "previous" / "result.json").write_text("{}")
    (root / "only_other.json").write_text("{}")
    (root / "linkdir").symlink_to(root / "a")  # a linked folder: not followed


def test_the_walk_finds_what_rglob_finds_in_the_same_order(tmp_path: Path) -> None:
    _tree(tmp_path)
    expected = [
        str(p)
        for p in sorted(tmp_path.rglob("result.json"))
        if "previous" not in p.relative_to(tmp_path).parts
    ]
    assert report._result_files(tmp_path) == expected
    assert len(expected) == 8  # 10 folders, less the two under previous/
    # A relative root ("." and "./x") gives the same files, named from that root.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert report._result_files(Path(".")) == [
            os.path.join(".", os.path.relpath(p, tmp_path)) for p in expected
        ]
    finally:
        os.chdir(cwd)


def test_a_linked_result_file_is_read_once(tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    body = {"status": "finished", "config": {}, "history": [{"epoch": 1, "test/acc": 0.5}]}
    (run / "result.json").write_text(json.dumps(body))
    (tmp_path / "runs" / "r1").mkdir()
    (tmp_path / "runs" / "r1" / "result.json").symlink_to(run / "result.json")
    # Given as the folder, its parent and a link to the folder: one file.
    (tmp_path / "alias").symlink_to(tmp_path / "runs")
    roots = [tmp_path / "runs", tmp_path, tmp_path / "alias"]
    assert len(report.load_results(roots)) == 1


def _result(**extra) -> dict:
    history = [
        {"epoch": 1, "test/acc": 0.5, "val/acc": float("nan")},
        {"epoch": 2, "test/acc": 0.7, "val/acc": 0.6},
        {"epoch": 3, "test/acc": float("nan"), "val/acc": 0.6},
    ]
    return {"status": "finished", "config": {"method": {"name": "ce"}}, "history": history, **extra}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(_result()),  # NaN: only the standard library reads it
        json.dumps(_result(note="x\ud800y")),  # a lone surrogate
        json.dumps(_result(big=10**400)),  # beyond 64 bits
        json.dumps(_result(n=3, x=1.5e-300, s="é")),  # strict JSON: orjson reads it
    ],
)
def test_orjson_and_the_standard_library_read_the_same(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "result.json").write_text(text)
    fast = report.load_results([tmp_path])
    monkeypatch.setattr(report, "_orjson", None)
    slow = report.load_results([tmp_path])
    assert len(fast) == len(slow) == 1
    assert json.dumps(fast, sort_keys=True) == json.dumps(slow, sort_keys=True)
    plain = json.loads(text)
    assert fast[0]["history"][1] == plain["history"][1]


def _old_select(history: list[dict], key: str | None) -> dict | None:
    """The report's selection before this change: sane values filtered, then the max
    (transcribed from noisybench 0.2's report._select and selection.best_record)."""
    if key is None:
        return history[-1] if history else None
    sane = [r for r in history if report._finite(r.get(key)) is not None]
    scored = [r for r in sane if isinstance(r.get(key), int | float) and r[key] == r[key]]
    return max(scored, key=lambda r: r[key]) if scored else None


@pytest.mark.parametrize(
    "values",
    [
        [0.5, 0.7, 0.7, 0.6],  # a tie: the earliest
        [float("nan"), 0.2, float("inf"), 0.1],  # inf is not sane
        [None, "0.9", True, 0.3],  # text and booleans do not compete
        [1e13, 0.4, 2, 0.4],  # 1e13 is beyond sane magnitude; the integer 2 competes
        [],
        [float("nan")],
    ],
)
def test_one_pass_selection_picks_what_the_two_pass_one_picked(values: list) -> None:
    history = [{"epoch": i + 1, "k": v} for i, v in enumerate(values)]
    for key in ("k", None):
        got = best_record(history, key, report._sane)
        assert got is _old_select(history, key)
    # Without a test of its own: numbers that are not NaN compete (inf included).
    plain = best_record(history, "k")
    finite = [r for r in history if isinstance(r["k"], int | float) and r["k"] == r["k"]]
    assert plain is (max(finite, key=lambda r: r["k"]) if finite else None)
    assert not math.isnan(plain["k"]) if plain else True


@pytest.mark.cli
def test_the_report_starts_without_torch() -> None:
    code = "import sys, noisybench.report; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
