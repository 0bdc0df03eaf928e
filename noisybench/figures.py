"""The BSD paper's figures from finished runs, as PNG and vector PDF (for LaTeX) side by side
(``noisybench report RUNS --figures DIR``; needs the ``plots`` extra, matplotlib).

One file per setting (dataset, model, noise, and every other key but the method's), one curve
or panel per method; numbers pooled over seeds:

* ``test_error_<setting>.png`` (Figure 5): test error (1 - ``test/acc``) over epochs, the
  mean over seeds with a band of ± one sample std;
* ``memorisation_<setting>.png``: the share of noisily-labelled training samples predicted as
  their given wrong label over epochs (``memorisation/fit_given``), the memorisation curve;
* ``reliability_<setting>.png`` (Figure 4): reliability diagrams from evaluation.json's
  ``calibration/reliability/{confidence,accuracy,count}`` (bins pooled over seeds by count);
* ``ece_severity_<setting>.png`` (Figure 12): ECE against corruption severity 0-5 from
  evaluation.json's ``{cifar_c,corruption}/s<k>/ece`` (severity 0: ``calibration/ece``);
* ``mu_<setting>.png`` (Figure 2): the inter-class component mu of dark knowledge (Eq. 10)
  from evaluation.json's ``dark_knowledge/mu``, mean over seeds, the diagonal left blank so
  the inter-class structure is visible; every panel on one colour scale;
* ``kl_<setting>.png`` (Figure 11): temperature-adjusted KL between each epoch's predictions
  and the final model's, from evaluation.json's ``dark_knowledge/{kl_epochs,kl_to_final}``.

A figure whose inputs no run has is skipped with a note naming what is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from noisybench.errors import UserError

__all__ = ["FIGURES", "pool_reliability", "write_figures"]

Methods = Sequence[tuple[str, Any]]  # [(method label, group of runs)] of one setting


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise UserError(
            "--figures needs matplotlib; install the plots extra: pip install 'noisybench[plots]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:120] or "runs"


def _evaluations(group: Any) -> list[dict[str, Any]]:
    return [
        (run.get("evaluation") or {}).get("metrics") or {}
        for run in group.runs
        if run.get("evaluation")
    ]


def _mean_band(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    stack = np.vstack(rows)
    mean = stack.mean(0)
    std = stack.std(0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
    return mean, std


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write ``path`` (PNG, 150 dpi) and the same figure as a vector PDF beside it
    (for LaTeX), and close the figure (every figure's last step)."""
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)


def _memorisation(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    """The memorisation curve: the share of the noisily-labelled training samples predicted
    as their given (wrong) label, per epoch (``memorisation/fit_given``), mean ± std over
    seeds; cross-entropy's rises as it memorises, the paper's point is that BSD's does not."""
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for label, g in methods:
        curves = []
        for run in g.runs:
            hist = [
                h
                for h in run.get("history") or []
                if isinstance(h.get("memorisation/fit_given"), float)
            ]
            if hist:
                epochs = np.array([h["epoch"] for h in hist])
                curves.append((epochs, np.array([h["memorisation/fit_given"] for h in hist])))
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        mean, std = _mean_band([100 * c[1][:n] for c in curves])
        (line,) = ax.plot(curves[0][0][:n], mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(curves[0][0][:n], mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no memorisation/fit_given in any history (runs with label noise record it)"
    ax.set(
        xlabel="epoch",
        ylabel="noisy labels fitted (%)",
        ylim=(0, 100),
        title=f"Memorisation of the noisy labels\n{title}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return None


def _test_error(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for label, g in methods:
        curves = []
        for run in g.runs:
            hist = [h for h in run.get("history") or [] if isinstance(h.get("test/acc"), float)]
            if hist:
                curves.append(
                    (
                        np.array([h["epoch"] for h in hist]),
                        np.array([1 - h["test/acc"] for h in hist]),
                    )
                )
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)  # unfinished runs: the epochs every run has
        epochs = curves[0][0][:n]
        mean, std = _mean_band([100 * c[1][:n] for c in curves])
        (line,) = ax.plot(epochs, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no test/acc in any history"
    ax.set(xlabel="epoch", ylabel="test error (%)", title=f"Test error over epochs\n{title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return None


def pool_reliability(evaluations: Sequence[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """Reliability bins of several runs pooled: per bin, the count-weighted mean accuracy and
    confidence and the total count (NaN where no run has a sample in the bin)."""
    count = np.zeros(0)
    acc_sum = conf_sum = count
    for i, e in enumerate(evaluations):
        c = np.asarray(e["calibration/reliability/count"], float)
        a = np.nan_to_num(np.asarray(e["calibration/reliability/accuracy"], float)) * c
        f = np.nan_to_num(np.asarray(e["calibration/reliability/confidence"], float)) * c
        if i == 0:
            count, acc_sum, conf_sum = c, a, f
        else:
            count, acc_sum, conf_sum = count + c, acc_sum + a, conf_sum + f
    with np.errstate(invalid="ignore", divide="ignore"):
        empty = np.where(count > 0, 1.0, np.nan)
        return (
            acc_sum / np.maximum(count, 1) * empty,
            conf_sum / np.maximum(count, 1) * empty,
            count,
        )


def _reliability(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    panels = []
    for label, g in methods:
        evs = [e for e in _evaluations(g) if e.get("calibration/reliability/count")]
        if not evs:
            continue
        acc, conf, count = pool_reliability(evs)
        panels.append((f"{label} (n={len(evs)})", acc, conf, count))
    if not panels:
        return (
            "no calibration/reliability in evaluation.json (noisybench.evaluate eval=calibration)"
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (label, acc, conf, count) in zip(axes[0], panels, strict=True):
        r = len(acc)
        centres = (np.arange(r) + 0.5) / r
        ok = count > 0
        ax.bar(
            centres[ok], acc[ok], width=1 / r, edgecolor="black", linewidth=0.5, label="accuracy"
        )
        ax.bar(
            centres[ok],
            conf[ok] - acc[ok],
            bottom=acc[ok],
            width=1 / r,
            fill=False,
            hatch="///",
            edgecolor="tab:red",
            linewidth=0.8,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=label)
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability diagrams (last epoch)\n{title}", fontsize=10)
    _save(plt, fig, path)
    return None


def _ece_severity(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn, source = 0, ""
    for label, g in methods:
        rows = []
        for e in _evaluations(g):
            for prefix in ("cifar_c", "corruption"):
                if all(f"{prefix}/s{s}/ece" in e for s in range(1, 6)):
                    clean = e.get("calibration/ece", math.nan)
                    rows.append(np.array([clean] + [e[f"{prefix}/s{s}/ece"] for s in range(1, 6)]))
                    source = prefix
                    break
        if not rows:
            continue
        mean, std = _mean_band([100 * r for r in rows])
        x = np.arange(6)
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=f"{label} (n={len(rows)})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no {cifar_c,corruption}/s1..s5/ece in evaluation.json (eval=corruption or cifar_c)"
    ax.set(
        xlabel="corruption severity (0: clean test set)",
        ylabel="ECE (%), mean over corruption types",
        title=f"ECE under corruption ({source} suite)\n{title}",
        xticks=range(6),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return None


def _mu(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    from matplotlib.ticker import MaxNLocator

    panels = []
    for label, g in methods:
        mats = [
            np.asarray(e["dark_knowledge/mu"], float)
            for e in _evaluations(g)
            if e.get("dark_knowledge/mu")
        ]
        if not mats:
            continue
        k = math.isqrt(mats[0].size)
        mu = np.mean([m.reshape(k, k) for m in mats], 0)
        np.fill_diagonal(mu, np.nan)
        panels.append((f"{label} (n={len(mats)})", mu))
    if not panels:
        return "no dark_knowledge/mu in evaluation.json (eval=dark_knowledge)"
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    # One colour scale for every panel, so that equal colours are equal values across methods
    vmin = float(min(np.nanmin(mu) for _, mu in panels))
    vmax = float(max(np.nanmax(mu) for _, mu in panels))
    for ax, (label, mu) in zip(axes[0], panels, strict=True):
        im = ax.imshow(mu, cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set(title=label, xlabel="class k", ylabel="label class")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=list(axes[0]), fraction=0.046, pad=0.04)
    fig.suptitle(
        f"Inter-class component mu of dark knowledge (diagonal blank)\n{title}", fontsize=10
    )
    _save(plt, fig, path)
    return None


def _kl(plt: Any, title: str, methods: Methods, path: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = 0
    for label, g in methods:
        curves = [
            (np.asarray(e["dark_knowledge/kl_epochs"]), np.asarray(e["dark_knowledge/kl_to_final"]))
            for e in _evaluations(g)
            if e.get("dark_knowledge/kl_to_final")
        ]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        mean, std = _mean_band([c[1][:n] for c in curves])
        (line,) = ax.plot(curves[0][0][:n], mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(curves[0][0][:n], mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return (
            "no dark_knowledge/kl_to_final in evaluation.json (train with per-epoch prediction "
            "snapshots, then eval=dark_knowledge)"
        )
    ax.set(
        xlabel="epoch",
        ylabel="temperature-adjusted KL to the final model",
        title=f"Emergence of dark knowledge\n{title}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return None


FIGURES = {
    "test_error": _test_error,
    "memorisation": _memorisation,
    "reliability": _reliability,
    "ece_severity": _ece_severity,
    "mu": _mu,
    "kl": _kl,
}


def write_figures(settings: Mapping[str, Sequence[tuple[str, Any]]], out_dir: Path) -> list[str]:
    """Write every figure the runs have inputs for into ``out_dir``; returns one line per
    figure written or skipped. ``settings``: ``{setting label: [(method label, group)]}``
    (:func:`noisybench.report.setting_groups`), a group having the runs' result dicts (with
    ``"evaluation"``) in ``.runs``."""
    plt = _pyplot()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create {out_dir} ({exc.strerror}); pass a writable --figures DIR"
        ) from exc
    lines = []
    for setting, methods in settings.items():
        for name, draw in FIGURES.items():
            path = out_dir / f"{name}_{_slug(setting)}.png"
            missing = draw(plt, setting, methods, path)
            wrote = f"wrote {path} (and {path.with_suffix('.pdf').name})"
            lines.append(f"skipped {path.name}: {missing}" if missing else wrote)
    return lines
