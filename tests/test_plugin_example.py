"""The method plug-in API: a method that lives outside noisybench (examples/plugin/).

The example is Reed et al.'s soft bootstrapping (ICLR 2015 workshop, arXiv:1412.6596,
Sec. 3.2): ``L_soft(q, t) = -sum_k [beta t_k + (1 - beta) q_k] log q_k``. Its loss is checked
against hand-computed numbers; the plug-in route is checked by running the README's command
on a copy of ``examples/plugin`` in a temporary directory, from another working directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from noisybench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def bootstrap_module():
    """``my_methods.bootstrap`` imported from examples/plugin (as PYTHONPATH would)."""
    sys.path.insert(0, str(PLUGIN))
    try:
        import my_methods.bootstrap as module

        yield module
    finally:
        sys.path.remove(str(PLUGIN))
        for name in [n for n in sys.modules if n == "my_methods" or n.startswith("my_methods.")]:
            del sys.modules[name]


def test_beta_one_is_cross_entropy(bootstrap_module) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=gen)
    labels = torch.randint(0, 5, (7,), generator=gen)
    for detach in (False, True):
        loss = bootstrap_module.soft_bootstrapping_loss(logits, labels, beta=1.0, detach=detach)
        torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_two_class_hand_case(bootstrap_module) -> None:
    """logits (0, ln 3): q = (1/4, 3/4); label 0; beta = 1/2 -> target (5/8, 3/8)."""
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0])
    loss = bootstrap_module.soft_bootstrapping_loss(logits, labels, beta=0.5, detach=False)
    expected = -(0.625 * math.log(0.25) + 0.375 * math.log(0.75))  # 0.97431...
    assert loss.item() == pytest.approx(expected, abs=1e-6)

    # Gradient through q in the target (the paper's cross-entropy + (1 - beta) entropy):
    # d/dz_j [beta CE + (1 - beta) H(q)] = beta (q_j - t_j) - (1 - beta) q_j (log q_j + H).
    loss.backward()
    q, t = (0.25, 0.75), (1.0, 0.0)
    entropy = -(q[0] * math.log(q[0]) + q[1] * math.log(q[1]))
    grad = [0.5 * (q[j] - t[j]) - 0.5 * q[j] * (math.log(q[j]) + entropy) for j in (0, 1)]
    assert logits.grad[0].tolist() == pytest.approx(grad, abs=1e-6)

    # detach=True: same value, gradient of a fixed soft target, softmax - target = beta (q - t).
    fixed = logits.detach().clone().requires_grad_(True)
    loss = bootstrap_module.soft_bootstrapping_loss(fixed, labels, beta=0.5, detach=True)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert fixed.grad[0].tolist() == pytest.approx([0.5 * (-0.75), 0.5 * 0.75], abs=1e-6)


def test_paper_default_and_bad_beta(bootstrap_module) -> None:
    method = bootstrap_module.SoftBootstrapping()
    assert method.beta == 0.95 and method.detach is False and method.views == ("weak",)
    with pytest.raises(UserError, match=r"method\.beta=1\.5"):
        bootstrap_module.SoftBootstrapping(beta=1.5)


def test_yaml_names_the_class() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(PLUGIN / "conf" / "method" / "bootstrap.yaml")
    assert cfg.name == "bootstrap"
    assert cfg._target_ == "my_methods.bootstrap.SoftBootstrapping"
    assert cfg.beta == 0.95


@pytest.mark.cli
@pytest.mark.slow
def test_plugin_runs_from_outside_the_package(tmp_path: Path) -> None:
    """The README's command, on a copy of examples/plugin, from another working directory."""
    plugin = tmp_path / "plugin"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    runs = tmp_path / "runs"
    env = dict(os.environ)
    # The plug-in's directory, as in the README. The repository root is added as well so the
    # subprocess imports this checkout of noisybench whatever else is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(plugin), str(ROOT)])
    cmd = [
        sys.executable,
        "-m",
        "noisybench",
        "experiment=quickstart",
        "method=bootstrap",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        "allow_targets=[my_methods.]",  # code outside noisybench runs only when allowed
        f"out_dir={runs}",
        "epochs=2",
        "progress=false",
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir = (
        runs / "digits" / "small_cnn" / "sym50" / "bootstrap" / "quickstart+epochs:2" / "seed0"
    )
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "finished"
    assert result["config"]["method"] == {
        "name": "bootstrap",
        "_target_": "my_methods.bootstrap.SoftBootstrapping",
        "beta": 0.95,
        "detach": False,
    }
    history = result["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    for record in history:
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float)}
        assert {"train/loss", "test/acc", "test/nll"} <= set(numbers)
        assert all(math.isfinite(v) for v in numbers.values()), record
        assert 0.0 <= record["test/acc"] <= 1.0
    # Nothing was written into the package or the working directory.
    assert list(workdir.iterdir()) == []
