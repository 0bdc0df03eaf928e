"""TensorBoard images, config text and hparams, read back with TensorBoard's own reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from noisybench.tb import (
    BAR_RGB,
    hparams_of,
    log_epoch_images,
    log_hparams,
    log_run_start,
    matrix_image,
    reliability_image,
)


def _bar_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of bar-coloured pixels in one image row: [(start, end_exclusive)]."""
    is_bar = np.all(row == np.array(BAR_RGB, dtype=np.uint8), axis=-1)
    runs, start = [], None
    for x, b in enumerate([*is_bar, False]):
        if b and start is None:
            start = x
        elif not b and start is not None:
            runs.append((start, x))
            start = None
    return runs


def test_reliability_image_has_one_bar_per_filled_bin_with_its_accuracy() -> None:
    acc = [0.0, 0.5, math.nan, 0.4, 1.0]  # bin 2 empty (NaN), bin 0 has zero accuracy
    conf = [0.1, 0.3, math.nan, 0.7, 0.9]
    count = [3, 5, 0, 2, 8]
    img = reliability_image(acc, conf, count, size=100)
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8
    # 5 bins of 20 px; a bar fills px 1..18 of its bin. Bars of height > 0: bins 1, 3, 4.
    runs = _bar_runs(img[98])
    assert len(runs) == 3
    assert [(s // 20) for s, _ in runs] == [1, 3, 4]
    # Bar heights: the top bar pixel of bin b's centre column is at 100 - 100 * acc[b].
    for b, a in ((1, 0.5), (3, 0.4), (4, 1.0)):
        col = np.all(img[:, b * 20 + 10] == np.array(BAR_RGB, dtype=np.uint8), axis=-1)
        assert int(np.argmax(col)) == 100 - round(100 * a)


def test_matrix_image_maps_cells_to_blocks_and_extremes_to_the_ramp_ends() -> None:
    m = np.eye(3)
    img = matrix_image(m, cell=4)
    assert img.shape == (12, 12, 3)
    assert tuple(img[1, 1]) == (253, 231, 37)  # the maximum: the ramp's brightest end
    assert tuple(img[1, 5]) == (68, 1, 84)  # the minimum: its darkest end
    assert np.all(img[4:8, 4:8] == img[5, 5])  # a cell is one uniform block
    flat = matrix_image([0.0, 1.0, 1.0, 0.0], cell=2)  # a row-major K*K list, as mu is stored
    assert tuple(flat[0, 2]) == (253, 231, 37) and tuple(flat[0, 0]) == (68, 1, 84)
    with pytest.raises(ValueError):
        matrix_image([1.0, 2.0, 3.0])


def test_hparams_of_turns_every_value_into_an_accepted_type() -> None:
    hp = hparams_of(
        {"method": {"name": "bsd", "gamma": 0.9, "_target_": "x.Y"}, "a": None, "b": [1, 2]}
    )
    assert hp == {"method.name": "bsd", "method.gamma": 0.9, "a": "null", "b": "[1, 2]"}


def test_events_are_readable_back_with_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    config = {"seed": 1, "method": {"name": "bsd", "gamma": 0.9}, "noise": {"rate": 0.5}}
    config |= {"data_dir": "/data", "progress": True, "device": "cpu", "out_dir": "runs"}
    writer = SummaryWriter(log_dir=str(tmp_path))
    log_run_start(writer, config, {"transition": [[0.8, 0.2], [0.3, 0.7]]})
    log_epoch_images(
        writer,
        {
            "eval/calibration/reliability/accuracy": [0.2, 0.9],
            "eval/calibration/reliability/confidence": [0.3, 0.8],
            "eval/calibration/reliability/count": [4, 6],
            "eval/dark_knowledge/mu": [0.9, 0.1, 0.2, 0.8],
        },
        step=3,
    )
    log_hparams(writer, config, {"last": {"test/acc": 0.91, "epoch": 10}, "best": None})
    writer.close()

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["images"]) >= {
        "noise/transition",
        "calibration/reliability",
        "dark_knowledge/mu",
    }
    image = acc.Images("calibration/reliability")[0]
    assert image.step == 3 and (image.width, image.height) == (420, 360)  # a figure with axes
    assert tags["tensors"] and "config/text_summary" in tags["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "gamma: 0.9" in text

    # one TensorBoard run per noisybench run: the hparams are in the run's own events
    assert not (tmp_path / "hparams").exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []
    hp = EventAccumulator(str(tmp_path))
    hp.Reload()
    content = hp.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = info.session_start_info.hparams
    assert values["method.gamma"].number_value == pytest.approx(0.9)
    assert values["method.name"].string_value == "bsd"
    # only what changes an experiment (config.identity), not where or how it ran
    assert set(values) == {"seed", "method.name", "method.gamma", "noise.rate"}
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in exp.experiment.metric_infos}
    assert metric_tags == {"hparams/last/test/acc", "hparams/last/epoch"}
    assert hp.Scalars("hparams/last/test/acc")[0].value == pytest.approx(0.91)


def test_a_run_with_list_valued_config_keys_writes_its_hparams(cli, tmp_path: Path) -> None:
    """A config with lists (here an evaluation suite's corruption list; KD's teacher_runs is
    another) reaches the TensorBoard logger as plain lists: the run ends with status 0, with
    its hparams in its own TensorBoard run (no ``tb/hparams`` sub-run), limited to the keys
    that change an experiment."""
    from conftest import quick_run_dir
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    extra = ("epochs=1", "eval=[corruption]", "eval.suites.corruption.corruptions=[contrast]")
    proc = cli(*extra, f"out_dir={tmp_path}", "logger=[tensorboard]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = quick_run_dir(tmp_path, "epochs=1")
    assert sorted(p.name for p in (run / "tb").iterdir() if p.is_dir()) == []  # one TB run
    hp = EventAccumulator(str(run / "tb"))
    hp.Reload()
    content = hp.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = info.session_start_info.hparams
    # evaluation settings never change training (NON_IDENTITY_KEYS): not hyperparameters
    assert values["method.name"].string_value == "ce"
    assert not any(key.startswith(("eval.", "data_dir", "progress", "device")) for key in values)


def test_matrix_figure_has_axes_values_and_a_fixed_colour_scale() -> None:
    from noisybench.tb import figure_image, matrix_figure

    fig = matrix_figure([[0.8, 0.2], [0.3, 0.7]], "noise transition")
    ax, bar = fig.axes  # the heatmap and its colour bar
    assert [t.get_text() for t in ax.texts] == ["0.80", "0.20", "0.30", "0.70"]
    assert ax.get_xlabel() == "noisy label j" and ax.get_ylabel() == "clean label i"
    assert ax.images[0].get_clim() == (0.0, 1.0)  # the same scale for every run and epoch
    assert bar.get_ylim() == (0.0, 1.0)
    assert figure_image(fig).shape == (360, 420, 3)


def test_reliability_figure_draws_the_gap_beside_the_bars_and_the_counts() -> None:
    from noisybench.tb import reliability_figure

    fig = reliability_figure([0.2, float("nan"), 0.9], [0.3, 0.5, 0.8], [4, 0, 6])
    (ax,) = fig.axes
    bars, gaps = ax.containers  # accuracy bars, then the gap boxes
    assert [round(b.get_height(), 6) for b in bars] == [0.2, 0.9]  # the empty bin has no bar
    # each gap box starts at the accuracy (on top of the bar, not over it) and ends at the
    # bin's mean confidence
    assert [round(g.get_y(), 6) for g in gaps] == [0.2, 0.9]
    assert [round(g.get_y() + g.get_height(), 6) for g in gaps] == [0.3, 0.8]
    assert [t.get_text() for t in ax.texts] == ["4", "6"]
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"
