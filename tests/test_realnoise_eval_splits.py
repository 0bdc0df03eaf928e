"""The real-noise datasets' extra evaluation splits (issue 24): a dataset's own clean
validation data (Clothing1M's ``clean_val_key_list.txt``; Food-101N's ``verified_val.tsv``
images verified correct, when they are held out of training) evaluated each epoch as
``val/clean_acc``, the ``clean_val`` selection rule's number; mini-WebVision's second test set,
the ILSVRC12 validation images of its 50 classes, evaluated beside the WebVision val as
``test_imagenet/*`` with the top-5 accuracy the field's tables report.

Independent checks: the split files and labels against the lists the trees were written from
(tests/realnoise_layouts.py, read here by file name); the recorded accuracies against the
trained model's predictions on those files decoded by a separate pipeline
(tests/test_streaming_training.py's torchvision functional resize + centre crop, with the
datasets' normalisation constants transcribed from DivideMix's loaders) and a top-k computed
by sorting; the selection rule's resolution, refusal and sweep objective against hand-written
histories.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import realnoise_layouts as lay
import torch
from conftest import error_line, read_result
from test_streaming_training import _reference_inputs

from noisybench.data.realnoise import (
    evaluation_splits,
    load_animal10n,
    load_clothing1m,
    load_food101n,
    load_red_mini_imagenet,
    load_webvision_mini,
    split_sizes,
)
from noisybench.errors import UserError
from noisybench.evaluation.selection import check_tuning, objective, resolve, selection_summary

# DivideMix's dataloader_clothing1M.py: transforms.Normalize((0.6959, 0.6537, 0.6371),
# (0.3113, 0.3192, 0.3214)); dataloader_webvision.py: ImageNet's.
CLOTHING1M_MEAN, CLOTHING1M_STD = (0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def _args(dataset: str, root: Path, *extra: str) -> list[str]:
    return [
        f"dataset={dataset}",
        f"dataset.reader.root={root}",
        "dataset.reader.image_size=32",
        "dataset.reader.resize=36",
        "dataset.loader.workers=0",
        "model=small_cnn",
        "noise=none",
        "method=ce",
        "epochs=1",
        "batch_size=6",
        "cpu_threads=1",
        "progress=false",
        "logger=[]",
        *extra,
    ]


# ----------------------------------------------------------------------------- the readers
def test_clothing1m_exposes_its_clean_val_list(tmp_path: Path) -> None:
    lay.clothing1m(tmp_path)
    splits = evaluation_splits(load_clothing1m(str(tmp_path)))
    assert list(splits) == ["clean_val"]
    files, labels = splits["clean_val"]
    # clean_val_key_list.txt lists images/<c>/v/v<c>_0.jpg, labelled c in clean_label_kv.txt
    assert files == [str(tmp_path / "images" / f"{c}/v/v{c}_0.jpg") for c in range(14)]
    assert labels.tolist() == list(range(14))


def test_food101n_clean_val_is_verified_val_held_out_and_verified_right(tmp_path: Path) -> None:
    """verified_val.tsv of the tree flags keys[7] wrong (0) and keys[8] right (1): held out of
    training, only keys[8] is a clean validation image, labelled by its class folder."""
    spec = lay.food101n(tmp_path / "r", tmp_path / "f")
    keys = spec["keys"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained_on = load_food101n(str(tmp_path / "r"), str(tmp_path / "f"))
        held = load_food101n(str(tmp_path / "r"), str(tmp_path / "f"), exclude_verified_val=True)
    assert evaluation_splits(trained_on) == {} and trained_on.protocol["selection"] == "last"
    files, labels = evaluation_splits(held)["clean_val"]
    assert files == [str(tmp_path / "r" / "images" / keys[8])]
    assert labels.tolist() == [lay.FOOD.index(keys[8].split("/")[0])]
    assert split_sizes(held) == {"train": len(keys) - 2, "val": 1, "test": 10}
    c = lay.FOOD.index(keys[8].split("/")[0])
    assert ("val", keys[8], c, c, 1) in held.manifest
    assert held.protocol["selection"] == "clean_val"


def test_webvision_second_test_set_and_datasets_without_extra_splits(tmp_path: Path) -> None:
    lay.webvision(tmp_path / "wv", imagenet="numeric")
    wv = load_webvision_mini(str(tmp_path / "wv"))
    splits = evaluation_splits(wv)
    assert list(splits) == ["test_imagenet"] and wv.protocol["topk"] == [5]
    files, labels = splits["test_imagenet"]
    # imagenet/val/<c>/ILSVRC2012_val_<c>.JPEG for c < 50 (classes 50, 51 dropped)
    assert files == [
        str(tmp_path / "wv" / "imagenet" / "val" / str(c) / f"ILSVRC2012_val_{c:08d}.JPEG")
        for c in range(50)
    ]
    assert labels.tolist() == list(range(50))
    lay.animal10n(tmp_path / "a")
    lay.red_mini_imagenet(tmp_path / "red")
    assert evaluation_splits(load_animal10n(str(tmp_path / "a"))) == {}
    assert evaluation_splits(load_red_mini_imagenet(str(tmp_path / "red"))) == {}


# ----------------------------------------------------------------------------- a run's numbers
def test_clean_val_accuracy_each_epoch_is_the_models_on_the_clean_val_files(
    tmp_path: Path, restore_torch_globals
) -> None:
    from noisybench.build import build
    from noisybench.config import compose

    lay.clothing1m(tmp_path / "c1m")
    exp = build(compose(_args("clothing1m", tmp_path / "c1m", "epochs=2")))
    assert exp.source.labels.size("clean_val") == 14
    history = exp.trainer().fit()
    assert all("val/clean_acc" in r and "val/acc" not in r for r in history)
    files = [str(tmp_path / "c1m" / "images" / f"{c}/v/v{c}_0.jpg") for c in range(14)]
    exp.model.eval()
    with torch.no_grad():
        x = _reference_inputs(files, 32, 36, CLOTHING1M_MEAN, CLOTHING1M_STD)
        pred = exp.model(x).argmax(-1)
    want = float((pred == torch.arange(14)).float().mean())
    assert history[-1]["val/clean_acc"] == pytest.approx(want, abs=1e-12)


def test_webvision_records_imagenet_top1_top5_beside_webvision_val(
    tmp_path: Path, restore_torch_globals
) -> None:
    from noisybench.build import build
    from noisybench.config import compose

    root = tmp_path / "wv"
    lay.webvision(root, imagenet="wnid")
    exp = build(compose(_args("webvision_mini", root, "batch_size=10")))
    record = exp.trainer().fit()[-1]
    imagenet = [str(root / "imagenet_val" / lay.WNIDS[c] / f"ILSVRC2012_val_{c:08d}.JPEG")
                for c in range(50)]  # fmt: skip
    webvision = [str(root / "val_images_256" / f"val{c:06d}.jpg") for c in range(50)]
    exp.model.eval()
    for prefix, files in (("test_imagenet", imagenet), ("test", webvision)):
        with torch.no_grad():
            logits = exp.model(_reference_inputs(files, 32, 36, IMAGENET_MEAN, IMAGENET_STD))
        order = logits.argsort(dim=-1, descending=True)
        y = torch.arange(50)
        top1 = sum(int(order[i, 0]) == i for i in range(50)) / 50
        top5 = sum(i in order[i, :5].tolist() for i in range(50)) / 50
        assert record[f"{prefix}/acc"] == pytest.approx(top1, abs=1e-6)
        assert record[f"{prefix}/top5"] == pytest.approx(top5, abs=1e-6)
        nll = float(torch.nn.functional.cross_entropy(logits, y))
        assert record[f"{prefix}/nll"] == pytest.approx(nll, rel=1e-4)
    # the selected epoch's entry of result.json carries the second test set too
    assert "test_imagenet/acc" in selection_summary([record])["last"]


# ----------------------------------------------------------------------------- selection
def test_selection_rule_resolution_and_refusal() -> None:
    assert resolve("auto", False, True) == "clean_val"  # Clothing1M's protocol
    assert resolve(None, True, True) == "clean_val"
    assert resolve("auto", True, False) == "noisy_val"
    assert resolve("auto", False, False) == "last"
    assert resolve("clean_val", False, True) == "clean_val"
    with pytest.raises(UserError) as err:
        resolve("clean_val", True, False)
    assert "selection=clean_val needs a dataset with clean validation labels" in str(err.value)
    assert "\n" not in str(err.value)


def test_sweep_objective_is_clean_val_accuracy_at_the_selected_epoch() -> None:
    history = [
        {"epoch": 1, "test/acc": 0.9, "val/clean_acc": 0.30},
        {"epoch": 2, "test/acc": 0.1, "val/clean_acc": 0.50},
        {"epoch": 3, "test/acc": 0.8, "val/clean_acc": 0.40},
    ]
    result = {"config": {"selection": "auto"}, "selection_rule": "clean_val", "history": history}
    assert objective(result) == 0.50
    assert selection_summary(history)["clean_val"]["epoch"] == 2
    check_tuning({"selection": "clean_val"}, OPTUNA)  # a validation number: no refusal
    with pytest.raises(UserError):
        check_tuning({"selection": "auto"}, OPTUNA)  # no split known before the data is read


@pytest.mark.cli
@pytest.mark.slow
def test_clean_val_from_the_command_line_and_refused_without_it(cli, tmp_path: Path) -> None:
    """Clothing1M from the command line selects on clean val by default (selected.pt is the
    epoch of the highest val/clean_acc); selection=clean_val on ANIMAL-10N (no validation
    data) stops with one line before anything is written."""
    lay.clothing1m(tmp_path / "c1m", images_dir=False)
    out = tmp_path / "out"
    proc = cli(*_args("clothing1m", tmp_path / "c1m", "epochs=3", f"out_dir={out}"), base=())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in out.rglob("result.json")]
    result = read_result(run)
    assert result["selection_rule"] == "clean_val"
    history = result["history"]
    best = max(history, key=lambda r: (r["val/clean_acc"], -r["epoch"]))
    assert result["selection"]["clean_val"]["epoch"] == best["epoch"]
    assert result["selection"]["clean_val"]["selected_on"] == "clean validation"
    selected = torch.load(run / "selected.pt", weights_only=True)
    assert selected["epoch"] == best["epoch"] and selected["rule"] == "clean_val"

    lay.animal10n(tmp_path / "a")
    out = tmp_path / "out2"
    proc = cli(*_args("animal10n", tmp_path / "a", "selection=clean_val", f"out_dir={out}"),
               base=())  # fmt: skip
    assert proc.returncode == 2
    assert "selection=clean_val needs a dataset with clean validation labels" in error_line(
        proc.stderr
    )
    assert not list(out.rglob("result.json")) if out.exists() else True


def test_report_shows_the_second_test_set_at_the_clean_val_epoch(tmp_path: Path, capsys) -> None:
    """The report's ``imagenet_acc`` column reads ``test_imagenet/acc`` at the epoch each rule
    selects: 40 % at epoch 1 (highest val/clean_acc), 30 % at the last epoch."""
    import json

    from noisybench.report import main

    history = [
        {"epoch": 1, "test/acc": 0.5, "test_imagenet/acc": 0.40, "val/clean_acc": 0.7},
        {"epoch": 2, "test/acc": 0.6, "test_imagenet/acc": 0.30, "val/clean_acc": 0.6},
    ]
    config = {
        "seed": 0,
        "epochs": 2,
        "dataset": {"name": "webvision_mini"},
        "model": {"name": "tv_resnet50"},
        "noise": {"name": "none", "variant": "none", "rate": 0.0, "setting": "none", "seed": 0},
        "method": {"name": "ce"},
    }
    body = {
        "status": "finished",
        "config": config,
        "seeds": {"train": 0, "noise": 0},
        "noise": {"realised_rate": 0.0},
        "history": history,
        "selection_rule": "clean_val",
    }
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text(json.dumps(body))
    assert main([str(tmp_path), "--metrics", "imagenet_acc", "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    (row,) = [r for r in table["rows"] if r["source"] == "ours"]
    cells = {key.rsplit("|", 1)[-1]: cell for key, cell in row["cells"].items()}
    assert cells["clean_val"]["mean"] == pytest.approx(40.0)
    assert cells["last"]["mean"] == pytest.approx(30.0)


def _write_run(root: Path, dataset: str, model: str, history: list[dict]) -> None:
    import json

    body = {
        "status": "finished",
        "config": {
            "seed": 0,
            "epochs": len(history),
            "dataset": {"name": dataset},
            "model": {"name": model},
            "noise": {"name": "none", "variant": "none", "rate": 0.0, "setting": "none", "seed": 0},
            "method": {"name": "dividemix"},
        },
        "seeds": {"train": 0, "noise": 0},
        "noise": {"realised_rate": 0.0},
        "history": history,
    }
    (root / dataset).mkdir(parents=True)
    (root / dataset / "result.json").write_text(json.dumps(body))


def test_published_real_noise_numbers_stand_beside_the_same_network_only(
    tmp_path: Path, capsys
) -> None:
    """DivideMix's Clothing1M number (74.76, ResNet-50) stands in the row of a Clothing1M
    DivideMix run with torchvision's ResNet-50, its note names DivideMix (not the BSD paper);
    its mini-WebVision numbers (77.32 and 75.2, Inception-ResNet-v2) never stand beside a
    ResNet-50 run: they are a separate reference row."""
    import json

    from noisybench.report import main

    _write_run(tmp_path / "c", "clothing1m", "tv_resnet50",
               [{"epoch": 1, "test/acc": 0.70, "val/clean_acc": 0.71}])  # fmt: skip
    assert main([str(tmp_path / "c"), "--table", "real_clothing1m", "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    (ours,) = [r for r in table["rows"] if r["source"] == "ours"]
    paper = {c["key"] for c in table["columns"] if c["selection"] == "paper"}
    assert [c["mean"] for k, c in ours["cells"].items() if k in paper] == [74.76]
    (note,) = [n for n in table["notes"] if n.startswith("paper:")]
    assert "DivideMix (Li et al. 2020)" in note and "BSD paper" not in note

    _write_run(tmp_path / "w", "webvision_mini", "tv_resnet50",
               [{"epoch": 1, "test/acc": 0.6, "test_imagenet/acc": 0.5}])  # fmt: skip
    assert main([str(tmp_path / "w"), "--table", "real_webvision", "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)
    (ours,) = [r for r in table["rows"] if r["source"] == "ours"]
    paper = {c["key"] for c in table["columns"] if c["selection"] == "paper"}
    assert all(ours["cells"].get(k) is None for k in paper)
    refs = [r for r in table["rows"] if r["source"] != "ours"]
    values = sorted(c["mean"] for r in refs for c in r["cells"].values() if c)
    assert values == [75.2, 77.32]
