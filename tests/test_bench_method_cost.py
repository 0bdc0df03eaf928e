"""The method-cost benchmark (issue 23): it runs on two methods at tiny sizes and writes the
file its docstring describes; the stubbed training-set pass has the shape the method's
module gives. No timing is asserted (a shared machine's times are what they are)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_method_cost", ROOT / "benchmarks" / "bench_method_cost.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.cli  # each method is measured in a process of its own
def test_two_methods_dry_write_the_file(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    argv = ["--methods", "bsd", "--dry", "--epoch-start", "200", "--out", str(out)]
    _bench().main(argv)
    result = json.loads(out.read_text())
    setup = result["setup"]
    assert (setup["dataset"], setup["model"], setup["device"]) == ("digits", "small_cnn", "cpu")
    assert setup["batch_size"] == 16 and setup["steps"] == 2 and setup["dry"] is True
    assert "VmHWM" in setup["memory_kind"]
    assert list(result["methods"]) == ["ce", "bsd"]  # CE first, the reference
    for name, row in result["methods"].items():
        assert "error" not in row, (name, row)
        assert len(row["step_ms_all"]) == 2 and row["batch_rows"] == 16
        assert row["step_cpu_ms"] >= 0
        assert row["peak_bytes"] > 0 and row["peak_over_base_bytes"] >= 0
    ce = result["methods"]["ce"]
    assert ce["step_ms"] > 0 and ce["step_over_ce"] == 1.0 and ce["peak_bytes"] > 2**20
    assert ce["step_cpu_ms"] > 0 and ce["step_cpu_over_ce"] == 1.0
    start = result["epoch_start"]
    assert start["n"] == 200 and list(start["methods"]) == ["ce", "bsd"]
    for row in start["methods"].values():
        assert row["seconds"] >= 0 and row["stub_seconds"] >= 0 and row["cpu_seconds"] >= 0
    # CE and BSD make no pass over the training set at an epoch's start.
    assert start["methods"]["ce"]["output_dims"] == []
    md = out.with_suffix(".md").read_text()
    assert "| ce | " in md and "| bsd | " in md and "on_epoch_start at N = 200" in md


@pytest.mark.cli
def test_a_method_that_does_not_build_gets_a_row_saying_why(tmp_path: Path) -> None:
    row = _bench()._isolated("nosuchmethod", ["--dry"], tmp_path)
    assert "error" in row and "nosuchmethod" in row["error"]


class _Predict:
    def outputs(self, split, forward, reduce, subset):
        assert split == "train" and subset.tolist() == [0, 1]
        return reduce(forward(torch.ones(2, 3)))


class _Trainer:
    """What StubTrain uses of the engine's Trainer: the device and predict.outputs."""

    device = torch.device("cpu")
    predict = _Predict()


def test_the_stub_returns_fixed_outputs_of_the_modules_width() -> None:
    bench = _bench()
    stub = bench.StubTrain(_Trainer(), 500)
    features = nn.Sequential(nn.Linear(3, 7), nn.Dropout(0.5))
    features.train()
    first = stub(features)
    assert first.shape == (500, 7) and first.dtype == torch.float32
    assert features.training  # its mode restored
    again = stub(features)
    assert torch.equal(first, again) and first.data_ptr() != again.data_ptr()  # a copy
    expected = torch.randn(500, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, expected)
    assert stub(nn.Linear(3, 4)).shape == (500, 4)
    assert stub.dims == [7, 7, 4]
