"""A leaderboard over finished runs: per cell mean ± std with a 95 % confidence interval,
paired comparisons against a reference method, ranks with ties, and each cell's cost.

``noisybench report RUNS --leaderboard [--reference ce] [--format md|latex|csv|json|html]``.

A cell is one method in one setting (dataset, model, realised noise, protocol: the run
identity without the method's keys) over its seeds. For each cell:

* mean, sample std (ddof 1) and the 95 % interval ``mean ± t(0.975, n-1) s / sqrt(n)``
  (Student's t; :func:`t_quantile`);
* against the reference method of the same setting, over the seeds both have with the same
  noisy labels (same training seed and labels hash): the mean paired difference with its t
  interval, wins / ties / losses (a tie: equal to 2 decimals, in percent), and the two-sided
  sign-flip permutation p-value (:func:`sign_flip_p`: exact over all 2^n sign patterns up to
  n = 16, else 2^14 seeded random patterns);
* a rank within the setting: 1 + the number of methods whose interval lies entirely above
  this one's (overlapping intervals share a rank);
* the cost: summed training hours, mean images per second, peak memory and the devices,
  from the result files' ``cost`` and ``environment`` (schema 2; schema-1 files give the
  summed epoch times only).

Every number comes from the epoch the selection rule picks; the rule is in the header.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisybench.errors import UserError

__all__ = [
    "Entry",
    "Leaderboard",
    "Ranked",
    "build_leaderboard",
    "render_leaderboard",
    "sign_flip_p",
    "t_interval",
    "t_quantile",
]

_EXACT_UP_TO = 16  # sign patterns enumerated exactly up to this many pairs (65,536)
_SAMPLED = 2**14  # random sign patterns beyond (standard error of p = 0.05: 0.0017)
_TIE = 0.005  # percentage points: equal to two decimals


# ------------------------------------------------------------------------------ statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the
    CDF to 1e-12; t(0.975, 1) = 12.706, t(0.975, 2) = 4.303, t(0.975, 4) = 2.776)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError("t_quantile needs 0 < p < 1 and df >= 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float | None]:
    """Mean, sample std (ddof 1; 0 for one value) and the half-width of the ``level``
    t interval of the mean (None for fewer than two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, None
    std = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2.0, len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, half


def sign_flip_p(diffs: Sequence[float], seed: int = 0) -> float | None:
    """Two-sided p-value of the paired sign-flip permutation test of mean(diffs) = 0: the
    share of sign patterns whose |sum| is at least the observed one (exact over all 2^n
    patterns up to :data:`_EXACT_UP_TO` pairs, else (hits + 1) / (2^14 + 1) over 2^14
    random patterns drawn with ``seed``). None without pairs."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        return None
    observed = abs(d.sum()) - 1e-12 * max(1.0, float(np.abs(d).sum()))
    hits, total = 0, 0
    if n <= _EXACT_UP_TO:
        # Row i's signs are the bits of i: every pattern exactly once.
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        hits = int((np.abs((1.0 - 2.0 * bits) @ d) >= observed).sum())
        total = 2**n
    else:
        rng = np.random.default_rng(seed)
        for _ in range(_SAMPLED // 4096):  # 4096 random patterns at a time
            packed = rng.integers(0, 256, size=(4096, (n + 7) // 8), dtype=np.uint8)
            bits = np.unpackbits(packed, axis=1)[:, :n].astype(np.float64)
            hits += int((np.abs(d.sum() - 2.0 * (bits @ d)) >= observed).sum())
            total += 4096
        # The observed pattern counts as one of the draws: never p = 0 from sampling.
        hits, total = hits + 1, total + 1
    return hits / total


# ------------------------------------------------------------------------------ the board
@dataclass
class Entry:
    """One cell: a method in a setting, over seeds."""

    setting: str
    method: str
    seeds: list[Any]
    values: list[float]
    mean: float
    std: float
    ci: float | None  # half-width of the 95 % interval
    rank: int = 0
    paired: dict[str, Any] | None = None
    cost: dict[str, Any] = field(default_factory=dict)


@dataclass
class Leaderboard:
    metric: str
    rule: str
    rule_text: str
    reference: str | None
    entries: list[Entry]
    notes: list[str]


def _pair_key(run: Mapping[str, Any]) -> str:
    seeds = run.get("seeds") or {}
    noise = run.get("noise") or {}
    return json.dumps([seeds.get("train"), noise.get("sha256") or seeds.get("noise")], default=str)


def _cost(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    hours, rates, peaks, devices = 0.0, [], [], set()
    known_time = True
    for run in runs:
        cost = run.get("cost") if isinstance(run.get("cost"), Mapping) else {}
        seconds = cost.get("train_time_s")
        if not isinstance(seconds, int | float):
            times = [r.get("epoch_time_s") for r in run.get("history") or []]
            seconds = sum(t for t in times if isinstance(t, int | float)) if times else None
        if isinstance(seconds, int | float) and math.isfinite(seconds):
            hours += seconds / 3600.0
        else:
            known_time = False
        if isinstance(cost.get("images_per_s"), int | float):
            rates.append(float(cost["images_per_s"]))
        if isinstance(cost.get("peak_memory_bytes"), int | float):
            peaks.append(float(cost["peak_memory_bytes"]))
        env = run.get("environment") if isinstance(run.get("environment"), Mapping) else {}
        device = env.get("device_name") or run.get("device")
        if device:
            devices.add(str(device))
    return {
        "train_hours": hours if known_time else None,
        "images_per_s": statistics.fmean(rates) if rates else None,
        "peak_memory_gib": max(peaks) / 2**30 if peaks else None,
        "devices": sorted(devices),
    }


@dataclass(frozen=True)
class Ranked:
    """What a leaderboard ranks: ``metric`` (its key and ``label``; ``higher_is_better``) at
    the epoch the selection ``rule`` picks (``rule_text``: the rule in words)."""

    metric: str
    label: str
    higher_is_better: bool
    rule: str
    rule_text: str


def build_leaderboard(
    settings: Mapping[str, Sequence[tuple[str, Any]]],
    value_of: Callable[[Mapping[str, Any]], float | None],
    ranked: Ranked,
    reference: str | None = "ce",
) -> Leaderboard:
    """The leaderboard of ``settings`` (:func:`noisybench.report.setting_groups`): each
    run's number is ``value_of(run)`` (the ``ranked`` metric at the epoch its rule selects,
    already in display units); paired comparisons against the method whose label is
    ``reference`` (none when absent from a setting)."""
    metric, rule, rule_text = ranked.metric, ranked.rule, ranked.rule_text
    entries: list[Entry] = []
    for setting, methods in settings.items():
        cells: list[tuple[Entry, dict[str, float]]] = []
        for label, group in methods:
            by_pair: dict[str, float] = {}
            seeds: list[Any] = []
            values: list[float] = []
            for run in sorted(group.runs, key=lambda r: str((r.get("seeds") or {}).get("train"))):
                value = value_of(run)
                if value is None:
                    continue
                seeds.append((run.get("seeds") or {}).get("train"))
                values.append(value)
                by_pair[_pair_key(run)] = value
            if not values:
                continue
            mean, std, ci = t_interval(values)
            entry = Entry(setting, label, seeds, values, mean, std, ci, cost=_cost(group.runs))
            cells.append((entry, by_pair))
        ref = next((pairs for e, pairs in cells if e.method == reference), None)
        higher = ranked.higher_is_better
        for entry, pairs in cells:
            if ref is not None and entry.method != reference:
                common = [k for k in pairs if k in ref]
                diffs = [pairs[k] - ref[k] for k in common]
                if diffs:
                    mean, _, half = t_interval(diffs)
                    better = [d if higher else -d for d in diffs]
                    entry.paired = {
                        "reference": reference,
                        "n": len(diffs),
                        "mean_diff": mean,
                        "ci": half,
                        "wins": sum(d > _TIE for d in better),
                        "ties": sum(abs(d) <= _TIE for d in better),
                        "losses": sum(d < -_TIE for d in better),
                        "p": sign_flip_p(diffs),
                    }
            # Rank: 1 + the methods whose whole interval lies beyond this one's.
            lo = entry.mean - (entry.ci or 0.0)
            hi = entry.mean + (entry.ci or 0.0)
            beyond = 0
            for other, _ in cells:
                o_lo, o_hi = other.mean - (other.ci or 0.0), other.mean + (other.ci or 0.0)
                beyond += (o_lo > hi) if higher else (o_hi < lo)
            entry.rank = 1 + beyond
        cells.sort(key=lambda c: (c[0].rank, -c[0].mean if higher else c[0].mean))
        entries.extend(e for e, _ in cells)
    notes = [
        f"numbers: {ranked.label}, epoch: {rule_text}"
        + (" (selected on the test set: optimistic)" if rule == "best_test" else ""),
        "mean ± sample std over seeds; 95 % CI: mean ± t(0.975, n-1)·s/√n (Student's t)",
        f"paired: difference to {reference} over the seeds both ran with the same noisy labels;"
        " W/T/L: wins/ties/losses (tie: equal to 2 decimals); p: exact two-sided sign-flip "
        "permutation test",
        "rank: 1 + methods whose 95 % interval lies entirely above (overlapping intervals tie)",
    ]
    return Leaderboard(metric, rule, rule_text, reference, entries, notes)


# ------------------------------------------------------------------------------ rendering
def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rows(board: Leaderboard) -> list[dict[str, str]]:
    out = []
    for e in board.entries:
        p = e.paired
        out.append(
            {
                "setting": e.setting,
                "method": e.method,
                "rank": str(e.rank),
                "n": str(len(e.values)),
                "mean ± std": f"{e.mean:.2f} ± {e.std:.2f}",
                "95 % CI": "–" if e.ci is None else f"[{e.mean - e.ci:.2f}, {e.mean + e.ci:.2f}]",
                f"Δ vs {board.reference}": "–"
                if p is None
                else f"{p['mean_diff']:+.2f}" + ("" if p["ci"] is None else f" ± {p['ci']:.2f}"),
                "W/T/L": "–" if p is None else f"{p['wins']}/{p['ties']}/{p['losses']}",
                "p": "–" if p is None or p["p"] is None else f"{p['p']:.3g}",
                "train h": _f(e.cost.get("train_hours"), 3),
                "img/s": _f(e.cost.get("images_per_s"), 0),
                "peak GiB": _f(e.cost.get("peak_memory_gib"), 2),
                "device": ", ".join(e.cost.get("devices") or []) or "–",
            }
        )
    return out


def _title(board: Leaderboard) -> str:
    return (
        f"Leaderboard: {board.metric} at the epoch selected by '{board.rule}' ({board.rule_text})"
    )


def _md(board: Leaderboard) -> str:
    rows = _rows(board)
    if not rows:
        return f"**{_title(board)}**\n\n(no finished run with this metric)"
    head = list(rows[0])
    lines = [f"**{_title(board)}**", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in head) + " |" for r in rows]
    return "\n".join([*lines, "", *(f"- {n}" for n in board.notes)])


def _latex(board: Leaderboard, _latex_escape: Callable[[str], str]) -> str:
    rows = _rows(board)
    head = list(rows[0]) if rows else ["setting", "method"]
    lines = [
        "% " + _latex_escape(_title(board)),
        "\\begin{tabular}{ll" + "r" * (len(head) - 2) + "}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_latex_escape(r[h]) for h in head) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}", *("% " + _latex_escape(n) for n in board.notes)]
    return "\n".join(lines)


def _records(board: Leaderboard) -> list[dict[str, Any]]:
    return [
        {
            "setting": e.setting,
            "method": e.method,
            "rank": e.rank,
            "n": len(e.values),
            "mean": e.mean,
            "std": e.std,
            "ci95": e.ci,
            "seeds": e.seeds,
            "values": e.values,
            "paired": e.paired,
            "cost": e.cost,
        }
        for e in board.entries
    ]


def _json(board: Leaderboard) -> str:
    obj = {
        "title": _title(board),
        "metric": board.metric,
        "selection": board.rule,
        "reference": board.reference,
        "entries": _records(board),
        "notes": board.notes,
    }
    return json.dumps(obj, indent=1, ensure_ascii=True, default=str)


def _csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    fields = [
        "setting", "method", "selection", "rank", "n", "mean", "std", "ci95", "seeds", "values",
        "reference", "mean_diff", "diff_ci95", "wins", "ties", "losses", "p",
        "train_hours", "images_per_s", "peak_memory_gib", "devices",
    ]  # fmt: skip
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for e in board.entries:
        p = e.paired or {}
        w.writerow(
            {
                "setting": e.setting,
                "method": e.method,
                "selection": board.rule,
                "rank": e.rank,
                "n": len(e.values),
                "mean": f"{e.mean:.6g}",
                "std": f"{e.std:.6g}",
                "ci95": "" if e.ci is None else f"{e.ci:.6g}",
                "seeds": ";".join(str(s) for s in e.seeds),
                "values": ";".join(f"{v:.6g}" for v in e.values),
                "reference": p.get("reference", ""),
                "mean_diff": "" if not p else f"{p['mean_diff']:.6g}",
                "diff_ci95": "" if p.get("ci") is None else f"{p['ci']:.6g}",
                "wins": p.get("wins", ""),
                "ties": p.get("ties", ""),
                "losses": p.get("losses", ""),
                "p": "" if p.get("p") is None else f"{p['p']:.6g}",
                "train_hours": _f(e.cost.get("train_hours"), 6).replace("–", ""),
                "images_per_s": _f(e.cost.get("images_per_s"), 1).replace("–", ""),
                "peak_memory_gib": _f(e.cost.get("peak_memory_gib"), 4).replace("–", ""),
                "devices": ";".join(e.cost.get("devices") or []),
            }
        )
    return buf.getvalue().rstrip("\n")


_SORT_JS = """
document.querySelectorAll('table.board th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.getAttribute('data-dir') !== 'up';
    th.setAttribute('data-dir', up ? 'up' : 'down');
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-key'), y = b.cells[col].getAttribute('data-key');
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _sort_key(header: str, text: str) -> str:
    """What a column sorts by: the leading number of a cell where it has one."""
    token = text.split(" ")[0].strip("[],")
    try:
        return repr(float(token.replace("–", "nan")))
    except ValueError:
        return text


def _html(board: Leaderboard, figures: Sequence[Path] = ()) -> str:
    """One self-contained page: the table (click a header to sort), the notes, and the
    figures embedded as base64 PNG; no file or network access when opened."""
    rows = _rows(board)
    head = list(rows[0]) if rows else []
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(_title(board))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{cursor:pointer;background:#eee}td:nth-child(-n+2){text-align:left}"
        "img{max-width:48%;margin:4px}</style>",
        "</head><body>",
        f"<h1>{esc(_title(board))}</h1>",
        '<table class="board"><thead><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>",
    ]
    for r in rows:
        parts.append(
            "<tr>"
            + "".join(f'<td data-key="{esc(_sort_key(h, r[h]))}">{esc(r[h])}</td>' for h in head)
            + "</tr>"
        )
    parts.append("</tbody></table>")
    parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in board.notes) + "</ul>")
    for path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(Path(path).stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(Path(path).stem)}</figcaption></figure>"
        )
    parts += [f"<script>{_SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts)


def render_leaderboard(
    board: Leaderboard,
    fmt: str,
    figures: Sequence[Path] = (),
    latex_escape: Callable[[str], str] | None = None,
) -> str:
    """The leaderboard as Markdown, LaTeX (text escaped by ``latex_escape``: the report's),
    CSV, JSON (per-seed values) or one HTML page."""
    renderers = {"md": _md, "csv": _csv, "json": _json}
    if fmt == "html":
        return _html(board, figures)
    if fmt == "latex":
        if latex_escape is None:
            raise UserError("the LaTeX leaderboard needs the report's escaping")
        return _latex(board, latex_escape)
    if fmt not in renderers:
        raise UserError(f"unknown format {fmt!r}; use one of md, latex, csv, json, html")
    return renderers[fmt](board)
