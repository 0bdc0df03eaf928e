"""``noisybench evaluate`` on a finished run rebuilds it by the same parts as training
(:func:`noisybench.build.rebuild`), so post-hoc evaluation sees exactly the numbers training
saw: for every model of ``conf/model`` that builds on the CPU, the ``calibration/nll`` of the
saved checkpoint equals the last epoch's ``test/nll`` of the run's own history (both are the
mean cross-entropy of the same logits on the same test set, calibration.py and metrics.py).

The pretrained ViT (a local weights file) is the case the earlier hand-written assembly got
wrong: it normalised with the dataset's statistics instead of ImageNet's
(``model.input_stats``), so its NLL differed from training's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from noisybench.config import CONF_DIR, compose
from noisybench.evaluate import EvaluateOptions, evaluate_run
from noisybench.run import run_experiment

DEEP = {  # 3-24 s each (the quick loop keeps the small and mid-sized networks)
    "densenet121",
    "densenet169",
    "densenet201",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "tv_resnet50",
    "tv_vgg19_bn",
    "inception_resnet_v2",
    "vit_b16",
}
MODELS = [
    pytest.param(m, marks=pytest.mark.slow) if m in DEEP else m
    for m in sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
]
SMALLEST_32 = {"coteaching_cnn", "tv_vgg19_bn"}
TINY = (
    "dataset=synthetic",
    "dataset.reader.num_train=32",
    "dataset.reader.num_test=24",
    "dataset.reader.size=16",
    "noise=sym50",
    "method=ce",
    "epochs=1",
    "batch_size=8",
    "eval.train_diagnostics=false",
    "eval.batch_size=64",
    "progress=false",
    "logger=[]",
    "cpu_threads=1",
)


def _compact_random_weights(path: Path, module: torch.nn.Module) -> None:
    """A weights file of ``module``'s shapes with input-dependent random values that stays a
    few kilobytes: each tensor is a window view (``as_strided``, row stride 3) of a short
    random vector, so rows differ and torch.save stores only the short vector."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in module.state_dict().items():
        shape = tuple(value.shape)
        if not shape:
            state[key] = torch.randn((), generator=gen)
            continue
        if len(shape) == 1 and key.endswith("weight"):  # LayerNorm scales: near 1
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
            continue
        inner = math.prod(shape[1:])
        base = torch.randn(inner + 3 * shape[0], generator=gen) * 0.1
        strides = [3] + [math.prod(shape[i + 1 :]) for i in range(1, len(shape))]
        state[key] = base.as_strided(shape, strides)
    torch.save(state, path)
    assert path.stat().st_size < 5_000_000  # ViT-B: 86M parameters in 3 MB


@pytest.mark.parametrize("model", MODELS)
def test_posthoc_nll_equals_the_last_epochs_test_nll(
    model: str, tmp_path: Path, restore_torch_globals: None
) -> None:
    extra = [f"model={model}", f"out_dir={tmp_path / 'runs'}"]
    if model in SMALLEST_32:  # five poolings (VGG) / a 32-px design (Co-teaching's CNN)
        extra.append("dataset.reader.size=32")
    if model == "inception_resnet_v2":  # unpadded reductions: at least 75 pixels
        extra.append("dataset.reader.size=75")
    if model == "vit_b16":
        from noisybench.models.vit import vit_b16

        with torch.device("meta"):
            backbone = vit_b16(num_classes=10, image_size=16).backbone
        weights = tmp_path / "vit.pth"
        _compact_random_weights(weights, backbone)
        # a learning rate large enough for the new head to move the logits far from uniform
        extra += ["model.image_size=16", f"model.weights={weights}", "optim.optimizer.lr=0.1"]
    cfg = compose([*TINY, *extra])
    run_dir = tmp_path / "run"
    result = run_experiment(cfg, run_dir)
    trained = result["history"][-1]["test/nll"]
    out = evaluate_run(run_dir, ["calibration"], options=EvaluateOptions("cpu", 64))
    assert out["metrics"]["calibration/nll"] == pytest.approx(trained, rel=1e-5, abs=1e-6)
