"""TensorBoard beyond scalars: images, the config as text, and hparams with final metrics.

Pure functions that turn a run's data into what ``torch.utils.tensorboard.SummaryWriter``
takes, plus three small ``log_*`` helpers for the logger callback:

* :func:`reliability_image`: a reliability diagram (Guo et al. 2017, Fig. 1; the BSD paper's
  Figure 4) as an ``(H, W, 3)`` uint8 image: one bar per confidence bin whose height is the
  bin's accuracy, a red outline up to the bin's mean confidence where it differs, the
  diagonal of perfect calibration in grey;
* :func:`matrix_image`: a ``K x K`` matrix as a heatmap (``(H, W, 3)`` uint8), for the noise
  transition matrix ``T[i, j] = P(noisy = j | clean = i)`` and the inter-class component mu of
  dark knowledge (the BSD paper's Eq. 10, Figure 2);
* :func:`config_text`: the resolved config as Markdown for ``add_text``;
* :func:`hparams_of`: the config flattened to TensorBoard's hparam value types.

The images are drawn with numpy alone (no matplotlib), so logging needs no optional extra;
pass them with ``dataformats="HWC"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:  # the lead's config module (issue 8) holds it; the first release had it in io
    from noisybench.config import flatten
except ImportError:  # pragma: no cover - depends on the checkout
    from noisybench.io import flatten

__all__ = [
    "BAR_RGB",
    "config_text",
    "hparams_of",
    "log_epoch_images",
    "log_hparams",
    "log_run_start",
    "matrix_image",
    "reliability_image",
]

BAR_RGB = (31, 119, 180)  # the bars' colour
GAP_RGB = (214, 39, 40)  # outline of the gap between accuracy and confidence
DIAG_RGB = (150, 150, 150)
_WHITE = 255


def reliability_image(
    accuracy: Sequence[float],
    confidence: Sequence[float] | None = None,
    count: Sequence[float] | None = None,
    size: int = 256,
) -> np.ndarray:
    """A reliability diagram as an ``(size, size, 3)`` uint8 image.

    ``accuracy[b]`` and ``confidence[b]`` are the mean accuracy and confidence of the
    samples in equal-width confidence bin ``b`` (NaN or ``count[b] == 0``: an empty bin, no
    bar). Bar ``b`` covers columns ``[b * size / R, (b + 1) * size / R)`` minus a one-pixel
    gap on each side, so bars of adjacent bins never touch.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    n_bins = acc.size
    if n_bins == 0 or size < 4 * n_bins:
        raise ValueError(f"need at least one bin and size >= 4 * bins (got {n_bins}, {size})")
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64)
    cnt = None if count is None else np.asarray(count, dtype=np.float64)
    img = np.full((size, size, 3), _WHITE, dtype=np.uint8)
    edges = np.linspace(0, size, n_bins + 1).round().astype(int)
    for b in range(n_bins):
        empty = not math.isfinite(acc[b]) or (cnt is not None and cnt[b] <= 0)
        if empty:
            continue
        x0, x1 = edges[b] + 1, edges[b + 1] - 1
        top = size - round(float(np.clip(acc[b], 0, 1)) * size)
        img[top:, x0:x1] = BAR_RGB
        if conf is not None and math.isfinite(conf[b]):
            ctop = size - round(float(np.clip(conf[b], 0, 1)) * size)
            lo, hi = sorted((top, ctop))
            if hi > lo:  # the gap as an outline on both edges of the bar
                img[lo:hi, x0] = GAP_RGB
                img[lo:hi, x1 - 1] = GAP_RGB
                img[ctop : ctop + 1, x0:x1] = GAP_RGB
    # The diagonal of perfect calibration, drawn over the bars.
    xs = np.arange(size)
    img[size - 1 - xs, xs] = DIAG_RGB
    return img


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to RGB uint8 on a dark-blue -> teal -> yellow ramp (viridis-like)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(stops) - 1)
    i = np.minimum(v.astype(int), len(stops) - 2)
    t = (v - i)[..., None]
    return (stops[i] * (1 - t) + stops[i + 1] * t).round().astype(np.uint8)


def matrix_image(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    cell: int = 16,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """A matrix as a heatmap: ``(K * cell, K' * cell, 3)`` uint8, entry ``[i, j]`` filling the
    ``cell x cell`` block at row ``i``, column ``j``; values scaled linearly from ``vmin``
    (darkest) to ``vmax`` (brightest), by default the matrix's finite minimum and maximum.
    NaN entries are drawn white."""
    m = _as_matrix(matrix)
    finite = m[np.isfinite(m)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin or 0.0)
    hi = (
        float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    )
    scaled = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    rgb = _colormap(scaled)
    rgb[~np.isfinite(m)] = _WHITE
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def _as_matrix(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        k = math.isqrt(m.size)
        if k * k != m.size:
            raise ValueError(f"a flat matrix needs a square number of entries, got {m.size}")
        m = m.reshape(k, k)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"need a 2-D matrix, got shape {m.shape}")
    return m


def matrix_figure(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    xlabel: str = "noisy label j",
    ylabel: str = "clean label i",
) -> Any:
    """A matplotlib figure of a matrix with axes, a colour bar on a fixed scale
    (``vmin``..``vmax``, so two runs' images compare) and each value written in its cell when
    the matrix has at most 12 rows (more would not be legible)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    m = _as_matrix(matrix)
    fig = Figure(figsize=(4.2, 3.6), dpi=100)
    ax = fig.add_subplot()
    shown = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis")
    fig.colorbar(shown, ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if m.shape[0] <= 12 and m.shape[1] <= 12:
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        middle = (vmin + vmax) / 2
        for (i, j), value in np.ndenumerate(m):
            colour = "black" if value > middle else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    fig.tight_layout()
    return fig


def reliability_figure(
    accuracy: Sequence[float],
    confidence: Sequence[float] | None = None,
    count: Sequence[float] | None = None,
) -> Any:
    """A reliability diagram (Guo et al. 2017, Fig. 1) with axes: accuracy bars per
    equal-width confidence bin, the gap to the bin's mean confidence as an outlined box beside
    the bar's top (not over it), the diagonal of perfect calibration, and each bin's count."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    acc = np.asarray(accuracy, dtype=np.float64)
    n = acc.size
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64)
    cnt = None if count is None else np.asarray(count, dtype=np.float64)
    centres = (np.arange(n) + 0.5) / n
    fig = Figure(figsize=(4.2, 3.6), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    filled = np.isfinite(acc) & (cnt > 0 if cnt is not None else True)
    ax.bar(
        centres[filled],
        acc[filled],
        width=1 / n,
        color="tab:blue",
        edgecolor="white",
        label="accuracy",
    )
    if conf is not None:
        gap = conf - acc
        ax.bar(
            centres[filled],
            gap[filled],
            bottom=acc[filled],
            width=1 / n,
            fill=False,
            edgecolor="tab:red",
            hatch="//",
            linewidth=0.8,
            label="gap to confidence",
        )
    if cnt is not None:  # each bin's sample count at the foot of its bar
        for x, c in zip(centres[filled], cnt[filled], strict=True):
            ax.text(
                x,
                0.02,
                f"{int(c)}",
                ha="center",
                fontsize=6,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "linewidth": 0},
            )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title="reliability (n per bin)",
    )
    ax.legend(loc="upper left", fontsize=6)
    fig.tight_layout()
    return fig


def figure_image(fig: Any) -> np.ndarray:
    """A matplotlib figure as an ``(H, W, 3)`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def config_text(config: Mapping[str, Any]) -> str:
    """The resolved config as Markdown (a YAML code block indented for TensorBoard's text
    plugin, which renders Markdown)."""
    import yaml

    body = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)
    return "\n".join("    " + line for line in body.splitlines())


def hparams_of(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The flattened config with values TensorBoard's hparams accept (bool, int, float, str):
    ``None`` and lists become their JSON text; ``_target_`` entries are left out."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in flatten(config).items():
        if key.endswith("_target_"):
            continue
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


# ------------------------------------------------------------------------------ logging
def log_run_start(writer: Any, config: Mapping[str, Any], noise: Mapping[str, Any] | None) -> None:
    """At run start: the config as text (tag ``config``) and the realised noise transition
    matrix (``noise/transition``, from the run's noise record) as an image."""
    writer.add_text("config", config_text(config), 0)
    transition = (noise or {}).get("transition")
    if transition:
        image = (
            figure_image(matrix_figure(transition, "noise transition T[i, j]"))
            if _have_matplotlib()
            else matrix_image(transition, vmin=0.0, vmax=1.0)
        )
        writer.add_image("noise/transition", image, 0, dataformats="HWC")


def log_epoch_images(writer: Any, metrics: Mapping[str, Any], step: int) -> None:
    """At an epoch end with evaluation-suite results (``eval/<suite>/<key>`` lists or the
    suites' own keys): the reliability diagram and the mu heatmap as images, when present."""

    def get(key: str) -> Any:
        return metrics.get(key, metrics.get(f"eval/{key}"))

    acc = get("calibration/reliability/accuracy")
    if acc:
        parts = (
            acc,
            get("calibration/reliability/confidence"),
            get("calibration/reliability/count"),
        )
        image = (
            figure_image(reliability_figure(*parts))
            if _have_matplotlib()
            else reliability_image(*parts)
        )
        writer.add_image("calibration/reliability", image, step, dataformats="HWC")
    mu = get("dark_knowledge/mu")
    if mu:
        image = (  # one colour scale, 0..1, for every epoch and run
            figure_image(matrix_figure(mu, "dark knowledge mu", xlabel="class", ylabel="class"))
            if _have_matplotlib()
            else matrix_image(mu, vmin=0.0, vmax=1.0)
        )
        writer.add_image("dark_knowledge/mu", image, step, dataformats="HWC")


def log_hparams(
    writer: Any, config: Mapping[str, Any], final: Mapping[str, Any], step: int = 0
) -> None:
    """At run end: the hyperparameters that change an experiment (the run's identity,
    :func:`noisybench.config.identity`: no paths, devices, loggers or progress settings) with
    the final metrics (finite numbers of ``final``, e.g. ``test/acc`` of the last and best
    epochs as ``hparams/last/test/acc``), so that the HParams tab compares a sweep.

    Written into the run's own event files (one TensorBoard run per noisybench run), not into
    a ``hparams`` sub-run as ``SummaryWriter.add_hparams`` does, which showed every run twice;
    a resumed run's later entry is the one TensorBoard reads."""
    from torch.utils.tensorboard.summary import hparams

    from noisybench.config import identity

    metrics = {
        "hparams/" + k.replace(".", "/"): float(v)
        for k, v in flatten(final).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    experiment, start, end = hparams(hparams_of(identity(config)), metrics)
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)
