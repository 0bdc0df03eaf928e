"""Each real-noise dataset trained end to end from the command line for one epoch on a tree in
its exact layout (tests/realnoise_layouts.py), small CNN at 32 px: the given labels the run
saves are the labels of the dataset's list files (read here from the tree's own numbers); a
missing list file stops the run with one line before anything is written; ANIMAL-10N resumes
after a SIGTERM in the middle of an epoch with the uninterrupted run's numbers bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import realnoise_layouts as lay
from conftest import KILL_ENV, epoch_metrics, read_result

pytestmark = [pytest.mark.cli, pytest.mark.slow]


def _args(dataset: str, out: Path, *extra: str) -> list[str]:
    return [
        f"dataset={dataset}",
        "dataset.reader.image_size=32",
        "dataset.reader.resize=36",
        "dataset.loader.workers=1",
        "model=small_cnn",
        "noise=none",
        "method=ce",
        "epochs=1",
        "batch_size=6",  # no training set here leaves a last batch of 1 (BatchNorm)
        "cpu_threads=1",
        "progress=false",
        "logger=[]",
        f"out_dir={out}",
        *extra,
    ]


def _run_dir(out: Path) -> Path:
    found = [p.parent for p in out.rglob("result.json")]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each dataset's reader options and the given training labels its lists hold."""
    base = tmp_path_factory.mktemp("trees")
    c1m = lay.clothing1m(base / "c1m", images_dir=False)
    lay.webvision(base / "wv", imagenet="wnid")
    animals = lay.animal10n(base / "a10n")
    food = lay.food101n(base / "f101n", base / "f101")
    red = lay.red_mini_imagenet(base / "red")
    return {
        "clothing1m": (
            [f"dataset.reader.root={base / 'c1m'}"],
            np.array([g for _, g, _ in c1m["train"]]),
        ),
        "webvision_mini": (
            [f"dataset.reader.root={base / 'wv'}"],
            np.repeat(np.arange(50), 2),
        ),
        "animal10n": ([f"dataset.reader.root={base / 'a10n'}"], np.array(animals["train"])),
        "food101n": (
            [
                f"dataset.reader.root={base / 'f101n'}",
                f"dataset.reader.food101_root={base / 'f101'}",
            ],
            np.array([lay.FOOD.index(k.split("/")[0]) for k in food["keys"]]),
        ),
        "red_mini_imagenet": (
            [f"dataset.reader.root={base / 'red'}", "dataset.reader.noise_rate=0.6"],
            np.array([y for _, y in red["splits"]["0.6"]]),
        ),
    }


@pytest.mark.parametrize(
    "dataset", ["clothing1m", "webvision_mini", "animal10n", "food101n", "red_mini_imagenet"]
)
def test_one_epoch_from_the_command_line(cli, trees, tmp_path, dataset: str) -> None:
    options, given = trees[dataset]
    proc = cli(*_args(dataset, tmp_path / "out", *options), base=())
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _run_dir(tmp_path / "out")
    result = read_result(run)
    assert result["status"] == "finished" and len(result["history"]) == 1
    assert 0.0 <= result["history"][0]["test/acc"] <= 1.0
    saved = np.load(run / "noisy_labels.npy")
    np.testing.assert_array_equal(saved, given)


def test_missing_list_file_stops_before_anything_is_written(cli, tmp_path) -> None:
    lay.red_mini_imagenet(tmp_path / "red")
    (tmp_path / "red" / "split" / "clean_validation").unlink()
    root = f"dataset.reader.root={tmp_path / 'red'}"
    proc = cli(*_args("red_mini_imagenet", tmp_path / "out", root), base=())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "clean_validation does not exist" in lines[0]
    assert (
        not list((tmp_path / "out").rglob("result.json")) if (tmp_path / "out").exists() else True
    )


def test_animal10n_resumes_mid_epoch_exactly(cli, trees, tmp_path) -> None:
    options, _ = trees["animal10n"]

    def args(out: Path) -> list[str]:
        return _args("animal10n", out, *options, "epochs=2", "method=bsd")

    whole = cli.submit(cli, *args(tmp_path / "a"), base=())
    cut = cli(*args(tmp_path / "b"), base=(), env={KILL_ENV: "2:2:TERM"})
    assert cut.returncode != 0 and "stopped by SIGTERM at epoch 2, step 2" in cut.stderr
    resumed = cli(*args(tmp_path / "b"), base=())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = whole.result()
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = read_result(_run_dir(tmp_path / "a")), read_result(_run_dir(tmp_path / "b"))
    assert a["status"] == b["status"] == "finished"
    assert len(a["history"]) == 2
    assert epoch_metrics(a["history"]) == epoch_metrics(b["history"])


def test_two_processes_train_clothing1m_like_one(tmp_path) -> None:
    """Clothing1M's reader under two gloo processes (tests/test_distributed.py's comparison:
    every process holds the same state, metrics and BSD's store equal one process's within
    float-sum rounding)."""
    from test_distributed import _compare_with_one_process

    lay.clothing1m(tmp_path / "c1m")
    spec = (
        f"dataset=clothing1m dataset.reader.root={tmp_path / 'c1m'} dataset.reader.image_size=16 "
        "dataset.reader.resize=20 dataset.loader.workers=0 model=small_mlp noise=none "
        "method=bsd epochs=2 batch_size=12 progress=false logger=[] eval.batch_size=8"
    )
    _compare_with_one_process(tmp_path, ["bsd clothing1m"], [spec])


def test_clothing1m_dividemix_experiment_streams_two_views(cli, trees, tmp_path) -> None:
    """experiment=clothing1m_dividemix (the authors' values) on the streamed reader: the warm-up
    epoch, then a co-divided DivideMix epoch on the two streamed weak views."""
    options, given = trees["clothing1m"]
    args = _args("clothing1m", tmp_path / "out", *options, "epochs=2", "eval.batch_size=16")
    args = [a for a in args if not a.startswith(("dataset=", "method=", "noise="))]
    proc = cli("experiment=clothing1m_dividemix", *args, base=())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(_run_dir(tmp_path / "out"))
    assert result["status"] == "finished" and len(result["history"]) == 2
    assert result["config"]["method"]["warm_up"] == 1
    assert result["config"]["method"]["confidence_penalty"] is True
    np.testing.assert_array_equal(np.load(_run_dir(tmp_path / "out") / "noisy_labels.npy"), given)
