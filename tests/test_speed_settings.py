"""The speed settings of issue 13 change how fast a run is, never what it computes.

Offline quickstart (digits, small CNN) on the CPU, built with :func:`noisybench.build.build`:

* ``channels_last=true``: the model's convolution weights and every view's batches are NHWC,
  and one training step gives the same loss and the same updated parameters as the default
  NCHW layout (to float rounding), i.e. the layout changes no value;
* ``optimizer_impl=foreach`` / ``fused``: the same parameters after a step as torch's default
  per-parameter implementation (a second implementation of the same update);
* ``compile=true``: the model is compiled in place, so its ``state_dict`` keys (what the
  checkpoint holds) are those of the uncompiled model and load into it;
* ``deterministic=auto``: deterministic on the CPU (what exact resume relies on);
* bad values: one-line :class:`UserError` s;
* ``ResultWriter(min_interval_s)``: the per-epoch rewrite of ``result.json`` is skipped within
  the interval, the last epoch is always written, and every final status is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from noisybench.build import build, deterministic_for, resolve_auto
from noisybench.callbacks import ResultWriter
from noisybench.config import check_config, compose
from noisybench.engine import _EpochSums
from noisybench.errors import UserError
from noisybench.rundir import RunDir

COMMON = ["experiment=quickstart", "epochs=3", "progress=false", "logger=[]", "device=cpu"]
BASE = [*COMMON, "dataset.reader.test_size=1297"]  # digits: 500 training images


def one_step(*overrides: str, base: list[str] = BASE) -> tuple[float, dict, object]:
    """Loss of the first step and the parameters after it (same seed: same batch)."""
    exp = build(compose([*base, *overrides]))
    trainer = exp.trainer()
    trainer.model.train()
    sums = _EpochSums.zeros(exp.device)
    batch = next(iter(exp.source.epoch(0)))
    trainer.train_step(batch, 0, 0, sums)
    params = {k: v.detach().clone() for k, v in exp.model.state_dict().items()}
    return float(sums.loss) / sums.seen, params, (exp, batch)


# 3-channel images (NHWC and NCHW coincide for the 1-channel digits).
RGB = [
    *COMMON,
    "dataset=synthetic",
    "dataset.reader.num_train=256",
    "dataset.reader.num_test=64",
    "dataset.reader.size=16",
    "optim=sgd_cosine",  # an update linear in the gradient (Adam's first step is ~sign(g))
]


def test_channels_last_changes_layout_not_values() -> None:
    loss_ref, params_ref, (_, batch_ref) = one_step(base=RGB)
    loss_cl, params_cl, (exp, batch) = one_step("channels_last=true", base=RGB)
    # NHWC: the channel is the innermost dimension (stride 1).
    convs = [p for p in exp.model.parameters() if p.dim() == 4]
    assert convs and all(p.stride(1) == 1 for p in convs)
    assert any(p.shape[1] > 1 for p in convs)
    assert batch.views["weak"].stride(1) == 1
    assert exp.source.view(exp.source.images("test")[:4]).stride(1) == 1
    assert batch_ref.views["weak"].stride(1) == 16 * 16  # the default NCHW layout
    torch.testing.assert_close(batch.views["weak"], batch_ref.views["weak"])  # same draws
    assert loss_cl == pytest.approx(loss_ref, rel=1e-5)
    for key, ref in params_ref.items():
        torch.testing.assert_close(params_cl[key], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimizer_implementations_agree(impl: str) -> None:
    cfg = ["optim=sgd_cosine"]  # torch.optim.SGD has foreach and (CPU) fused kernels
    _, params_ref, (exp_ref, _) = one_step(*cfg, "optimizer_impl=default")
    _, params, (exp, _) = one_step(*cfg, f"optimizer_impl={impl}")
    assert exp.optimizer.defaults[impl] is True
    assert not exp_ref.optimizer.defaults.get(impl)
    for key, ref in params_ref.items():
        torch.testing.assert_close(params[key], ref, rtol=1e-5, atol=1e-7)


def test_compile_keeps_the_checkpoint_keys() -> None:
    plain = build(compose(BASE)).model
    compiled = build(compose([*BASE, "compile=true"])).model
    assert type(compiled) is type(plain)  # compiled in place, not wrapped
    assert list(compiled.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(compiled.state_dict())  # strict: the checkpoint loads either way


def test_auto_settings_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert deterministic_for("auto", cpu) is True
    assert deterministic_for("auto", cuda) is False
    assert deterministic_for(True, cuda) is True
    assert resolve_auto("auto", cuda, "channels_last") is True
    assert resolve_auto("auto", cpu, "channels_last") is False
    build(compose(BASE))  # deterministic=auto by default
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("deterministic=maybe", "deterministic=maybe is invalid"),
        ("channels_last=1", "channels_last=1 is invalid"),
        ("compile=yes", "compile=yes is not a boolean"),
        ("optimizer_impl=turbo", "optimizer_impl=turbo is unknown"),
        ("result_interval_s=-1", "result_interval_s=-1 is invalid"),
        ("checkpoint_async=later", "checkpoint_async=later is invalid"),
        ("eval.train_diagnostics_every=0", "eval.train_diagnostics_every=0 is invalid"),
    ],
)
def test_bad_speed_settings(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        check_config(compose([*BASE, override]))
    assert "\n" not in str(info.value)


def test_optimizer_impl_the_optimizer_lacks() -> None:
    # torch.optim.LBFGS has neither foreach nor fused.
    with pytest.raises(UserError, match="has no foreach implementation"):
        build(
            compose([*BASE, "optimizer_impl=foreach", "optim.optimizer._target_=torch.optim.LBFGS"])
        )


class _FakeTrainer:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.history: list[dict] = []


def test_result_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("noisybench.callbacks.time.monotonic", lambda: now[0])
    run_dir = RunDir(tmp_path)
    writer = ResultWriter(run_dir, {"run_dir": str(tmp_path)}, min_interval_s=25.0)
    trainer = _FakeTrainer(epochs=6)
    writer.on_fit_start(trainer, 0, 0)  # type: ignore[arg-type]
    written = []
    for epoch in range(6):
        now[0] = 10.0 * (epoch + 1)  # epoch e ends at 10 (e + 1) s
        trainer.history.append({"epoch": epoch + 1, "test/acc": 0.5})
        writer.on_epoch_end(trainer, epoch, trainer.history[-1])  # type: ignore[arg-type]
        written.append(len(json.loads(run_dir.result_file.read_text())["history"]))
    # Writes at 0 s (start), then at >= 25 s after the last one: 30 s (epoch 3), 60 s (epoch
    # 6, also the last epoch).
    assert written == [0, 0, 3, 3, 3, 6]
    writer.write("finished")
    assert json.loads(run_dir.result_file.read_text())["status"] == "finished"
