"""The report against numbers computed by hand in the tests (numpy, ddof=1), in every format."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from noisybench.report import collect, load_paper_tables, load_results, main

ROOT = Path(__file__).resolve().parents[1]


def _config(
    method: str,
    noise: str,
    seed: int,
    dataset: str = "digits",
    model: str = "small_cnn",
    **method_keys,
) -> dict:
    return {
        "seed": seed,
        "epochs": 4,
        "out_dir": "/somewhere",
        "run_name": f"{noise}/{method}/seed{seed}",
        "progress": False,
        "dataset": {"name": dataset, "reader": {"root": "/data"}},
        "model": {"name": model, "width": 32},
        "noise": {"name": noise, "rate": 0.5 if noise == "sym50" else 0.4, "seed": seed},
        "method": {"name": method, **method_keys},
    }


def _write(root: Path, config: dict, accs: list[float], status: str = "finished", **extra) -> Path:
    """A result.json with a history of the given per-epoch test accuracies."""
    run = root / f"run{len(list(root.rglob('result.json')))}"
    run.mkdir(parents=True)
    history = [
        {"epoch": e + 1, "test/acc": a, "test/ece": 0.1 * (e + 1), "test/nll": 1.0 / (e + 1)}
        for e, a in enumerate(accs)
    ]
    for key, values in extra.items():
        for record, value in zip(history, values, strict=True):
            record[key.replace("__", "/")] = value
    body = {
        "status": status,
        "config": config,
        "seeds": {"train": config["seed"], "noise": config["noise"]["seed"]},
        "history": history,
    }
    (run / "result.json").write_text(json.dumps(body))
    return run


CE_SYM50 = {0: [0.5, 0.9, 0.8, 0.7], 1: [0.6, 0.85, 0.9, 0.75], 2: [0.55, 0.95, 0.7, 0.72]}
BSD_SYM50 = {0: [0.6, 0.8, 0.9, 0.92], 1: [0.7, 0.85, 0.88, 0.86]}
CE_ASYM40 = {0: [0.4, 0.6, 0.5, 0.45]}


# The paper's setting of Table 4's top half (CIFAR-10, ResNet-18) and BSD's hyperparameters
# for symmetric noise (Appendix A.1): only then does the paper's number stand beside ours.
C10 = {"dataset": "cifar10", "model": "resnet18"}
BSD_SYM = {"gamma": 0.85, "c": 2000.0, "eps": 0.0, "tau": 0.8}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for seed, accs in CE_SYM50.items():
        _write(tmp_path, _config("ce", "sym50", seed, **C10), accs)
    for seed, accs in BSD_SYM50.items():
        _write(tmp_path, _config("bsd", "sym50", seed, **C10, **BSD_SYM), accs)
    for seed, accs in CE_ASYM40.items():
        _write(tmp_path, _config("ce", "asym40", seed, **C10), accs)
    _write(tmp_path, _config("bsd", "asym40", 5, gamma=0.9), [0.1, 0.2], status="running")
    return tmp_path


def _hand(histories: dict[int, list[float]], rule: str) -> tuple[float, float | None, int]:
    pick = {"last": lambda h: h[-1], "best_test": max}[rule]
    values = np.array([100 * pick(h) for h in histories.values()])
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std, len(values)


def _run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _cell(table: dict, row: str, column_part: str, selection: str) -> dict:
    (row_obj,) = [r for r in table["rows"] if r["label"] == row]
    cols = [
        c for c in table["columns"] if column_part in c["label"] and c["selection"] == selection
    ]
    assert len(cols) == 1, [c["label"] for c in table["columns"]]
    return row_obj["cells"][cols[0]["key"]]


def test_table4_means_stds_n_bold_and_paper(runs: Path, capsys) -> None:
    table = _run_json(capsys, str(runs), "--table", "table4")
    for method, hist in (("ce", CE_SYM50), ("bsd", BSD_SYM50)):
        for rule in ("last", "best_test"):
            mean, std, n = _hand(hist, rule)
            cell = _cell(table, method, "sym50", rule)
            assert cell["mean"] == pytest.approx(mean)
            assert cell["std"] == pytest.approx(std)
            assert cell["n"] == n
    # One seed: no std at all.
    single = _cell(table, "ce", "asym40", "last")
    assert single["mean"] == pytest.approx(45.0) and single["std"] is None and single["n"] == 1
    # Bold: bsd's last-epoch mean (89.0) beats ce's (72.33); ce's best (91.67) beats bsd's (89).
    assert _cell(table, "bsd", "sym50", "last")["bold"] is True
    assert _cell(table, "ce", "sym50", "last")["bold"] is False
    assert _cell(table, "ce", "sym50", "best_test")["bold"] is True
    assert _cell(table, "ce", "asym40", "last")["bold"] is False  # alone in its column
    # The paper's numbers beside ours (read off Table 4 by hand): Baseline sym50 81.49 ± 0.26,
    # BSD sym50 90.71 ± 0.26; BSD+ asym40 95.6 ± 0.25 bold as a reference row.
    assert _cell(table, "ce", "sym50", "paper")["mean"] == 81.49
    assert _cell(table, "bsd", "sym50", "paper")["std"] == 0.26
    bsdplus = "paper: cifar10 / preact_resnet18_dividemix / bsdplus / sota"
    ref = _cell(table, bsdplus, "asym40", "paper")
    assert ref == {"mean": 95.6, "std": 0.25, "n": None, "bold": True, "paper": True}
    # Every header names its selection rule; the running run is left out.
    labels = [c["label"] for c in table["columns"]]
    assert all(("last epoch" in x) or ("test set" in x) or ("paper" in x) for x in labels)
    assert "running" not in json.dumps(table["rows"])


def test_markdown_shows_bold_n_and_no_fake_std(runs: Path, capsys) -> None:
    assert main([str(runs), "--table", "table4"]) == 0
    out = capsys.readouterr().out
    (ce_row,) = [line for line in out.splitlines() if line.startswith("| ce |")]
    cells = [c.strip() for c in ce_row.strip("|").split("|")]
    mean, std, _ = _hand(CE_SYM50, "last")
    assert cells[1] == f"{mean:.2f} ± {std:.2f} (n=3)"
    best, best_std, _ = _hand(CE_SYM50, "best_test")
    assert cells[2] == f"**{best:.2f}** ± {best_std:.2f} (n=3)"
    assert cells[4] == "45.00 (n=1)"  # asym40, one seed: no ±
    assert "1 unfinished run(s)" in out


def test_csv_and_latex_parse_back(runs: Path, capsys) -> None:
    table = _run_json(capsys, str(runs), "--table", "table4")
    assert main([str(runs), "--table", "table4", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    n_cells = sum(len(r["cells"]) for r in table["rows"])
    assert len(rows) == n_cells
    (ce_last,) = [
        r for r in rows if r["row"] == "ce" and r["selection"] == "last" and "sym50" in r["column"]
    ]
    mean, std, n = _hand(CE_SYM50, "last")
    assert float(ce_last["mean"]) == pytest.approx(mean, rel=1e-5)
    assert float(ce_last["std"]) == pytest.approx(std, rel=1e-5)
    assert int(ce_last["n"]) == n and ce_last["bold"] == "0"

    assert main([str(runs), "--table", "table4", "--format", "latex"]) == 0
    tex = capsys.readouterr().out.splitlines()
    body = tex[tex.index("\\midrule") + 1 : tex.index("\\bottomrule")]
    assert len(body) == len(table["rows"])
    for line in body:
        assert line.endswith(" \\\\")
        assert len(line[:-3].split(" & ")) == len(table["columns"]) + 1
    bsd = next(line for line in body if line.startswith("bsd &")).split(" & ")
    assert bsd[1].startswith("\\textbf{89.00}") and "$\\pm$" in bsd[1]


def test_identity_grouping_and_readable_labels(tmp_path: Path, capsys) -> None:
    # Same experiment: differing only in seeds, run_name, out_dir, progress, data root.
    a = _config("bsd", "sym50", 0, gamma=0.9)
    b = _config("bsd", "sym50", 1, gamma=0.9)
    b["out_dir"], b["progress"], b["dataset"]["reader"]["root"] = "/elsewhere", True, "/d2"
    _write(tmp_path, a, [0.5, 0.6])
    _write(tmp_path, b, [0.7, 0.8])
    # Other experiments: another gamma, more epochs.
    _write(tmp_path, _config("bsd", "sym50", 0, gamma=0.5), [0.1, 0.2])
    c = _config("bsd", "sym50", 0, gamma=0.9)
    c["epochs"] = 9
    _write(tmp_path, c, [0.3, 0.4])
    groups = collect(load_results([tmp_path]))
    assert sorted(len(g.runs) for g in groups) == [1, 1, 2]
    table = _run_json(capsys, str(tmp_path), "--table", "table4")
    labels = sorted(r["label"] for r in table["rows"] if r["source"] == "ours")
    assert labels == [
        "bsd (epochs=4, method.gamma=0.5)",
        "bsd (epochs=4, method.gamma=0.9)",
        "bsd (epochs=9, method.gamma=0.9)",
    ]
    cell = _cell(table, "bsd (epochs=4, method.gamma=0.9)", "sym50", "last")
    assert cell["mean"] == pytest.approx(70.0) and cell["n"] == 2
    assert cell["std"] == pytest.approx(float(np.std([60.0, 80.0], ddof=1)))


def test_noisy_validation_rule_and_evaluation_json(tmp_path: Path, capsys) -> None:
    accs = [0.5, 0.9, 0.6, 0.7]
    val = [0.3, 0.2, 0.6, 0.4]  # noisy validation picks epoch 3 -> test acc 0.6
    run = _write(tmp_path, _config("ce", "sym50", 0), accs, val__acc=val)
    table = _run_json(capsys, str(tmp_path), "--table", "table4")
    cell = _cell(table, "ce", "sym50", "noisy_val")
    assert cell["mean"] == pytest.approx(60.0) and cell["std"] is None
    assert any("noisy val" in c["label"] for c in table["columns"])
    # Table 7 takes SCE / ACE of the final checkpoint from evaluation.json ...
    ev = {"checkpoint_epoch": 4, "metrics": {"calibration/sce": 0.0123, "calibration/ace": 0.2}}
    (run / "evaluation.json").write_text(json.dumps(ev))
    table = _run_json(capsys, str(tmp_path), "--table", "table7", "--select", "last")
    assert _cell(table, "digits / small_cnn / sym50 / ce", "SCE", "last")["mean"] == 1.23
    # The paper's Table 7 is WideResNet-40-1 on clean CIFAR-100: a reference row, not a
    # number beside a digits run (Baseline (NLL) SCE 0.30).
    ours = next(r for r in table["rows"] if r["source"] == "ours")
    assert not [k for k in ours["cells"] if k.endswith("|paper")]
    assert _cell(table, "paper: Baseline (NLL)", "SCE", "paper")["mean"] == 0.30
    # ... but not when it evaluated another epoch's checkpoint.
    ev["checkpoint_epoch"] = 2
    (run / "evaluation.json").write_text(json.dumps(ev))
    table = _run_json(capsys, str(tmp_path), "--table", "table7", "--select", "last")
    (row,) = [r for r in table["rows"] if r["source"] == "ours"]
    assert not any("SCE" in k for k in row["cells"] if "last" in k)
    assert all("|sce|last" not in k for k in row["cells"])
    # An evaluation of the selected epoch's weights (noisybench evaluate's default,
    # selected.pt at epoch 3 = the noisy_val epoch) is that rule's number, not the last's.
    ev["checkpoint_epoch"] = 3
    (run / "evaluation.json").write_text(json.dumps(ev))
    table = _run_json(capsys, str(tmp_path), "--table", "table7", "--select", "noisy_val,last")
    assert _cell(table, "digits / small_cnn / sym50 / ce", "SCE", "noisy_val")["mean"] == 1.23
    (row,) = [r for r in table["rows"] if r["source"] == "ours"]
    assert all("|sce|last" not in k for k in row["cells"])


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no result.json" in err[0]
    _write(tmp_path, _config("ce", "sym50", 0), [0.5])
    assert main([str(tmp_path), "--select", "last,best_val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown selection rule 'best_val'" in err[0]


def _pipe_into_head(argv: list[str]) -> tuple[str, int, str]:
    """Run ``argv | head -1`` with a 4 KiB pipe (Linux's F_SETPIPE_SZ), so the writer is
    still writing when head exits; returns head's output, the writer's status and stderr."""
    import fcntl

    r, w = os.pipe()
    fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    head = subprocess.Popen(["head", "-1"], stdin=r, stdout=subprocess.PIPE, text=True)
    writer = subprocess.Popen(argv, stdout=w, stderr=subprocess.PIPE, text=True, env=env)
    os.close(r)
    os.close(w)
    out = head.communicate(timeout=60)[0]
    err = writer.communicate(timeout=60)[1]
    return out, writer.returncode, err


@pytest.mark.cli
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    for i in range(100):  # about 70 kB of JSON, far beyond the 4 KiB pipe
        _write(tmp_path, _config("bsd", "sym50", 0, gamma=i / 1000), [0.5, 0.6])
    # The harness does catch a writer that does not handle the closed pipe:
    plain = [sys.executable, "-c", "print('x\\n' * 100000)"]
    _, _, err = _pipe_into_head(plain)
    assert "BrokenPipeError" in err
    out, status, err = _pipe_into_head(
        [sys.executable, "-m", "noisybench.report", str(tmp_path), "--format", "json"]
    )
    assert out == "{\n"
    assert err == ""
    assert status == 141  # as a writer killed by SIGPIPE would end


def test_paper_tables_file() -> None:
    tables = load_paper_tables()
    expected = {
        "table1": 70,  # 10 rows x 7 methods
        "table2": 30,  # 3 models x 2 metrics x 5 methods
        "table3": 30,  # 3 models x 2 metrics x 5 methods
        "table4": 56,  # 10 methods x 6 noise levels, minus OT-Filter's and CSOT's 4 dashes
        "table5": 54,  # 9 rows x 2 augmentations x 3 methods
        "table6": 30,  # 6 rows x 5 methods
        "table7": 84,  # 21 rows x 4 metrics
        "ref_dividemix": 6,  # DivideMix Table 1 "Best": CIFAR-10 sym 20-90 %, CIFAR-100 80/90 %
        "ref_elr": 10,  # ELR README: 2 datasets x (4 sym + 1 asym)
        "ref_pskd": 1,  # PS-KD README: CIFAR-100 PreAct ResNet-18
        "ref_ls": 1,  # PS-KD README: its label-smoothing row
        "ref_dulc": 14,  # DULC Table 2: 2 datasets x (4 sym + 3 asym)
        "ref_otfilter": 4,  # BSD Table 4's OT-Filter row: CIFAR-10 sym 20/50/80 %, asym 40 %
        "ref_csot": 4,  # BSD Table 4 quoting CSOT: CIFAR-10 sym 20 / 50 / 80 %, asym 40 %
        "real_clothing1m": 1,  # DivideMix Table 4: Clothing1M, ResNet-50
        "real_webvision": 2,  # DivideMix Table 6: WebVision and ILSVRC12 top-1
    }
    assert {t: len(v["entries"]) for t, v in tables.items()} == expected
    for name, table in tables.items():
        assert table["metrics"] and table["title"]
        for e in table["entries"]:
            assert e["table"] == name
            assert {"dataset", "model", "noise", "method", "metric", "value"} <= e.keys()
            assert e["metric"] in table["metrics"]
            assert isinstance(e["value"], float)

    def one(table: str, **keys) -> dict:
        hits = [e for e in tables[table]["entries"] if all(e.get(k) == v for k, v in keys.items())]
        assert len(hits) == 1, (table, keys, hits)
        return hits[0]

    # Read off the paper's text by hand.
    e = one("table1", dataset="cifar100", model="resnet50", method="bsd")
    assert (e["value"], e["std"], e.get("bold")) == (79.09, 0.11, True)
    assert one("table1", dataset="imagenet", method="ensemble")["value"] == 80.24
    e = one("table2", model="vit_b16", metric="nll", method="pskd")
    assert (e["value"], e["std"]) == (0.44, 0.01)
    e = one("table3", model="densenet121", metric="cifar10p_mfp", method="dlb")
    assert (e["value"], e["std"]) == (7.06, 0.22)
    e = one("table4", method="sce", noise="asym40")
    assert (e["value"], e["std"]) == (80.57, 0.07)
    e = one("table4", method="dulc", noise="asym10")
    assert e["value"] == 96.7 and "std" not in e and e["section"] == "sota"
    assert not [
        x
        for x in tables["table4"]["entries"]
        if x["method"] == "otfilter" and x["noise"] in ("asym10", "asym30")
    ]
    e = one(
        "table5", dataset="tinyimagenet", model="densenet201", augmentation="cutmix", method="dlb"
    )
    assert (e["value"], e["std"]) == (69.22, 0.48)
    e = one("table6", dataset="cifar100", model="densenet169", method="te")
    assert (e["value"], e["std"]) == (68.97, 6.85)
    assert one("table7", method="kd_mdca", metric="ece")["value"] == 0.98
    e = [
        x
        for x in tables["table7"]["entries"]
        if x.get("hparams") == {"gamma": 0.95, "c": 4000} and x["metric"] == "acc"
    ]
    assert len(e) == 1 and (e[0]["value"], e[0]["std"], e[0]["bold"]) == (72.79, 0.45, True)


def test_table2_methods_as_columns_bold_the_lower_error_per_row(tmp_path: Path, capsys) -> None:
    # ECE: ce 30 % and 20 %, bsd 5 %: bsd is best. NLL: ce 0.5, bsd 0.9: ce is best.
    for seed, ece in ((0, 0.3), (1, 0.2)):
        _write(
            tmp_path,
            _config("ce", "sym50", seed),
            [0.5, 0.6],
            test__ece=[0.9, ece],
            test__nll=[1.0, 0.5],
        )
    _write(
        tmp_path,
        _config("bsd", "sym50", 0),
        [0.5, 0.9],
        test__ece=[0.9, 0.05],
        test__nll=[1.0, 0.9],
    )
    table = _run_json(capsys, str(tmp_path), "--table", "table2")
    ece_row = "digits / small_cnn · ECE (%)"
    ce = _cell(table, ece_row, "ce", "last")
    assert ce["mean"] == pytest.approx(25.0) and ce["n"] == 2
    assert ce["std"] == pytest.approx(float(np.std([30.0, 20.0], ddof=1)))
    assert ce["bold"] is False and _cell(table, ece_row, "bsd", "last")["bold"] is True
    nll_row = "digits / small_cnn · NLL"
    assert _cell(table, nll_row, "ce", "last")["mean"] == pytest.approx(0.5)  # NLL unscaled
    assert _cell(table, nll_row, "ce", "last")["bold"] is True
    assert _cell(table, nll_row, "bsd", "last")["bold"] is False
    # The paper's CIFAR-100 rows are reference rows: BSD's ResNet-50 ECE 7.17 ± 0.40, bold.
    ref = _cell(table, "paper: cifar100 / resnet50 · ECE (%)", "bsd", "paper")
    assert (ref["mean"], ref["std"], ref["bold"]) == (7.17, 0.4, True)


def test_kd_students_grouped_and_labelled_by_teacher_kind(tmp_path: Path, capsys) -> None:
    """Issue 22 / 27: KD rows name their teacher's kind (method.teacher.kind); a KD run
    without it is the ensemble teacher (conf/teacher/ensemble.yaml: store false, seed 0) and
    shares a row with +teacher=ensemble runs; a kind's own settings are not listed."""
    kd = {"T": 3.0, "beta": 0.9, "seed_keys": ["teacher_runs"]}
    ens = {"kind": "ensemble", "store": False, "seed": 0}
    swag = {"kind": "swag", "samples": 30, "scale": 0.5, "store": True, "seed": 0}
    accs = {  # seed -> (teacher node or None, last-epoch accuracy)
        0: (None, 0.60),
        1: (None, 0.70),
        2: (ens, 0.80),
        3: (swag, 0.50),
        4: (swag, 0.55),
    }
    for seed, (teacher, acc) in accs.items():
        extra = {} if teacher is None else {"teacher": teacher}
        config = _config("kd", "sym50", seed, teacher_runs=[f"/t/{seed}"], **kd, **extra)
        _write(tmp_path, config, [0.1, acc])
    _write(tmp_path, _config("ce", "sym50", 0), [0.2, 0.4])
    table = _run_json(capsys, str(tmp_path), "--table", "table4", "--select", "last")
    labels = sorted(r["label"] for r in table["rows"] if r["source"] == "ours")
    assert labels == ["ce", "kd [ensemble]", "kd [swag]"]
    cell = _cell(table, "kd [ensemble]", "sym50", "last")
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(70.0)
    assert cell["std"] == pytest.approx(float(np.std([60.0, 70.0, 80.0], ddof=1)))
    cell = _cell(table, "kd [swag]", "sym50", "last")
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(52.5)
    # a setting that differs within one kind is still listed
    config = _config("kd", "sym50", 0, teacher_runs=["/t/x"], **kd, teacher={**swag, "samples": 5})
    _write(tmp_path, config, [0.1, 0.3])
    table = _run_json(capsys, str(tmp_path), "--table", "table4", "--select", "last")
    labels = sorted(r["label"] for r in table["rows"] if r["source"] == "ours")
    assert labels == [
        "ce",
        "kd [ensemble]",
        "kd [swag] (method.teacher.samples=30)",
        "kd [swag] (method.teacher.samples=5)",
    ]
    # the leaderboard and figures label methods the same way (setting_groups)
    from noisybench.report import setting_groups

    (methods,) = setting_groups(collect(load_results([tmp_path]))).values()
    assert [label for label, _ in methods] == labels
