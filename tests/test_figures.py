"""Figures from hand-made run files: which are written, which are skipped and why, and the
pooled reliability bins against a hand computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from noisybench.figures import pool_reliability, write_figures
from noisybench.report import collect, load_results, main, setting_groups


def _run(root: Path, method: str, seed: int, evaluation: dict | None, gamma: float = 0.9) -> None:
    run = root / f"{method}{gamma}" / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "epochs": 5,
        "dataset": {"name": "digits"},
        "model": {"name": "small_cnn"},
        "noise": {"name": "sym50", "seed": seed},
        "method": {"name": method, **({"gamma": gamma} if method == "bsd" else {})},
    }
    history = [
        {"epoch": e, "test/acc": 0.5 + 0.05 * e + 0.01 * seed, "memorisation/fit_given": 0.1 * e}
        for e in range(1, 6)
    ]
    body = {"status": "finished", "config": cfg, "seeds": {"train": seed}, "history": history}
    (run / "result.json").write_text(json.dumps(body))
    if evaluation is not None:
        (run / "evaluation.json").write_text(
            json.dumps({"checkpoint_epoch": 5, "metrics": evaluation})
        )


def _evaluation(seed: int) -> dict:
    k = 4
    mu = np.full((k, k), 0.1 + 0.01 * seed)
    np.fill_diagonal(mu, 0.7)
    out = {
        "calibration/ece": 0.05,
        "calibration/reliability/accuracy": [math.nan, 0.3, 0.6, 0.9],
        "calibration/reliability/confidence": [math.nan, 0.35, 0.62, 0.95],
        "calibration/reliability/count": [0, 5, 10, 20],
        "dark_knowledge/mu": mu.flatten().tolist(),
        "dark_knowledge/kl_epochs": [1, 2, 3, 4, 5],
        "dark_knowledge/kl_to_final": [2.0, 1.0, 0.5, 0.2, 0.0],
    }
    for s in range(1, 6):
        out[f"corruption/s{s}/ece"] = 0.05 + 0.02 * s
    return out


def test_pooled_reliability_bins_are_count_weighted() -> None:
    a = {
        "calibration/reliability/count": [2, 0, 3],
        "calibration/reliability/accuracy": [1.0, math.nan, 1 / 3],
        "calibration/reliability/confidence": [0.9, math.nan, 0.5],
    }
    b = {
        "calibration/reliability/count": [2, 1, 1],
        "calibration/reliability/accuracy": [0.5, 0.0, 1.0],
        "calibration/reliability/confidence": [0.7, 0.4, 0.6],
    }
    empty = {
        "calibration/reliability/count": [0, 0, 0],
        "calibration/reliability/accuracy": [math.nan] * 3,
        "calibration/reliability/confidence": [math.nan] * 3,
    }
    acc, conf, count = pool_reliability([a, b])
    np.testing.assert_allclose(count, [4, 1, 4])
    np.testing.assert_allclose(acc, [(2 * 1.0 + 2 * 0.5) / 4, 0.0, (3 / 3 + 1.0) / 4])
    np.testing.assert_allclose(conf, [(2 * 0.9 + 2 * 0.7) / 4, 0.4, (3 * 0.5 + 0.6) / 4])
    acc, _, _ = pool_reliability([empty])
    assert np.isnan(acc).all()


def test_every_figure_is_written_from_complete_inputs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _run(runs, "ce", seed, _evaluation(seed))
        _run(runs, "bsd", seed, _evaluation(seed))
    _run(runs, "bsd", 0, _evaluation(0), gamma=0.5)
    groups = collect(load_results([runs]))
    (setting,) = setting_groups(groups).values()  # one setting: digits / small_cnn / sym50
    assert [label for label, _ in setting] == [
        "bsd (method.gamma=0.5)",
        "bsd (method.gamma=0.9)",
        "ce",
    ]
    lines = write_figures(setting_groups(groups), tmp_path / "fig")
    assert all(line.startswith("wrote") for line in lines), lines
    import matplotlib.image

    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    figures = ("test_error", "memorisation", "reliability", "ece_severity", "mu", "kl")
    assert names == sorted(
        f"{n}_digits_small_cnn_sym50.{ext}" for n in figures for ext in ("png", "pdf")
    )
    for name in names:
        if name.endswith(".pdf"):  # vector output for LaTeX
            assert (tmp_path / "fig" / name).read_bytes().startswith(b"%PDF")
            continue
        image = matplotlib.image.imread(tmp_path / "fig" / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def test_figures_without_evaluation_are_skipped_with_a_note(tmp_path: Path, capsys) -> None:
    _run(tmp_path / "runs", "ce", 0, None)
    assert main([str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "test_error_digits_small_cnn_sym50.png" in err
    for name, needs in (
        ("reliability", "calibration/reliability"),
        ("ece_severity", "s1..s5/ece"),
        ("mu", "dark_knowledge/mu"),
        ("kl", "dark_knowledge/kl_to_final"),
    ):
        assert f"skipped {name}_digits_small_cnn_sym50.png: no {needs}" in err.replace(
            "{cifar_c,corruption}/", ""
        )
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        f"{n}_digits_small_cnn_sym50.{ext}"
        for n in ("memorisation", "test_error")
        for ext in ("pdf", "png")
    ]


def test_memorisation_curve_and_shared_mu_scale(tmp_path: Path) -> None:
    """The memorisation curve plots memorisation/fit_given in % per epoch (mean over seeds);
    the mu panels of all methods share one colour scale (equal colours, equal values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from noisybench import figures

    runs = tmp_path / "runs"
    for seed in (0, 1):
        _run(runs, "ce", seed, _evaluation(seed))
        bsd = _evaluation(seed)
        bsd["dark_knowledge/mu"] = [0.3 * v for v in bsd["dark_knowledge/mu"]]
        _run(runs, "bsd", seed, bsd)
    (setting,) = setting_groups(collect(load_results([runs]))).values()
    saved = []
    real_save = figures._save
    figures._save = lambda plt_, fig, path: saved.append(fig)  # keep the figures to inspect
    try:
        assert figures._memorisation(plt, "s", setting, tmp_path / "m.png") is None
        assert figures._mu(plt, "s", setting, tmp_path / "mu.png") is None
    finally:
        figures._save = real_save
    memo, mu = saved
    (ax,) = memo.axes
    for line in ax.get_lines():
        np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4, 5])
        np.testing.assert_allclose(line.get_ydata(), [10, 20, 30, 40, 50])  # 100 * 0.1 * e
    assert ax.get_ylabel() == "noisy labels fitted (%)"
    panels = [a for a in mu.axes if a.images]
    assert len(panels) == 2
    # off-diagonal means: ce 0.105, bsd 0.3 * 0.105 (the diagonal is blanked)
    for panel in panels:
        np.testing.assert_allclose(panel.images[0].get_clim(), (0.3 * 0.105, 0.105))
    plt.close("all")
