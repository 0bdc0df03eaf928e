"""The leaderboard (issue 22 item 3) against hand computations and scipy."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from noisybench.leaderboard import sign_flip_p, t_quantile
from noisybench.report import main

# Student's t 0.975 quantiles from a printed table (df: value).
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 30: 2.0423}


def test_t_quantile_against_a_table_and_scipy() -> None:
    for df, value in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 17, 60, 500):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    assert t_quantile(0.025, 3) == pytest.approx(-T975[3], abs=1e-4)


def test_sign_flip_p_hand_enumerated() -> None:
    # d = (1, 2, 3): the 8 sign patterns give |sum| 6, 0, 2, 4, 4, 2, 0, 6; >= 6: 2 of 8.
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # d = (1, -2, 3), |sum| = 2: |sums| 6, 0, 2, 4 (each twice): 6 of 8 reach 2.
    assert sign_flip_p([1.0, -2.0, 3.0]) == 0.75
    assert sign_flip_p([0.5]) == 1.0
    assert sign_flip_p([]) is None


def test_sign_flip_p_sampled_beyond_16_pairs() -> None:
    # 18 pairs: 2^18 patterns enumerated by brute force here, 2^14 sampled there.
    diffs = [0.3, -1.2, 0.8, 0.5, 1.1, -0.4, 0.9, 0.2, -0.7, 1.5, 0.6, -0.1, 0.4, 1.0, -0.9, 0.7,
             0.3, -0.2]  # fmt: skip
    obs = abs(sum(diffs))
    exact = np.mean(
        [
            abs(sum(s * x for s, x in zip(signs, diffs, strict=True))) >= obs - 1e-9
            for signs in itertools.product((1, -1), repeat=len(diffs))
        ]
    )
    assert sign_flip_p(diffs) == pytest.approx(exact, abs=0.01)
    assert sign_flip_p([1.0] * 20) == pytest.approx(1 / (2**14 + 1))  # never exactly 0


def _write(root: Path, method: str, seed: int, acc: float, sha: str = "abc", **extra) -> None:
    run = root / f"{method}{seed}"
    run.mkdir(parents=True)
    body = {
        "status": "finished",
        "schema_version": 2,
        "config": {
            "seed": seed,
            "dataset": {"name": "digits"},
            "model": {"name": "small_cnn"},
            "noise": {"name": "sym50", "seed": seed},
            "method": {"name": method},
        },
        "seeds": {"train": seed, "noise": seed},
        "noise": {"sha256": f"{sha}{seed}"},
        "history": [{"epoch": 1, "test/acc": acc, "epoch_time_s": 36.0}],
        "cost": {"train_time_s": 36.0, "images_per_s": 100.0, "peak_memory_bytes": 2**30},
        "environment": {"device_name": "cpu-x"},
        **extra,
    }
    (run / "result.json").write_text(json.dumps(body))


CE = {0: 0.60, 1: 0.64, 2: 0.62, 3: 0.70}
BSD = {0: 0.70, 1: 0.71, 2: 0.69}  # no seed 3: three pairs
SCE = {0: 0.61, 1: 0.655, 2: 0.60}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for name, accs in (("ce", CE), ("bsd", BSD), ("sce", SCE)):
        for seed, acc in accs.items():
            _write(tmp_path, name, seed, acc)
    return tmp_path


def _board(capsys, root: Path, *extra: str) -> dict:
    assert main([str(root), "--leaderboard", "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_cells_pairs_ranks_and_cost(runs: Path, capsys) -> None:
    board = _board(capsys, runs)
    assert board["selection"] == "last" and "last epoch" in board["title"]
    by = {e["method"]: e for e in board["entries"]}
    # BSD: 70, 71, 69 -> mean 70, s = 1, CI = t(0.975, 2) * 1 / sqrt(3).
    bsd = by["bsd"]
    assert bsd["mean"] == pytest.approx(70.0) and bsd["std"] == pytest.approx(1.0)
    assert bsd["ci95"] == pytest.approx(T975[2] / math.sqrt(3), abs=1e-3)
    assert bsd["seeds"] == [0, 1, 2] and bsd["values"] == pytest.approx([70, 71, 69])
    # Paired with CE on seeds 0-2 (CE's seed 3 has no partner): d = 10, 7, 7.
    d = np.array([10.0, 7.0, 7.0])
    paired = bsd["paired"]
    assert paired["n"] == 3 and paired["mean_diff"] == pytest.approx(8.0)
    half = T975[2] * np.std(d, ddof=1) / math.sqrt(3)
    assert paired["ci"] == pytest.approx(half, abs=1e-3)
    assert (paired["wins"], paired["ties"], paired["losses"]) == (3, 0, 0)
    assert paired["p"] == 0.25  # only the all-plus and all-minus patterns reach |24|
    # SCE vs CE: d = 1, 1.5, -2 -> 1 win... by hand over all 8 patterns.
    sce = by["sce"]["paired"]
    diffs = [1.0, 1.5, -2.0]
    assert (sce["wins"], sce["ties"], sce["losses"]) == (2, 0, 1)
    obs = abs(sum(diffs))
    hand = sum(
        abs(sum(s * x for s, x in zip(signs, diffs, strict=True))) >= obs - 1e-9
        for signs in itertools.product((1, -1), repeat=3)
    )
    assert sce["p"] == pytest.approx(hand / 8)
    assert by["ce"]["paired"] is None
    # Ranks: BSD's interval [67.5, 72.5] lies above CE's and SCE's (which overlap: tied).
    ce_hi = by["ce"]["mean"] + by["ce"]["ci95"]
    assert by["bsd"]["mean"] - by["bsd"]["ci95"] < ce_hi  # CE's wide interval (4 seeds)...
    assert by["bsd"]["rank"] == 1 and by["sce"]["rank"] == by["ce"]["rank"]
    # Cost: 36 s per run -> 3 runs = 0.03 h; 1 GiB peak; the device named.
    assert by["bsd"]["cost"]["train_hours"] == pytest.approx(0.03)
    assert by["bsd"]["cost"]["peak_memory_gib"] == pytest.approx(1.0)
    assert by["bsd"]["cost"]["devices"] == ["cpu-x"]


def test_rank_ties_only_where_intervals_overlap(tmp_path: Path, capsys) -> None:
    for seed, (a, b, c) in enumerate(((0.50, 0.80, 0.805), (0.51, 0.81, 0.815), (0.52, 0.82, 0.8))):
        _write(tmp_path, "ce", seed, a)
        _write(tmp_path, "bsd", seed, b)
        _write(tmp_path, "sce", seed, c)
    by = {e["method"]: e for e in _board(capsys, tmp_path)["entries"]}
    assert by["bsd"]["rank"] == 1 and by["sce"]["rank"] == 1  # overlapping
    assert by["ce"]["rank"] == 3  # two intervals wholly above


def test_csv_per_seed_and_latex(runs: Path, capsys) -> None:
    assert main([str(runs), "--leaderboard", "--format", "csv"]) == 0
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["ce"]["seeds"] == "0;1;2;3"
    assert [float(x) for x in rows["ce"]["values"].split(";")] == pytest.approx([60, 64, 62, 70])
    assert rows["bsd"]["wins"] == "3" and rows["bsd"]["selection"] == "last"
    assert main([str(runs), "--leaderboard", "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "\\begin{tabular}" in tex and "^" not in tex


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tables = 0
        self.th: list[str] = []
        self.rows: list[list[str]] = []
        self.scripts = 0
        self.external: list[str] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.stack.append(tag)
        if tag == "table":
            self.tables += 1
        if tag == "tr" and "tbody" in self.stack:
            self.rows.append([])
        if tag in ("th", "td"):
            self._cell = []
        if tag == "script":
            self.scripts += 1
            if a.get("src"):
                self.external.append(a["src"])
        if tag in ("link",) or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(str(a))
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.th.append(text) if tag == "th" else self.rows[-1].append(text))
            self._cell = None
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_html_page_is_self_contained_and_sortable(runs: Path, tmp_path: Path, capsys) -> None:
    # A figure needs per-epoch inputs the synthetic runs lack; one PNG is embedded by hand.
    figures = tmp_path / "figs"
    figures.mkdir()
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00"
        b"\x00\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81"
        b"\x84\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    (figures / "example.png").write_bytes(png)
    out = tmp_path / "board.html"
    argv = [str(runs), "--leaderboard", "--format", "html", "--figures", str(figures)]
    assert main([*argv, "--output", str(out)]) == 0
    page = _Page()
    page.feed(out.read_text())
    assert page.tables == 1 and page.scripts == 1 and page.external == []
    assert page.th[:4] == ["setting", "method", "rank", "n"]
    assert len(page.rows) == 3 and all(len(r) == len(page.th) for r in page.rows)
    assert page.rows[0][1] == "bsd"  # rank 1 first
    assert any(src.startswith("data:image/png;base64,") for src in page.images)
    assert "addEventListener('click'" in out.read_text()
