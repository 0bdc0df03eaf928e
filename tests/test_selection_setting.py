"""The ``selection`` setting end to end (issue 22 item 1): the rule, the number a sweeper
gets, the weights kept, and the refusal to tune on the test set."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from noisybench.config import compose
from noisybench.errors import UserError
from noisybench.evaluation.selection import check_tuning, objective, resolve
from noisybench.run import run_experiment, selection_metric

ROOT = Path(__file__).resolve().parents[1]

HISTORY = [
    {"epoch": 1, "test/acc": 0.50, "val/acc": 0.30},
    {"epoch": 2, "test/acc": 0.70, "val/acc": 0.45},  # noisy val picks epoch 2
    {"epoch": 3, "test/acc": 0.80, "val/acc": 0.40},  # best test and last
    {"epoch": 4, "test/acc": 0.60, "val/acc": 0.35},
]


def _result(history: list[dict], **config: object) -> dict:
    return {"status": "finished", "config": config, "history": history}


def test_resolve() -> None:
    assert resolve("auto", has_validation=True) == "noisy_val"
    assert resolve("auto", has_validation=False) == "last"
    assert resolve(None, has_validation=False) == "last"
    assert resolve("best_test", has_validation=False) == "best_test"
    with pytest.raises(UserError, match=r"validation\.fraction"):
        resolve("noisy_val", has_validation=False)
    with pytest.raises(UserError, match="unknown selection=best"):
        resolve("best", has_validation=True)


def test_the_sweeper_gets_a_validation_number() -> None:
    val = {"validation": {"fraction": 0.1}}
    # auto with a validation split: noisy_val, epoch 2, its val/acc 0.45 (not a test number).
    assert selection_metric(_result(HISTORY, **val)) == 0.45
    assert objective(_result(HISTORY, selection="last", **val)) == 0.35  # epoch 4's val/acc
    # Selected on the test set, or no validation split: nothing without tune_on_test ...
    assert math.isnan(objective(_result(HISTORY, selection="best_test", **val)))
    no_val = [{k: v for k, v in r.items() if k != "val/acc"} for r in HISTORY]
    assert math.isnan(selection_metric(_result(no_val)))
    # ... and the test number, knowingly, with it.
    assert objective(_result(no_val, tune_on_test=True)) == 0.60  # last epoch
    assert objective(_result(HISTORY, selection="best_test", tune_on_test=True, **val)) == 0.80


def test_check_tuning() -> None:
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    with pytest.raises(UserError, match="would tune on the test set"):
        check_tuning({}, optuna)
    with pytest.raises(UserError, match="tune_on_test=true"):
        check_tuning({"validation": {"fraction": 0.1}, "selection": "best_test"}, optuna)
    check_tuning({"validation": {"fraction": 0.1}}, optuna)
    check_tuning({"tune_on_test": True}, optuna)
    check_tuning({}, basic)


@pytest.fixture(autouse=True)
def _restore(restore_torch_globals: None) -> None:
    pass


def test_selected_weights_are_kept(tmp_path: Path) -> None:
    cfg = compose(
        [
            "experiment=quickstart",
            "method=ce",
            "epochs=3",
            "validation.fraction=0.2",
            "selection=best_test",
            f"out_dir={tmp_path}",
        ]
    )
    OmegaConf.set_struct(cfg, False)
    cfg.progress = False
    cfg.logger = {}
    run_experiment(cfg, run_dir=tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["selection_rule"] == "best_test"
    accs = [r["test/acc"] for r in result["history"]]
    best = 1 + accs.index(max(accs))  # earliest on ties
    selected = torch.load(tmp_path / "run" / "selected.pt", weights_only=True)
    assert selected["epoch"] == best and selected["rule"] == "best_test"
    assert set(selected) == {"model", "epoch", "rule", "selected_on"}  # weights only
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    same = all(torch.equal(selected["model"][k], last[k]) for k in last)
    assert same == (best == 3)


@pytest.mark.cli
def test_optuna_refuses_to_tune_on_the_test_set(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "noisybench",
            "-m",
            "experiment=quickstart",
            "method=ls",
            "epochs=1",
            "progress=false",
            "logger=[]",
            f"out_dir={out}",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "method.smoothing=interval(0.0,0.3)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("noisybench: error")]
    assert len(errors) == 1 and "would tune on the test set" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list(out.rglob("checkpoint.pt")) and not list(out.rglob("result.json"))
