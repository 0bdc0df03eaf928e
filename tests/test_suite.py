"""Suites (issue 22 item 2): expansion, where each run lands, the dry run's finished count and
compute estimate (by hand), and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noisybench.suite import expand, load_suite, main, status

SUITE = """
name: tiny
version: 3
fixed: [experiment=quickstart, epochs=4, progress=false]
reference: ce
grid:
  dataset: [digits]
  model: [small_cnn]
  noise: [sym20, sym50]
  method: [ce, bsd]
  batch_size: [64]
  seed: [0, 1, 2]
"""


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE)
    return path


def test_shipped_suites_expand() -> None:
    # digits_mini: 13 methods x 4 settings x 3 seeds; Table 4: (6 methods + BSD+, OT-Filter,
    # CSOT, DULC) x 6 x 3;
    # CIFAR-N: 7 methods x (5 + 1) label sets x 3 seeds.
    assert len(list(expand(load_suite("digits_mini")))) == 13 * 4 * 3
    assert len(list(expand(load_suite("cifar10_table4")))) == (6 + 4) * 6 * 3
    assert len(list(expand(load_suite("cifar_n")))) == 7 * 6 * 3
    table4 = load_suite("cifar10_table4")
    assert {tuple(g["noise"]) for g in table4.grids} == {
        ("sym20", "sym50", "sym80", "asym10", "asym30", "asym40")
    }


def test_dry_run_counts_finished_and_estimates(suite_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    suite = load_suite(str(suite_file))
    rows = status(suite, [f"out_dir={out}"])
    assert len(rows) == 12
    # Where a run lands, as Hydra's run_name puts it (checked against composition by main).
    _, run_dir, _ = rows[0]
    variant = "quickstart+batch_size:64+epochs:4"
    assert run_dir == out / "digits" / "small_cnn" / "sym20" / "ce" / variant / "seed0"
    # Two finished runs (ce, sym20, seeds 0 and 1) measured 520 and 780 images/s.
    for (_, d, _), rate in zip(rows[:2], (520.0, 780.0), strict=True):
        d.mkdir(parents=True)
        body = {"status": "finished", "train_images": 1300, "cost": {"images_per_s": rate}}
        (d / "result.json").write_text(json.dumps(body))
    assert main([str(suite_file), "--dry-run", f"out_dir={out}"]) == 0
    text = capsys.readouterr().out
    # 10 runs left, each 4 epochs x 1300 images at the mean 650 images/s = 8 s: 80 s.
    assert "12 runs, 2 finished, 10 to run" in text
    assert f"about {80 / 3600:.2f} h" in text
    assert text.count("- finished:") == 2 and text.count("- to run:") == 10


def test_a_suite_lands_in_its_own_out_dir_when_none_is_given(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The suite file's ``out_dir`` (not the run config's default ``runs``) is where its runs
    land and what the path check composes with (the shipped suites failed without an
    ``out_dir=`` override)."""
    monkeypatch.chdir(tmp_path)
    assert main(["digits_mini", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "156 runs, 0 finished, 156 to run" in text
    assert "-> runs/suite/digits_mini/digits/small_cnn/sym20/ce/" in text


def test_hydras_own_overrides_name_no_run_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    """A launcher choice (``hydra/launcher=joblib``; here Hydra's basic launcher, which every
    install has) is Hydra's, not the experiment's: the runs land where Hydra's run name puts
    them, as without it (the suite refused to start)."""
    monkeypatch.chdir(tmp_path)
    launcher = ["hydra/launcher=basic", "hydra.job.chdir=false"]
    assert main(["digits_mini", "--dry-run", *launcher]) == 0
    text = capsys.readouterr().out
    assert "-> runs/suite/digits_mini/digits/small_cnn/sym20/ce/quickstart+epochs:10+" in text
    assert "hydra" not in text.split("->", 1)[1].splitlines()[0]


def test_bad_suites_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["no_such_suite", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "digits_mini" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {dataset: [digits], noise: [sym50]}\n")
    assert main([str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model, method, seed" in err[0]


@pytest.mark.cli
def test_a_suite_runs_resumes_and_ends_in_the_leaderboard(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    suite = tmp_path / "tiny_run.yaml"
    suite.write_text(
        "name: tiny_run\nfixed: [experiment=quickstart, epochs=1, progress=false, 'logger=[]']\n"
        "reference: ce\ngrid: {dataset: [digits], model: [small_cnn], noise: [sym50], "
        "method: [ce, ls], seed: [0]}\n"
    )
    out = tmp_path / "runs"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "noisybench", "suite", str(suite), f"out_dir={out}"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 runs, 0 finished, 2 to run" in first.stdout
    assert "**Leaderboard: acc" in first.stdout and "| digits / small_cnn / sym50 | ls |" in (
        first.stdout
    )
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    assert len(mtimes) == 2
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 runs, 2 finished, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == mtimes  # not rerun


@pytest.mark.slow  # about 20 s of composition for all four suites
@pytest.mark.parametrize("name", ["digits_mini", "digits_sota", "cifar10_table4", "cifar_n"])
def test_every_job_of_a_shipped_suite_composes_and_resolves(name: str) -> None:
    """Each method x noise of a shipped suite composes and resolves (a suite that named a
    baseline with per-setting author values on a dataset they never used was refused at run
    time, job after job)."""
    from noisybench.config import compose, resolved

    suite = load_suite(name)
    seen = set()
    for job in expand(suite):
        key = (job.method, job.noise, job.dataset, job.extra)
        if key in seen:
            continue
        seen.add(key)
        cfg = resolved(compose(job.overrides(suite.fixed)))
        assert cfg["method"]["name"] == job.method
