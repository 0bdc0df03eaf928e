"""The built-in evaluation suites (test metrics, validation accuracy, memorisation, label
recovery): registered like every suite (``conf/eval/<name>.yaml``), added to every training
run, and run by ``noisybench evaluate`` on a finished run through the same path, so a finished
run's post-hoc numbers are its last epoch's.

The reference numbers are worked out here from the saved files alone (``noisy_labels.npy``,
the checkpoint's weights and BSD's target store, the dataset's clean labels), with the
definitions of the BSD paper's Sec. 5 diagnostics written out in numpy: memorisation
``fit_given = P(pred = given | given != clean)``, ``fit_true = P(pred = clean | given !=
clean)``, ``clean_fit = P(pred = clean | given = clean)``; label recovery ``recovered =
P(argmax y = clean | noisy)``, ``still_given = P(argmax y = given | noisy)``,
``detect_recall = P(argmax y != given | noisy)``, ``entropy = mean -sum y log y``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from noisybench.build import build
from noisybench.config import CONF_DIR
from noisybench.data.digits import load_digits
from noisybench.data.split import holdout_split
from noisybench.errors import UserError
from noisybench.evaluate import EvaluateOptions, evaluate_run, rebuild_model
from noisybench.evaluation import BUILTIN_SUITES, available_suites, builtin_suites
from noisybench.run import run_experiment

BASE = (
    "experiment=quickstart",
    "method=bsd",
    "epochs=2",
    "progress=false",
    "logger=[]",
    "eval.batch_size=64",
    "eval.train_diagnostics_every=1",
    "device=cpu",
)


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*BASE, *overrides])


def test_the_registry_lists_the_built_in_suites_and_every_run_has_them() -> None:
    assert {"test", "val", "memorisation", "recovery"} <= set(available_suites())
    exp = build(_cfg("eval.train_diagnostics_every=5", "epochs=12", "+eval=[calibration]"))
    names = [s.name for s in exp.suites.suites]
    assert names == ["test", "val", "memorisation", "recovery"]  # calibration: every=0
    memo = exp.suites.suites[2]
    assert [e + 1 for e in range(12) if memo.due(e)] == [5, 10, 12]  # and the last epoch
    off = build(_cfg("eval.train_diagnostics=false"))
    assert [s.name for s in off.suites.suites] == ["test", "val", "recovery"]
    assert [s.name for s in builtin_suites(3)] == list(BUILTIN_SUITES)


def test_a_built_in_suite_named_in_eval_of_a_training_run_is_one_line() -> None:
    with pytest.raises(UserError, match=r"\['memorisation'\] run in every training run"):
        build(_cfg("+eval=[memorisation]"))


def _shares(mask: np.ndarray, subset: np.ndarray) -> float:
    return float((mask & subset).sum() / subset.sum())


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = _cfg(f"out_dir={out}", "validation.fraction=0.2", "selection=last")
    run_experiment(cfg)
    return next(out.rglob("result.json")).parent


def test_evaluate_reports_the_last_epochs_built_in_numbers(finished: Path) -> None:
    result = json.loads((finished / "result.json").read_text())
    last = result["history"][-1]
    out = evaluate_run(finished, list(BUILTIN_SUITES), options=EvaluateOptions("cpu", 64))
    got = out["metrics"]
    keys = [k for k in last if k.split("/")[0] in BUILTIN_SUITES]
    assert len(keys) == 4 + 1 + 3 + 5  # test, val, memorisation, recovery
    assert sorted(got) == sorted(keys)
    for key in keys:  # the same evaluation code on the same weights, batches and labels
        want = math.nan if last[key] is None else last[key]  # result.json writes NaN as null
        assert got[key] == pytest.approx(want, rel=1e-6, abs=1e-7, nan_ok=True), key

    # The same numbers from the saved files alone, by the definitions (module docstring).
    config = result["config"]
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=False)
    model = rebuild_model(config, 10, 1)
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = load_digits()
    mean, std = data.mean[0], data.std[0]
    with torch.no_grad():
        test_logits = model((data.test_images.float() / 255 - mean) / std).double().numpy()
        train_pred = model((data.train_images.float() / 255 - mean) / std).argmax(-1).numpy()
    y_test = data.test_labels.numpy()
    logp = test_logits - test_logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert got["test/acc"] == pytest.approx((test_logits.argmax(1) == y_test).mean(), abs=1e-7)
    assert got["test/nll"] == pytest.approx(-logp[np.arange(len(y_test)), y_test].mean(), 1e-5)

    noisy_all = np.load(finished / "noisy_labels.npy")
    clean_all = data.train_labels.numpy()
    split = config["validation"]
    train_idx, val_idx = holdout_split(len(noisy_all), split["fraction"], split["seed"], noisy_all)
    assert got["val/acc"] == pytest.approx((train_pred[val_idx] == noisy_all[val_idx]).mean())
    pred, given, clean = train_pred[train_idx], noisy_all[train_idx], clean_all[train_idx]
    noisy = given != clean
    assert noisy.sum() > 100  # 50 % symmetric noise: the shares are measured on many samples
    assert got["memorisation/fit_given"] == pytest.approx(_shares(pred == given, noisy))
    assert got["memorisation/fit_true"] == pytest.approx(_shares(pred == clean, noisy))
    assert got["memorisation/clean_fit"] == pytest.approx(_shares(pred == clean, ~noisy))

    y = ckpt["method"]["targets"].double().numpy()
    y = y / y.sum(1, keepdims=True)
    top = y.argmax(1)
    assert got["recovery/recovered"] == pytest.approx(_shares(top == clean, noisy))
    assert got["recovery/still_given"] == pytest.approx(_shares(top == given, noisy))
    assert got["recovery/detect_recall"] == pytest.approx(_shares(top != given, noisy))
    flagged = top != given  # none after two epochs: the precision of an empty set is NaN
    precision = _shares(noisy, flagged) if flagged.any() else math.nan
    assert got["recovery/detect_precision"] == pytest.approx(precision, nan_ok=True)
    entropy = -(y * np.log(np.clip(y, 1e-12, None))).sum(1).mean()
    assert got["recovery/entropy"] == pytest.approx(entropy, rel=1e-5)


def test_the_record_keeps_its_key_order(finished: Path) -> None:
    """The CSV logger's columns follow the record's key order: the held-out splits' numbers,
    the training numbers, the diagnostics, the method's, then the bookkeeping."""
    last = json.loads((finished / "result.json").read_text())["history"][-1]
    groups = list(dict.fromkeys(k.split("/")[0] for k in last))
    assert groups == [
        "epoch", "test", "val", "train", "memorisation", "recovery", "method",
        "lr", "skipped_steps", "epoch_time_s",
    ]  # fmt: skip
