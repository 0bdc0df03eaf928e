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
