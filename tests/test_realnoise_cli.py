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


def test_clothing1m_run_records_its_manifest_and_refuses_other_data(cli, tmp_path) -> None:
    """Issue 24 wiring: result.json's header and the checkpoint hold the manifest summary
    (SHA-256 of a serialisation written here from the tree's own lists, split sizes, missing
    counts); the noise record's rate and transition matrix are those on the 28 samples with
    both labels (14 of them flipped c -> c+1: rate 1/2, T[c][c] = T[c][c+1] = 1/2); a resume
    on a tree whose lists changed is refused in one line, nothing written."""
    import hashlib
    import json

    import torch
    from conftest import assert_only_hydra_added, snapshot

    root = tmp_path / "c1m"
    spec = lay.clothing1m(root, images_dir=False)
    args = _args("clothing1m", tmp_path / "out", f"dataset.reader.root={root}", "epochs=2")
    cut = cli(*args, base=(), env={KILL_ENV: "2:1:TERM"})
    assert cut.returncode != 0 and "stopped by SIGTERM at epoch 2" in cut.stderr
    run = _run_dir(tmp_path / "out")
    result = json.loads((run / "result.json").read_text())

    rows = [("train", k, g, c, -1) for k, g, c in spec["train"]]
    rows += [("val", f"{c}/v/v{c}_0.jpg", c, c, -1) for c in range(14)]
    rows += [("test", f"{c}/t/t{c}_0.jpg", c, c, -1) for c in range(14)]
    text = "# noisybench-manifest v1 clothing1m\nsplit\tpath\tgiven\tclean\tverified\n"
    text += "".join("\t".join(str(v) for v in row) + "\n" for row in rows)
    manifest = result["dataset_manifest"]
    assert manifest["name"] == "clothing1m"
    assert manifest["manifest_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["splits"] == {"train": 42, "val": 14, "test": 14}
    assert manifest["missing_skipped"] == {"train": 0, "val": 0, "test": 0}
    assert manifest["clean_known_train"] == 28
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["dataset_manifest"] == manifest

    noise = result["noise"]
    assert noise["realised_rate"] == pytest.approx(0.5)
    expected = np.zeros((14, 14))
    for c in range(14):
        expected[c, c] = expected[c, (c + 1) % 14] = 0.5
    np.testing.assert_allclose(np.array(noise["transition"]), expected, atol=1e-12)
    # the labels' hash is still that of all 42 given labels (little-endian int64)
    given = np.array([g for _, g, _ in spec["train"]], dtype="<i8")
    assert noise["sha256"] == hashlib.sha256(given.tobytes()).hexdigest()

    # one clean test image dropped from its list: same noisy labels, another manifest
    test_list = root / "clean_test_key_list.txt"
    test_list.write_text("".join(test_list.read_text().splitlines(keepends=True)[1:]))
    before = snapshot(run)
    proc = cli(*args, base=())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"trained on clothing1m with manifest {manifest['manifest_sha256'][:16]}" in lines[-1]
    assert_only_hydra_added(before, snapshot(run))
