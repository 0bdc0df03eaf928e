"""``python -m noisybench.evaluate`` on a run directory written here in the layout a
finished run has (result.json with the resolved config, checkpoint.pt, noisy_labels.npy);
the numbers are checked against the model applied directly in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from noisybench.data.digits import load_digits
from noisybench.data.noise import save_labels
from noisybench.evaluate import main, rebuild_model
from noisybench.io import atomic_save_checkpoint

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["experiment=quickstart", "method=ce"])
    config = OmegaConf.to_container(cfg, resolve=True)
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = rebuild_model(config, 10, 1)
    data = load_digits()
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(1300) < 0.3, rng.integers(0, 10, 1300), data.train_labels.numpy())
    save_labels(run / "noisy_labels.npy", noisy)
    atomic_save_checkpoint(
        {"model": model.state_dict(), "method": {}, "epoch": 2}, run / "checkpoint.pt"
    )
    history = [
        {"epoch": 1, "test/acc": 0.3, "test/ece": 0.1},
        {"epoch": 2, "test/acc": 0.2, "test/ece": 0.2},
    ]
    result = {"status": "finished", "config": config, "history": history}
    (run / "result.json").write_text(json.dumps(result))
    return run


def _direct(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Test and train probabilities of the checkpoint's model, normalised by hand."""
    config = json.loads((run / "result.json").read_text())["config"]
    model = rebuild_model(config, 10, 1)
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    data = load_digits()
    mean, std = data.mean[0], data.std[0]
    with torch.no_grad():
        test_logits = model((data.test_images.float() / 255 - mean) / std)
        train_probs = model((data.train_images.float() / 255 - mean) / std).softmax(-1)
    return test_logits, data.test_labels, train_probs, np.load(run / "noisy_labels.npy")


def test_evaluate_writes_evaluation_json(run_dir: Path, capsys) -> None:
    rc = main(
        [
            str(run_dir),
            "eval=[calibration,ood,dark_knowledge]",
            "ood.source=sklearn_patches",
            "device=cpu",
            "batch_size=100",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    out = json.loads((run_dir / "evaluation.json").read_text())
    m = out["metrics"]
    logits, labels, train_probs, noisy = _direct(run_dir)
    acc = (logits.argmax(-1) == labels).double().mean().item()
    assert m["calibration/acc"] == pytest.approx(acc, abs=1e-6)
    assert m["calibration/nll"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert (
        len(m["calibration/reliability/count"]) == 15
        and sum(m["calibration/reliability/count"]) == 497
    )
    assert 0.0 <= m["ood/sklearn_patches/auroc"] <= 1.0 and m["ood/sklearn_patches/n_out"] > 100
    # Eq. 10 with NumPy loops over the classes of the saved noisy labels
    p = train_probs.double().numpy()
    cond = np.stack([p[noisy == i].mean(0) for i in range(10)])
    np.testing.assert_allclose(
        np.array(m["dark_knowledge/mu"]).reshape(10, 10), (cond + cond.T) / 2, atol=1e-5
    )
    assert out["selection"]["best_test"]["epoch"] == 1
    assert out["selection"]["best_test"]["selected_on"] == "test set"
    assert out["selection"]["last"]["epoch"] == 2 and "noisy_val" not in out["selection"]
    assert out["method"] == "ce" and out["checkpoint_epoch"] == 2
    assert out["suites"]["ood"]["source"] == "sklearn_patches"

    # a second call adds a suite and keeps the earlier ones' numbers
    assert main([str(run_dir), "--eval", "temperature", "device=cpu"]) == 0
    again = json.loads((run_dir / "evaluation.json").read_text())
    assert again["metrics"]["calibration/acc"] == m["calibration/acc"]
    assert "temperature/T" in again["metrics"] and set(again["suites"]) >= {
        "calibration",
        "temperature",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval=[calib]"], "unknown eval suite 'calib'"),
        (["eval=[ood]", "ood.sorce=svhn"], "has no setting 'sorce'"),
        (["eval=[calibration]", "ood.source=svhn"], "that eval= does not select"),
        (["eval=[ood]"], "svhn/test_32x32.mat is missing"),
        (["colour=red"], "unknown option colour="),
        (["batch_size=x"], "batch_size=x is not a positive integer"),
        (["device=gpu0"], "device=gpu0 is not a device"),
    ],
)
def test_evaluate_bad_input_one_line(run_dir: Path, tmp_path, capsys, args, message) -> None:
    rc = main([str(run_dir), f"data_dir={tmp_path}", "device=cpu", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_evaluate_missing_dataset_is_one_line(run_dir: Path, tmp_path, capsys) -> None:
    # a CIFAR run whose data are not where its config says: the reader's own one-line error
    result = json.loads((run_dir / "result.json").read_text())
    result["config"]["dataset"] = {
        "name": "cifar10",
        "reader": {
            "_target_": "noisybench.data.cifar.load_cifar",
            "variant": "cifar10",
            "root": str(tmp_path / "nowhere"),
            "download": False,
        },
    }
    other = tmp_path / "run"
    other.mkdir()
    (other / "result.json").write_text(json.dumps(result))
    (other / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    assert main([str(other), "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and "Traceback" not in err


def test_evaluate_run_with_validation_split(run_dir: Path, tmp_path) -> None:
    from noisybench.data.split import holdout_split

    result = json.loads((run_dir / "result.json").read_text())
    result["config"]["validation"] = {"fraction": 0.2, "seed": 3}
    result["history"][0]["val/acc"] = 0.4
    result["history"][1]["val/acc"] = 0.5
    other = tmp_path / "run"
    other.mkdir()
    (other / "result.json").write_text(json.dumps(result))
    for name in ("checkpoint.pt", "noisy_labels.npy"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    assert main([str(other), "eval=[dark_knowledge]", "device=cpu"]) == 0
    out = json.loads((other / "evaluation.json").read_text())
    _, _, train_probs, noisy = _direct(run_dir)
    keep = np.setdiff1d(np.arange(1300), holdout_split(1300, 0.2, 3, labels=noisy)[1])
    assert len(keep) == 1040
    p, y = train_probs.double().numpy()[keep], noisy[keep]
    cond = np.stack([p[y == i].mean(0) for i in range(10)])
    got = np.array(out["metrics"]["dark_knowledge/mu"]).reshape(10, 10)
    np.testing.assert_allclose(got, (cond + cond.T) / 2, atol=1e-5)
    assert out["selection"]["noisy_val"]["epoch"] == 2
    assert out["selection"]["noisy_val"]["selected_on"] == "noisy validation"


def test_evaluate_not_a_run(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "result.json is missing" in capsys.readouterr().err
    assert main([]) == 2


@pytest.fixture(scope="module")
def selected_run(cli, tmp_path_factory) -> Path:
    """A 3-epoch digits run with a noisy validation split whose noisy_val rule selects an
    earlier epoch than the last (80 % noise, seed 0: val/acc peaks at epoch 1)."""
    from conftest import quick_run_dir

    out = tmp_path_factory.mktemp("selected")
    args = ("epochs=3", "validation.fraction=0.2")
    proc = cli(f"out_dir={out}", "noise=sym80", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return quick_run_dir(out, *args, noise="sym80")


def _selected_epoch(history: list[dict]) -> int:
    """The noisy_val rule worked out here: the highest val/acc, the earliest on ties."""
    best = max(r["val/acc"] for r in history)
    return next(r["epoch"] for r in history if r["val/acc"] == best)


@pytest.mark.cli
def test_evaluate_uses_the_selected_epochs_weights(selected_run: Path, capsys) -> None:
    """Issue 22 item 1: evaluate's default is the selected epoch's model (selected.pt), and
    its test accuracy is the one the run recorded at that epoch; weights=last is the last."""
    history = json.loads((selected_run / "result.json").read_text())["history"]
    chosen = _selected_epoch(history)
    assert chosen != history[-1]["epoch"]  # otherwise the test could not tell them apart
    acc_at = {r["epoch"]: r["test/acc"] for r in history}

    assert main([str(selected_run), "eval=[calibration]", "device=cpu"]) == 0
    out = json.loads((selected_run / "evaluation.json").read_text())
    assert out["checkpoint_epoch"] == chosen and out["unfinished"] is False
    assert out["weights"]["used"] == "selected" and out["weights"]["file"] == "selected.pt"
    assert out["weights"]["rule"] == "noisy_val" and out["weights"]["last_epoch"] == 3
    assert out["metrics"]["calibration/acc"] == pytest.approx(acc_at[chosen], abs=1e-6)
    assert "epoch 1, selected by 'noisy_val'" in capsys.readouterr().out

    assert main([str(selected_run), "eval=[calibration]", "device=cpu", "weights=last"]) == 0
    out = json.loads((selected_run / "evaluation.json").read_text())
    assert out["checkpoint_epoch"] == 3 and out["weights"]["used"] == "last"
    assert out["metrics"]["calibration/acc"] == pytest.approx(acc_at[3], abs=1e-6)


@pytest.mark.cli
def test_evaluate_refuses_missing_or_stale_selected_weights(
    selected_run: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(selected_run, run)
    (run / "evaluation.json").unlink(missing_ok=True)
    sel = torch.load(run / "selected.pt", weights_only=True)
    sel["epoch"] = 3  # not the epoch the history selects
    torch.save(sel, run / "selected.pt")
    assert main([str(run), "eval=[calibration]", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds epoch 3" in err and "weights=last" in err
    (run / "selected.pt").unlink()
    assert main([str(run), "eval=[calibration]", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "selected.pt is missing" in err
    assert not (run / "evaluation.json").exists()
    assert main([str(run), "eval=[calibration]", "device=cpu", "weights=best"]) == 2
    assert "weights=best is not one of selected, last" in capsys.readouterr().err
    assert main([str(run), "eval=[calibration]", "device=cpu", "weights=last"]) == 0


def test_evaluate_refuses_an_unfinished_run_unless_told(run_dir: Path, tmp_path, capsys) -> None:
    """Issue 22 item 1: an interrupted run is evaluated only with allow_unfinished=true, and
    evaluation.json says it was unfinished."""
    result = json.loads((run_dir / "result.json").read_text())
    result["status"] = "running"
    other = tmp_path / "run"
    other.mkdir()
    (other / "result.json").write_text(json.dumps(result))
    for name in ("checkpoint.pt", "noisy_labels.npy"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    assert main([str(other), "eval=[calibration]", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not finished" in err and "allow_unfinished=true" in err
    assert not (other / "evaluation.json").exists()
    args = [str(other), "eval=[calibration]", "device=cpu", "allow_unfinished=true"]
    assert main(args) == 0
    assert "warning" in capsys.readouterr().err
    out = json.loads((other / "evaluation.json").read_text())
    assert out["unfinished"] is True and out["status"] == "running"
    assert out["checkpoint_epoch"] == 2 and out["weights"]["used"] == "last"
