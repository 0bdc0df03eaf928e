"""The report's labels, counts and output safety (issue 22 item 4, issue 20 item 8).

Every expected number here is worked out by hand (or with numpy) from the histories written
by the test, never read back from the report's own helpers.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from noisybench.report import main


def _config(
    method: str = "ce",
    noise: str = "sym50",
    seed: int = 0,
    *,
    dataset: str = "digits",
    model: str = "small_cnn",
    rate: float | None = None,
    variant: str = "sym_incl",
    label_file: str | None = None,
    **method_keys: object,
) -> dict:
    rates = {"sym20": 0.2, "sym50": 0.5, "sym80": 0.8, "asym40": 0.4, "none": 0.0}
    setting = {"none": "none"}.get(noise, "asym" if noise.startswith("asym") else "sym")
    if noise == "none":
        variant = "none"
    elif noise.startswith("asym"):
        variant = "asym"
    return {
        "seed": seed,
        "epochs": 4,
        "out_dir": "/somewhere",
        "run_name": f"{noise}/{method}/seed{seed}",
        "dataset": {"name": dataset},
        "model": {"name": model},
        "noise": {
            "name": noise,
            "variant": variant,
            "rate": rates[noise] if rate is None else rate,
            "setting": setting,
            "seed": seed,
            "asym_map": None,
            "label_file": label_file,
        },
        "method": {"name": method, **method_keys},
    }


def _write(
    root: Path,
    config: dict,
    accs: list[float],
    status: str = "finished",
    realised: float | None = None,
    name: str | None = None,
) -> Path:
    run = root / (name or f"run{len(list(root.rglob('result.json')))}")
    run.mkdir(parents=True)
    history = [{"epoch": e + 1, "test/acc": a, "test/ece": 0.05} for e, a in enumerate(accs)]
    noise = {"realised_rate": realised if realised is not None else config["noise"]["rate"]}
    body = {
        "status": status,
        "config": config,
        "seeds": {"train": config["seed"], "noise": config["noise"]["seed"]},
        "noise": noise,
        "history": history,
    }
    (run / "result.json").write_text(json.dumps(body))
    return run


def _json(capsys, *argv: str) -> dict:
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _ours(table: dict) -> list[dict]:
    return [r for r in table["rows"] if r["source"] == "ours"]


def _paper_cells(row: dict, table: dict) -> list[dict]:
    paper_keys = {c["key"] for c in table["columns"] if c["selection"] == "paper"}
    return [cell for key, cell in row["cells"].items() if key in paper_keys]


# ------------------------------------------------------------------ unfinished-only folders
def test_unfinished_only_folder_is_one_line(tmp_path: Path, capsys) -> None:
    _write(tmp_path, _config("ce", seed=0), [0.5, 0.6], status="running")
    _write(tmp_path, _config("bsd", seed=0), [0.4], status="interrupted")
    assert main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "no finished run" in lines[0] and "2 unfinished" in lines[0]
    assert "--include-unfinished" in lines[0]


# ------------------------------------------------------------------ damaged evaluation.json
@pytest.mark.parametrize(
    "epoch, value",
    [
        ("4", "1e308"),  # 100 x 1e308 overflows to inf
        ("4", "1" + "0" * 400),  # an integer too large for a float
        ("1e308", "0.01"),
        ("1" + "0" * 400, "0.01"),
        ('"abc"', "0.01"),
        ("[4]", "0.01"),
        ("4", '"x"'),
    ],
)
def test_damaged_evaluation_json_is_ignored_with_a_line(
    tmp_path: Path, capsys, epoch: str, value: str
) -> None:
    for seed in (0, 1):
        run = _write(tmp_path, _config("ce", seed=seed), [0.5, 0.6, 0.7, 0.8])
        (run / "evaluation.json").write_text(
            f'{{"checkpoint_epoch": {epoch}, "metrics": {{"calibration/sce": {value}}}}}'
        )
    assert main([str(tmp_path), "--table", "table7", "--format", "json"]) == 0
    captured = capsys.readouterr()
    table = json.loads(captured.out)
    (row,) = _ours(table)
    # The accuracy (from the history) is still there: mean of 80 and 80.
    acc = [cell for key, cell in row["cells"].items() if key.endswith("|acc|last")]
    assert acc and acc[0]["mean"] == pytest.approx(80.0)
    # No SCE number came out of a damaged file.
    assert not any(key.endswith("|sce|last") for key in row["cells"])
    assert "evaluation.json" in captured.err


def test_evaluation_json_not_an_object(tmp_path: Path, capsys) -> None:
    run = _write(tmp_path, _config("ce"), [0.5, 0.6])
    (run / "evaluation.json").write_text("[1, 2]")
    assert main([str(tmp_path), "--table", "table7"]) == 0
    assert "evaluation.json" in capsys.readouterr().err


# ------------------------------------------------------------------ terminal escapes
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202e"


def test_control_characters_from_foreign_files_are_not_printed(tmp_path: Path, capsys) -> None:
    _write(tmp_path, _config("ce" + ESCAPES, seed=0), [0.5, 0.6])
    _write(tmp_path, _config("bsd", seed=0), [0.5, 0.6], status="running", name="r\x1b[31mx")
    for fmt in ("md", "csv", "latex", "json"):
        assert main([str(tmp_path), "--format", fmt, "--table", "table4"]) == 0
        captured = capsys.readouterr()
        for text in (captured.out, captured.err):
            bad = [c for c in text if c not in "\n\t" and (ord(c) < 32 or 127 <= ord(c) < 160)]
            assert not bad, (fmt, bad)
            assert "\u202e" not in text
        # The name stays recognisable (escaped, not dropped).
        assert "ce" in captured.out and "1b" in captured.out


# ------------------------------------------------------------------ LaTeX escaping
SAFE_TEX = (
    r"\textbackslash{}",
    r"\textasciicircum{}",
    r"\textasciitilde{}",
    r"\_",
    r"\%",
    r"\&",
    r"\#",
    r"\$",
    r"\{",
    r"\}",
    r"$\pm$",
    r"$\cdot$",
    r"\textbf{",
)


def test_latex_escaping_defeats_caret_notation(tmp_path: Path, capsys) -> None:
    # ^^5c is TeX's notation for a backslash: "^^5cinput{...}" is \input{...} once compiled.
    evil = ["a^^5cinput{/etc/passwd}", "b\\input{x}~{}", "c^^M^^5c^^5c"]
    for i, name in enumerate(evil):
        _write(tmp_path, _config(name, seed=i), [0.5, 0.6])
    assert main([str(tmp_path), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")]
    for line in body.splitlines()[1:]:
        stripped = line.rstrip()
        stripped = stripped[: -len("\\\\")] if stripped.endswith("\\\\") else stripped
        for macro in SAFE_TEX:
            stripped = stripped.replace(macro, "")
        # What is left has no command, no superscript character, no active tilde, no group.
        assert not re.search(r"[\\^~]", stripped), line
    assert "^^" not in tex


# ------------------------------------------------------------------ realised settings
def test_rate_override_is_not_labelled_by_the_config_name(tmp_path: Path, capsys) -> None:
    # noise=sym50 noise.rate=0.35: not the paper's 50 % column, and the label says 0.35.
    cfg = _config("ce", "sym50", 0, dataset="cifar10", model="resnet18", rate=0.35)
    _write(tmp_path, cfg, [0.5, 0.6])
    table = _json(capsys, str(tmp_path), "--table", "table4")
    labels = [c["label"] for c in table["columns"] if c["selection"] != "paper"]
    assert labels and all("0.35" in x and not x.startswith("sym50") for x in labels), labels
    (row,) = _ours(table)
    assert _paper_cells(row, table) == []


def test_rate_override_that_equals_a_shipped_setting_is_named_by_it(tmp_path: Path, capsys) -> None:
    # noise=sym50 noise.rate=0.2 is exactly conf/noise/sym20.yaml (sym_incl, 0.2).
    cfg = _config("ce", "sym50", 0, dataset="cifar10", model="resnet18", rate=0.2)
    _write(tmp_path, cfg, [0.5, 0.6])
    table = _json(capsys, str(tmp_path), "--table", "table4")
    ours = [c for c in table["columns"] if c["selection"] == "last"]
    assert [c["label"].split(" ")[0] for c in ours] == ["sym20"]
    (row,) = _ours(table)
    # The paper's CE sym20 (ResNet-18 on CIFAR-10): 86.76 ± 0.37, read off Table 4.
    assert [c["mean"] for c in _paper_cells(row, table)] == [86.76]


def test_label_file_names_the_file_and_realised_rate(tmp_path: Path, capsys) -> None:
    cfg = _config("ce", "none", 0, label_file="/data/c10_worse_labels.npy")
    _write(tmp_path, cfg, [0.5, 0.6], realised=0.4521)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [x for x in out.splitlines() if x.startswith("| digits")]
    assert "c10_worse_labels.npy" in row and "45.2" in row
    assert "/ none" not in row


# ------------------------------------------------------------------ the paper's column
def test_paper_column_needs_dataset_model_and_setting(tmp_path: Path, capsys) -> None:
    _write(tmp_path, _config("ce", "sym50", 0), [0.5, 0.6])  # digits / small_cnn
    table = _json(capsys, str(tmp_path), "--table", "table4")
    (row,) = _ours(table)
    assert _paper_cells(row, table) == []
    # The paper's number is still shown, as a separate reference row.
    refs = [r for r in table["rows"] if r["source"] == "paper"]
    assert any("resnet18" in r["label"] and "ce" in r["label"] for r in refs)


def test_paper_column_needs_the_papers_hyperparameters(tmp_path: Path, capsys) -> None:
    paper = {"gamma": 0.85, "c": 2000.0, "eps": 0.0, "tau": 0.8}  # Appendix A.1, sym noise
    _write(
        tmp_path,
        _config("bsd", "sym50", 0, dataset="cifar10", model="resnet18", **{**paper, "gamma": 0.8}),
        [0.5, 0.6],
    )
    _write(
        tmp_path,
        _config("bsd", "sym50", 0, dataset="cifar10", model="resnet18", **paper),
        [0.5, 0.7],
    )
    table = _json(capsys, str(tmp_path), "--table", "table4")
    by_label = {r["label"]: r for r in _ours(table)}
    assert set(by_label) == {"bsd (method.gamma=0.8)", "bsd (method.gamma=0.85)"}
    assert _paper_cells(by_label["bsd (method.gamma=0.8)"], table) == []
    # BSD sym50 in Table 4: 90.71 ± 0.26.
    assert [c["mean"] for c in _paper_cells(by_label["bsd (method.gamma=0.85)"], table)] == [90.71]


def test_table7_is_cifar100_wide_resnet_only(tmp_path: Path, capsys) -> None:
    _write(tmp_path, _config("ce", "sym50", 0), [0.5, 0.6])
    table = _json(capsys, str(tmp_path), "--table", "table7")
    (row,) = _ours(table)
    assert _paper_cells(row, table) == []


# ------------------------------------------------------------------ counted once
def test_a_run_in_two_folders_is_counted_once(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run = _write(a, _config("ce", "sym50", 0), [0.5, 0.6])
    _write(a, _config("ce", "sym50", 1), [0.5, 0.8])
    shutil.copytree(run, b / "copy")
    table = _json(capsys, str(a), str(b))
    (row,) = _ours(table)
    (cell,) = [c for k, c in row["cells"].items() if k.endswith("|acc|last")]
    assert cell["n"] == 2
    assert cell["mean"] == pytest.approx(70.0)
    assert cell["std"] == pytest.approx(float(np.std([60.0, 80.0], ddof=1)))
    main([str(a), str(b)])
    err = capsys.readouterr().err
    assert "counted once" in err and "copy" in err
    # The same folder given twice is the same file: no warning.
    main([str(a), str(a)])
    assert "counted once" not in capsys.readouterr().err


# ------------------------------------------------------------------ columns
def test_metrics_option_picks_columns(tmp_path: Path, capsys) -> None:
    _write(tmp_path, _config("ce"), [0.5, 0.6])
    table = _json(capsys, str(tmp_path), "--metrics", "ece")
    assert {c["metric"] for c in table["columns"]} == {"ece"}
    (row,) = _ours(table)
    (cell,) = [c for k, c in row["cells"].items() if k.endswith("|ece|last")]
    assert cell["mean"] == pytest.approx(5.0)
    assert main([str(tmp_path), "--metrics", "acc,accuracy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accuracy" in err[0] and "acc" in err[0]


def test_default_table_is_narrow(tmp_path: Path, capsys) -> None:
    for method in ("ce", "bsd", "bsdplus", "sce"):
        for seed in (0, 1, 2):
            _write(tmp_path, _config(method, "sym50", seed), [0.5, 0.6 + seed / 100])
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table_lines = [x for x in out.splitlines() if x.startswith("|")]
    assert len(table_lines[0].split("|")) - 2 <= 4  # row label + at most 3 columns
    assert max(len(x) for x in table_lines) <= 120


# ------------------------------------------------------------------ per-seed values
def test_per_seed_values_in_csv_and_json(tmp_path: Path, capsys) -> None:
    lasts = {3: 0.61, 1: 0.72, 2: 0.55}
    for seed, last in lasts.items():
        _write(tmp_path, _config("ce", "sym50", seed), [0.5, last])
    table = _json(capsys, str(tmp_path))
    (row,) = _ours(table)
    (cell,) = [c for k, c in row["cells"].items() if k.endswith("|acc|last")]
    assert cell["seeds"] == [1, 2, 3]
    assert cell["values"] == pytest.approx([72.0, 55.0, 61.0])
    assert main([str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (last,) = [r for r in rows if r["selection"] == "last"]
    assert last["seeds"] == "1;2;3"
    assert [float(v) for v in last["values"].split(";")] == pytest.approx([72.0, 55.0, 61.0])


# ------------------------------------------------------------------ the headline column
def test_the_runs_selection_rule_is_the_first_column(tmp_path: Path, capsys) -> None:
    run = _write(tmp_path, _config("ce"), [0.5, 0.9, 0.6])
    body = json.loads((run / "result.json").read_text())
    for record, val in zip(body["history"], (0.2, 0.3, 0.1), strict=True):
        record["val/acc"] = val
    body["selection_rule"] = "noisy_val"
    (run / "result.json").write_text(json.dumps(body))
    table = _json(capsys, str(tmp_path))
    first = table["columns"][0]
    assert first["selection"] == "noisy_val" and "noisy val" in first["label"]
    (row,) = _ours(table)
    assert row["cells"][first["key"]]["mean"] == pytest.approx(90.0)  # epoch 2 (val 0.3)
