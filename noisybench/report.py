"""The paper's tables (and figures) from finished runs, with the published numbers beside ours.

``python -m noisybench.report RUNS... [--table table1..table7] [--format md|latex|csv|json]
[--select last,best_test,noisy_val] [--figures DIR]`` finds every ``result.json`` below RUNS,
groups runs by their experiment identity (the resolved config under ``"config"`` minus the
seeds and :data:`NON_IDENTITY_KEYS`), and prints mean ± sample std (ddof = 1) over seeds with
the number of seeds. ``--table tableN`` lays the groups out as the BSD paper's Table N and puts
the paper's number (``noisybench/paper_tables.yaml``) beside ours; without ``--table``, one
row per group with accuracy, calibration and memorisation columns.

Every column header names the epoch a number comes from (``--select``):

* ``last``: the last epoch;
* ``best_test``: the epoch of the best test accuracy, i.e. selected on the test set, as the
  paper reports Table 4 ("average best obtained accuracy") - optimistic;
* ``noisy_val``: the epoch of the best accuracy on the held-out noisy validation split
  (``val/acc`` in the history); shown by default whenever a run has it.

Numbers that only a post-hoc evaluation produces (CIFAR-10-C, OOD, SCE/ACE on a finished run)
come from the final checkpoint and are therefore last-epoch numbers.

Input schema (what this module reads; written by the run and by ``noisybench.evaluate``):

``result.json``
    ``status``, ``config`` (resolved), ``seeds``, ``history``: a list of per-epoch records
    ``{"epoch", "test/acc", "test/ece", "test/nll", "val/acc"?, "memorisation/fit_given"?,
    "recovery/recovered"?, "eval/<suite>/<key>"?: float, ...}``.
``evaluation.json`` (optional, beside it)
    ``{"checkpoint_epoch", "metrics": {"<suite>/<key>": float | [float]}}`` with e.g.
    ``calibration/{acc,ece,sce,ace,nll,brier}``, ``calibration/reliability/{confidence,
    accuracy,count}`` (lists), ``cifar_c/mean_acc`` or ``corruption/mean_acc``,
    ``{cifar_c,corruption}/s<1-5>/{acc,ece}``, ``cifar_p/mfp``, ``ood/<source>/auroc``,
    ``dark_knowledge/mu`` (K*K list), ``dark_knowledge/{kl_epochs,kl_to_final}`` (lists).

Figures (``--figures DIR``, matplotlib) are drawn by :mod:`noisybench.figures`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import importlib.resources
import io
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisybench.config import NON_IDENTITY_KEYS as _NON_IDENTITY
from noisybench.config import conf_dir, paper_preset
from noisybench.config import identity as _config_identity
from noisybench.errors import UserError
from noisybench.evaluation.selection import RULES as _SELECTION_RULES
from noisybench.evaluation.selection import best_record

__all__ = [
    "METRICS",
    "RULES",
    "TABLES",
    "Cell",
    "Table",
    "build_table",
    "collect",
    "format_table",
    "layout_of",
    "load_paper_tables",
    "load_results",
    "main",
    "mean_std",
    "render",
    "setting_groups",
]

EVALUATION_FILE = "evaluation.json"
NON_IDENTITY_KEYS: tuple[str, ...] = (*_NON_IDENTITY, "seed", "noise.seed")

# Selection rules: name -> (history key maximised, or None for the last epoch; header text).
# The rules themselves are noisybench.evaluation.selection's; here, their column headers.
_HEADERS = {
    "last": "last epoch",
    "best_test": "best on test set",
    "noisy_val": "selected on noisy val",
    "clean_val": "selected on clean val",
}
RULES: dict[str, tuple[str | None, str]] = {
    name: (key, _HEADERS.get(name, name)) for name, (key, _) in _SELECTION_RULES.items()
}


@dataclass(frozen=True)
class Metric:
    """One reported quantity: where it is found, how it is shown, which way is better."""

    label: str
    history: tuple[str, ...]  # keys in a history record (first found wins)
    evaluation: tuple[str, ...] = ()  # keys in evaluation.json's metrics (final checkpoint)
    scale: float = 100.0  # fractions shown in percent
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {
    "acc": Metric("acc (%)", ("test/acc",), ("calibration/acc",)),
    "ece": Metric(
        "ECE (%)", ("test/ece", "eval/calibration/ece"), ("calibration/ece",), 100, False
    ),
    "nll": Metric("NLL", ("test/nll", "eval/calibration/nll"), ("calibration/nll",), 1.0, False),
    "sce": Metric("SCE (%)", ("eval/calibration/sce",), ("calibration/sce",), 100, False),
    "ace": Metric("ACE (%)", ("eval/calibration/ace",), ("calibration/ace",), 100, False),
    "brier": Metric("Brier", ("eval/calibration/brier",), ("calibration/brier",), 1.0, False),
    "cifar10c_acc": Metric(
        "corrupted acc (%)",
        ("eval/cifar_c/mean_acc", "eval/corruption/mean_acc"),
        ("cifar_c/mean_acc", "corruption/mean_acc"),
    ),
    "cifar10p_mfp": Metric("mFP (%)", ("eval/cifar_p/mfp",), ("cifar_p/mfp",), 100, False),
    "ood_auroc_svhn": Metric(
        "OOD AUROC (%)",
        ("eval/ood/svhn/auroc", "eval/ood/sklearn_patches/auroc", "eval/ood/npy/auroc"),
        ("ood/svhn/auroc", "ood/sklearn_patches/auroc", "ood/npy/auroc"),
    ),
    "fit_given": Metric(
        "noisy labels fitted (%)", ("memorisation/fit_given",), higher_is_better=False
    ),
    "recovered": Metric("noisy labels recovered (%)", ("recovery/recovered",)),
    # mini-WebVision's tables: top-1 / top-5 on the WebVision val and on ILSVRC12's val
    "top5": Metric("top-5 acc (%)", ("test/top5",)),
    "imagenet_acc": Metric("ILSVRC12 acc (%)", ("test_imagenet/acc",)),
    "imagenet_top5": Metric("ILSVRC12 top-5 (%)", ("test_imagenet/top5",)),
    "clean_val_acc": Metric("clean val acc (%)", ("val/clean_acc",)),
}


# Every history key a metric is read from (checked once per file by _shape_problem).
_HISTORY_KEYS = tuple(sorted({key for metric in METRICS.values() for key in metric.history}))
_HISTORY_KEY_SET = frozenset(_HISTORY_KEYS)


@dataclass(frozen=True)
class Layout:
    """How a paper table arranges its numbers.

    ``across``: the config group whose values are the columns (``noise``, ``method``), or
    None (the rows are whole experiments). ``metrics_on``: ``cols`` or ``rows``.
    ``paper_key``: the fields an entry of the paper file must share with our row/column for
    the paper's number to stand beside ours (dataset, model and the realised noise setting
    always; ``presets``: the method's hyperparameters are the paper's for that setting,
    ``conf/paper_presets.yaml``; ``hparams``: those the entry lists); other entries are shown
    as separate ``paper:`` reference rows.
    """

    title: str
    metrics: tuple[str, ...]
    across: str | None
    metrics_on: str = "cols"
    paper_key: tuple[str, ...] = ("dataset", "model", "noise", "method", "presets", "metric")
    rules: tuple[str, ...] = ("last",)


TABLES: dict[str, Layout] = {
    "table1": Layout("Table 1: test accuracy (the paper's: clean labels)", ("acc",), "method"),
    "table2": Layout("Table 2: ECE and NLL", ("ece", "nll"), "method", metrics_on="rows"),
    "table3": Layout(
        "Table 3: corruption accuracy and perturbation flip probability",
        ("cifar10c_acc", "cifar10p_mfp"),
        "method",
    ),
    "table4": Layout(
        "Table 4: test accuracy under label noise",
        ("acc",),
        "noise",
        paper_key=("dataset", "model", "noise", "method", "presets", "metric"),
        rules=("last", "best_test"),
    ),
    "table5": Layout(
        "Table 5: accuracy with CutOut / CutMix",
        ("acc",),
        "method",
        paper_key=("dataset", "model", "noise", "method", "augmentation", "metric"),
    ),
    "table6": Layout("Table 6: OOD detection AUROC", ("ood_auroc_svhn",), "method"),
    "table7": Layout(
        "Table 7: calibration",
        ("acc", "ece", "sce", "ace"),
        None,
        paper_key=("dataset", "model", "noise", "method", "hparams", "metric"),
    ),
    "generic": Layout(
        "All runs",
        ("acc",),  # narrow by default; --metrics picks others
        None,
        paper_key=(),
        rules=("last", "best_test"),
    ),
}


def _reference_layout(name: str) -> Layout:
    """The layout of a baseline's reference protocol ``ref_<method>`` (issue 21): ours beside
    the numbers its own paper or code publishes, matched on dataset, method and noise."""
    return Layout(
        f"Reference protocol of {name.removeprefix('ref_')}: test accuracy (its own paper's "
        "setting)",
        ("acc",),
        "noise",
        paper_key=("dataset", "method", "noise", "metric"),
        rules=("last", "best_test"),
    )


# The reference protocols are data: every conf/experiment/ref_<method>.yaml has a table
# ref_<method>, and so has every ref_* table of paper_tables.yaml (:func:`layout_of`), so a
# new baseline needs only its YAML files, no code here.
for _path in sorted(conf_dir().glob("experiment/ref_*.yaml")):
    TABLES[_path.stem] = _reference_layout(_path.stem)


def layout_of(table: str, paper: Mapping[str, Any] | None = None) -> Layout:
    """The layout of ``table``: one of :data:`TABLES`, or a ``ref_*`` table that only
    ``paper_tables.yaml`` (``paper``, loaded when not given) has.

    Raises:
        UserError: no such table.
    """
    if table in TABLES:
        return TABLES[table]
    if table.startswith("ref_") and table in (paper if paper is not None else load_paper_tables()):
        return _reference_layout(table)
    names = sorted(set(TABLES) | {t for t in load_paper_tables() if t.startswith("ref_")})
    raise UserError(f"unknown table {table!r}; use one of {', '.join(names)}")


# The real-noise datasets' published numbers (paper_tables.yaml, tables real_<dataset>, issue
# 24): the paper's number stands beside ours only for the same dataset, network and method.
TABLES["real_clothing1m"] = Layout(
    "Clothing1M: clean test accuracy (ours: the selected epoch's)",
    ("acc",),
    "method",
    paper_key=("dataset", "model", "noise", "method", "metric"),
    rules=("last", "clean_val"),
)
TABLES["real_webvision"] = Layout(
    "mini-WebVision: top-1 accuracy on the WebVision val and the ILSVRC12 val (50 classes)",
    ("acc", "imagenet_acc"),
    "method",
    paper_key=("dataset", "model", "noise", "method", "metric"),
)
# Keys whose value names a row (shown bare, not as key=value), in this order.
_NAME_KEYS = ("dataset.name", "model.name", "noise.name", "method.name")


# ------------------------------------------------------------------------------ loading
# Metric values in result and evaluation files are fractions, NLLs, counts of epochs: anything
# beyond this magnitude is a damaged or forged file (1e308 overflows once shown in percent).
_LARGEST = 1e12
# What a result file's "noise" record and evaluation.json may hold: the newest result schema
# this report knows; files without "schema_version" are version 1 (noisybench 0.2).
RESULT_SCHEMA = 2


def printable(text: Any, keep: str = "") -> str:
    """``text`` with every control, format or surrogate character written as an escape
    (``\\x1b``, ``\\u202e``): names and paths from someone else's run directory must not
    move the cursor, retitle the terminal or reorder a line when printed. ``keep``: characters
    left as they are (the newlines of a whole table)."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in keep or ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _warn(message: str) -> None:
    print(printable(f"noisybench.report: {message}"), file=sys.stderr)


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool) of sane magnitude, else None."""
    kind = type(value)
    if kind is float:  # the common case, without conversions (NaN fails both comparisons)
        return value if -_LARGEST <= value <= _LARGEST else None
    if kind is not int and not (isinstance(value, int | float) and kind is not bool):
        return None
    try:
        out = float(value)
    except OverflowError:  # an integer beyond float range (10**400 in JSON)
        return None
    return out if math.isfinite(out) and abs(out) <= _LARGEST else None


def _epoch(value: Any) -> int | None:
    """An epoch number: a non-negative integer (JSON int, or a float equal to one) below
    :data:`_LARGEST`, else None."""
    if type(value) is int:
        return value if 0 <= value <= _LARGEST else None
    number = _finite(value)
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


def _clean_evaluation(evaluation: Any, path: Path) -> dict[str, Any] | None:
    """``evaluation.json`` reduced to what the report can use: ``checkpoint_epoch`` an epoch
    number and ``metrics`` the entries that are finite numbers (or lists); each damaged entry
    is named on stderr and left out, never a traceback."""
    if not isinstance(evaluation, dict):
        _warn(f"ignoring {path}: not a JSON object")
        return None
    epoch = evaluation.get("checkpoint_epoch")
    if epoch is not None and _epoch(epoch) is None:
        _warn(f"ignoring {path}: checkpoint_epoch is not an epoch number")
        return None
    metrics = evaluation.get("metrics")
    if not isinstance(metrics, dict):
        _warn(f"ignoring {path}: 'metrics' is not an object")
        return None
    kept: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, list):
            kept[key] = value  # reliability diagrams and matrices: for the figures only
        elif _finite(value) is not None:
            kept[key] = float(value)
        else:
            _warn(f"ignoring {key} in {path}: not a finite number of sane magnitude")
    return {"checkpoint_epoch": None if epoch is None else _epoch(epoch), "metrics": kept}


def _result_files(root: Path) -> list[str]:
    """The ``result.json`` files below the folder ``root``, not inside a ``previous/``
    folder, in path order (folder names compared part by part); symbolic links to folders
    are not followed (as ``Path.rglob`` does not)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "previous"]  # earlier attempts' copies
        if "result.json" in files:
            found.append(os.path.join(folder, "result.json"))
    top = len(str(root).rstrip(os.sep).split(os.sep))
    found.sort(key=lambda f: f.split(os.sep)[top:])
    return found


def _real(path: str, root: str, root_real: str) -> str:
    """``path``'s real path, ``path`` being ``root`` followed by more (a file that
    :func:`_result_files` found below ``root``, whose real path is ``root_real``): below
    ``root`` only the file itself may be a link, since no linked folder is followed."""
    if root_real and not os.path.islink(path):
        return root_real + path[len(root) :]
    return os.path.realpath(path)


try:  # optional (pip install 'noisybench[speed]'): parses result files about 3x faster
    import orjson as _orjson
except ImportError:  # pragma: no cover - the standard library's parser then
    _orjson = None


def _read_json(path: Path) -> Any:
    """``path`` parsed as JSON: orjson where installed and the file is strict JSON, else the
    standard library (which also reads NaN, integers beyond 64 bits, lone surrogates and
    non-UTF-8 text in the locale's encoding, as every earlier version did)."""
    if _orjson is not None:
        data = path.read_bytes()
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(path.read_text())


def load_results(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every readable ``result.json`` below ``roots`` (``previous/`` copies excluded), with
    ``run_dir`` and, where present, the run's ``evaluation.json`` under ``"evaluation"``.

    A file reached twice (a folder given twice, or given with one of its parents) is read
    once; files without ``schema_version`` are version 1 and read as such."""
    results = []
    seen: set[str] = set()
    for root in roots:
        root = Path(root)
        folder = root.is_dir()
        found = _result_files(root) if folder else [str(root)] if root.is_file() else []
        root_real = os.path.realpath(root) if folder else ""
        for name in found:
            real = _real(name, str(root), root_real)
            if real in seen:
                continue
            seen.add(real)
            path = Path(name)
            try:
                result = _read_json(path)
            except (OSError, ValueError):
                _warn(f"skipping unreadable {path}")
                continue
            problem = _shape_problem(result)
            if problem is not None:
                _warn(f"skipping {path}: not a noisybench result ({problem})")
                continue
            version = result.get("schema_version", 1)
            if _epoch(version) is None or version > RESULT_SCHEMA:
                _warn(
                    f"skipping {path}: result schema_version {version!r} is newer than this "
                    f"report reads ({RESULT_SCHEMA}); update noisybench"
                )
                continue
            result["run_dir"] = str(path.parent)
            evaluation = path.parent / EVALUATION_FILE
            if evaluation.is_file():
                try:
                    parsed = _read_json(evaluation)
                except (OSError, ValueError):
                    _warn(f"skipping unreadable {evaluation}")
                else:
                    cleaned = _clean_evaluation(parsed, evaluation)
                    if cleaned is not None:
                        result["evaluation"] = cleaned
            results.append(result)
    return results


def load_paper_tables() -> dict[str, Any]:
    """The paper's Tables 1-7 (``noisybench/paper_tables.yaml``, shipped with the package)."""
    import yaml

    text = (importlib.resources.files("noisybench") / "paper_tables.yaml").read_text("utf-8")
    return yaml.safe_load(text)["tables"]


def _shape_problem(result: Any) -> str | None:  # noqa: C901
    """Why ``result`` (parsed JSON) does not have the shape of a result file, or None."""
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not an object"
    for key in ("config", "seeds", "noise"):
        if not isinstance(result.get(key, {}), dict):
            return f"'{key}' is not an object"
    for group in ("dataset", "model", "noise", "method"):
        if not isinstance(result.get("config", {}).get(group, {}), dict):
            return f"'config.{group}' is not an object"
    history = result.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "'history' is not a list of objects"
    for key in ("last", "best"):
        if result.get(key) is not None and not isinstance(result.get(key), dict):
            return f"'{key}' is not an object"
    for entry in [*history, result.get("last") or {}, result.get("best") or {}]:
        epoch = entry.get("epoch")
        if epoch is not None and _epoch(epoch) is None:
            return "an 'epoch' is not an epoch number"
        # Only the metric keys the record has (a set intersection, not one lookup per
        # known key: 10,000 files of 100 epochs are a million records).
        present = _HISTORY_KEY_SET.intersection(entry)
        for name in present:
            value = entry[name]
            if type(value) is float and -_LARGEST <= value <= _LARGEST:
                continue  # the common case, inline
            if _insane(value):
                name = min(n for n in present if _insane(entry[n]))  # as in sorted order
                return f"'{name}' is not a finite number of sane magnitude"
    return None


def _insane(value: Any) -> bool:
    """A metric value that is neither absent (None), NaN (a diverged epoch) nor a finite
    number of sane magnitude (:func:`_finite`)."""
    if type(value) is float and -_LARGEST <= value <= _LARGEST:
        return False  # the common case, first
    if value is None or value != value:
        return False
    return _finite(value) is None


# ------------------------------------------------------------------------------ grouping
def identity(config: Mapping[str, Any]) -> dict[str, str]:
    """A run's experiment identity without its seeds (:func:`noisybench.config.identity`:
    the config minus the keys that do not change an experiment, the seeds, and the keys a
    config node lists in ``seed_keys``), values as JSON text."""
    flat = _config_identity(config, with_seed=False)
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


@dataclass
class Group:
    """Runs of one experiment (same identity), differing only in their seeds."""

    ident: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def name(self, key: str) -> Any:
        value = self.ident.get(key)
        return None if value is None else json.loads(value)


@functools.cache
def _shipped_noise() -> dict[str, dict[str, Any]]:
    """The noise settings shipped in ``conf/noise/*.yaml``: ``{name: {variant, rate,
    asym_map, setting, preset_rate}}`` (what defines the labels a setting draws, and which
    paper presets it selects)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for path in sorted(conf_dir().glob("noise/*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text("utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            keys = (*_DEFINING_NOISE_KEYS, "setting", "preset_rate")
            out[spec["name"]] = {k: spec.get(k) for k in keys}
    return out


# The keys of a noise config that decide which labels it draws (seed aside).
_DEFINING_NOISE_KEYS = ("variant", "rate", "asym_map")


def setting_name(noise_config: Mapping[str, Any], record: Mapping[str, Any] | None = None) -> str:
    """The noise a run was trained under, named by what it realised rather than by the config
    file it started from: ``noise=sym50 noise.rate=0.2`` is ``sym20`` (the shipped setting with
    the same variant and rate), ``noise.rate=0.35`` is ``sym_incl rate=0.35``, and a saved
    label file is ``labels FILE (45.2 % wrong)`` with the realised rate from the run's noise
    record (REFERENCE.md section 4) whatever ``noise=`` said."""
    name = str(noise_config.get("name", "?"))
    label_file = noise_config.get("label_file")
    if label_file:
        text = f"labels {Path(str(label_file)).name}"
        realised = _finite((record or {}).get("realised_rate"))
        return text + (f" ({100 * realised:.1f} % wrong)" if realised is not None else "")
    given = {k: noise_config[k] for k in _DEFINING_NOISE_KEYS if k in noise_config}
    if not given:
        return name

    def same(spec: Mapping[str, Any]) -> bool:
        for key, value in given.items():
            want = spec.get(key)
            if isinstance(value, int | float) and isinstance(want, int | float):
                if not math.isclose(float(value), float(want), abs_tol=1e-9):
                    return False
            elif value != want:
                return False
        return True

    shipped = _shipped_noise()
    if name in shipped and same(shipped[name]):
        return name
    for other, spec in shipped.items():
        if same(spec):
            return other
    rate = _finite(noise_config.get("rate"))
    variant = noise_config.get("variant", name)
    return f"{variant} rate={rate:g}" if rate is not None else f"{variant} ({name})"


TEACHER_KIND = "method.teacher.kind"


@functools.cache
def _default_teacher() -> tuple[tuple[str, str], ...]:
    """The identity entries of ``conf/teacher/ensemble.yaml`` (``method.teacher.*``): KD's
    behaviour without ``+teacher=`` is that teacher (the mean softmax of every network of its
    teacher runs, on the fly; docs/teachers.md)."""
    import yaml

    try:
        spec = yaml.safe_load((conf_dir() / "teacher" / "ensemble.yaml").read_text("utf-8"))
    except (OSError, yaml.YAMLError):
        spec = None
    spec = spec if isinstance(spec, dict) else {"kind": "ensemble"}
    return tuple((f"method.teacher.{k}", json.dumps(v, sort_keys=True)) for k, v in spec.items())


def _with_teacher_kind(ident: dict[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """A KD student's identity with its teacher's kind (issue 27's ``method.teacher.kind``:
    deterministic, ensemble, mc_dropout, swag, laplace), so that students are grouped and
    labelled by it; a KD run without ``method.teacher`` (a ``method.teacher_runs`` key and no
    teacher node) counts as the ``ensemble`` teacher it uses, with that file's settings."""
    method = config.get("method")
    if not isinstance(method, Mapping) or "teacher_runs" not in method:
        return ident
    if any(k.startswith("method.teacher.") for k in ident):
        return ident
    return {**ident, **dict(_default_teacher())}


def _method_text(part: Mapping[str, str], name: Any) -> str:
    """A method's name in a label, with a KD student's teacher kind: ``kd [swag]``."""
    kind = part.get(TEACHER_KIND)
    return str(name) if kind is None else f"{name} [{json.loads(kind)}]"


def _follows_from_kind(
    key: str, part: Mapping[str, str], same: Sequence[Mapping[str, str]]
) -> bool:
    """Whether a teacher setting (``method.teacher.samples``) is the same for every part with
    ``part``'s teacher kind: it follows from the kind shown in the name and is not listed."""
    if not key.startswith("method.teacher.") or key == TEACHER_KIND:
        return False
    peers = [q for q in same if q.get(TEACHER_KIND) == part.get(TEACHER_KIND)]
    return len({q.get(key) for q in peers}) < 2


def _seed_key(result: Mapping[str, Any]) -> str:
    seeds = result.get("seeds") or {}
    return json.dumps([seeds.get("train"), seeds.get("noise")], sort_keys=True, default=str)


def _progress(result: Mapping[str, Any]) -> tuple[bool, int]:
    return result.get("status") == "finished", len(result.get("history") or [])


def collect(results: Sequence[dict[str, Any]], include_unfinished: bool = False) -> list[Group]:
    """Groups of runs that differ only in their seeds (finished runs unless asked).

    The noise setting in a group's identity is the realised one (:func:`setting_name`). A run
    found in several folders (same identity and seeds: a copied run directory) is counted
    once, the most advanced copy, with a line on stderr naming both."""
    groups: dict[str, Group] = {}
    where: dict[tuple[str, str], int] = {}
    for result in results:
        if result.get("status") != "finished" and not include_unfinished:
            continue
        config = result.get("config") or {}
        ident = _with_teacher_kind(identity(config), config)
        noise = config.get("noise") or {}
        ident["noise.name"] = json.dumps(setting_name(noise, result.get("noise")))
        key = json.dumps(ident, sort_keys=True)
        group = groups.setdefault(key, Group(ident))
        seen = where.get((key, _seed_key(result)))
        if seen is None:
            where[(key, _seed_key(result))] = len(group.runs)
            group.runs.append(result)
            continue
        other = group.runs[seen]
        keep, drop = (result, other) if _progress(result) > _progress(other) else (other, result)
        group.runs[seen] = keep
        _warn(
            f"{drop.get('run_dir')} holds the same run as {keep.get('run_dir')} (same "
            "experiment and seeds); counted once"
        )
    return list(groups.values())


def _select(history: Sequence[Mapping[str, Any]], rule: str) -> Mapping[str, Any] | None:
    """The history record ``rule`` selects (earliest on ties), or None."""
    # Foreign or damaged histories: only sane numbers compete (see _finite).
    return best_record(history, RULES[rule][0], _sane)


def _sane(value: Any) -> bool:
    """A finite number of sane magnitude (:func:`_finite`), the common case first."""
    return (type(value) is float and -_LARGEST <= value <= _LARGEST) or _finite(value) is not None


def _seed_of(run: Mapping[str, Any]) -> Any:
    """A run's training seed as recorded (an int for noisybench's runs)."""
    seed = (run.get("seeds") or {}).get("train", "?")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else printable(seed)


def _seed_order(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, int) else (1, str(seed))


def run_value(result: Mapping[str, Any], metric: str, rule: str) -> float | None:
    """One run's value of ``metric`` at the epoch ``rule`` selects (as stored, unscaled).

    Per-epoch history keys first; ``evaluation.json`` next, only when the weights it evaluated
    are those of the selected epoch (its ``checkpoint_epoch``: the last checkpoint's, or the
    selected epoch's ``selected.pt``, which ``noisybench evaluate`` uses by default)."""
    m = METRICS[metric]
    history = result.get("history") or []
    record = _select(history, rule)
    if record is None:
        return None
    for key in m.history:
        value = _finite(record.get(key))
        if value is not None:
            return value
    # evaluation.json was cleaned on loading (_clean_evaluation): epochs and values are sane.
    evaluation = result.get("evaluation") or {}
    if m.evaluation:
        epoch = evaluation.get("checkpoint_epoch")
        if epoch is None and rule != "last":  # an old file: the last checkpoint's numbers
            return None
        if epoch is not None and epoch != _epoch(record.get("epoch", -1)):
            return None
        metrics = evaluation.get("metrics") or {}
        for key in m.evaluation:
            value = _finite(metrics.get(key))
            if value is not None:
                return value
    return None


# ------------------------------------------------------------------------------ the table
@dataclass
class Cell:
    """One number of a table: ours (mean, std, n over seeds) or the paper's (n = None)."""

    mean: float | None
    std: float | None = None
    n: int | None = None
    bold: bool = False
    paper: bool = False
    values: list[float] | None = None  # ours: one value per seed, in the order of ``seeds``
    seeds: list[Any] | None = None


@dataclass
class Column:
    key: str  # unique id
    label: str  # header text
    metric: str
    rule: str | None  # None: the paper's column
    group: str  # the label of the column-axis value this sub-column belongs to


@dataclass
class Row:
    label: str
    source: str  # "ours" or "paper"
    cells: dict[str, Cell] = field(default_factory=dict)
    seeds: list[Any] = field(default_factory=list)
    bucket: str = ""  # rows compared for bold (same dataset, model, noise)


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str]
    row_header: str = "run"


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return str(int(value))
    return str(value)


def _labels(parts: Sequence[Mapping[str, str]], names: Sequence[str]) -> list[str]:
    """Readable labels for identity parts: the ``names`` keys' values, then what tells parts
    with the same names apart: ``group=<name>`` where a config group's choice differs (its
    other keys follow from the choice and are not listed), ``key=value`` where a key differs
    between parts with the same group choice (``key=-`` where a part lacks it)."""
    out = []
    for p in parts:
        same = [q for q in parts if all(q.get(k) == p.get(k) for k in names)]
        keys = sorted(set().union(*[q.keys() for q in same]))
        extra = []
        shown_groups = set()
        for k in keys:
            if k in names or k.endswith("._target_") or len({q.get(k) for q in same}) < 2:
                continue
            if k == TEACHER_KIND and "method.name" in names:
                continue  # in the method's name: kd [swag]
            if _follows_from_kind(k, p, same):
                continue
            group = k.split(".")[0] if "." in k else None
            gname = f"{group}.name"
            if group and gname in keys and len({q.get(gname) for q in same}) > 1:
                peers = [q for q in same if q.get(gname) == p.get(gname)]
                if k == gname:
                    shown_groups.add(group)
                    extra.append(f"{group}={json.loads(p[k]) if k in p else '-'}")
                    continue
                if len({q.get(k) for q in peers}) < 2:
                    continue  # follows from the group's choice
            extra.append(f"{k}={_fmt_value(json.loads(p[k])) if k in p else '-'}")
        bits = [
            _method_text(p, json.loads(p[k])) if k == "method.name" else str(json.loads(p[k]))
            for k in names
            if k in p
        ]
        label = " / ".join(bits) if bits else "run"
        out.append(label + (f" ({', '.join(extra)})" if extra else ""))
    return out


def _merge_disjoint(
    parts: Sequence[Mapping[str, str]], names: Sequence[str], cover: Sequence[set[int]]
) -> list[list[int]]:
    """Indices of ``parts`` grouped: parts with equal ``names`` values whose ``cover`` sets
    (the cells of the other axis they fill) are pairwise disjoint become one entry."""
    buckets: dict[str, list[int]] = {}
    for i, part in enumerate(parts):
        buckets.setdefault(json.dumps([part.get(k) for k in names]), []).append(i)
    out: list[list[int]] = []
    for members in buckets.values():
        sets = [cover[i] for i in members]
        if len(members) > 1 and sum(len(x) for x in sets) == len(set().union(*sets)):
            out.append(members)
        else:
            out.extend([i] for i in members)
    out.sort(key=min)
    return out


def _common(parts: Sequence[Mapping[str, str]], members: Sequence[int]) -> dict[str, str]:
    """The key-value pairs all ``members`` share."""
    return dict(set.intersection(*[set(parts[i].items()) for i in members]))


def _diff_text(part: Mapping[str, str], common: Mapping[str, str]) -> str:
    return ", ".join(
        f"{k}={_fmt_value(json.loads(v))}"
        for k, v in sorted(part.items())
        if common.get(k) != v and not k.endswith("._target_")
    )


def _merge_notes(grid: _Grid, of_columns: bool) -> list[str]:
    """One note per merged column (``of_columns``) or row whose members' settings differ: for
    each member, the labels of the other axis's cells it fills and what sets it apart from
    the merged label."""
    rows = (grid.row_merged, grid.row_parts, grid.row_views, grid.row_labels)
    cols = (grid.col_merged, grid.col_parts, grid.col_views, grid.col_labels)
    mine, other = (cols, rows) if of_columns else (rows, cols)
    merged, parts, views, labels = mine
    other_merged, other_labels = other[0], other[3]
    joiner, other_axis = (" / ", "row") if of_columns else (", ", "column")

    def present(other: int, member: int) -> bool:
        return ((other, member) if of_columns else (member, other)) in grid.present

    notes = []
    for m, members in enumerate(merged):
        if len(members) > 1:
            per = [
                joiner.join(
                    other_labels[o]
                    for o, other in enumerate(other_merged)
                    if any(present(x, c) for x in other)
                )
                + ": "
                + _diff_text(parts[c], views[m])
                for c in members
            ]
            notes.append(f"{labels[m]}: settings differ per {other_axis} ({'; '.join(per)})")
    return notes


def _column_labels(parts: Sequence[Mapping[str, str]], group: str) -> list[str]:
    """Labels of column-axis values: the group's name plus the keys that differ among the
    parts with the same name (``bsd (method.gamma=0.5)``)."""
    names = [json.loads(p.get(f"{group}.name", '"?"')) for p in parts]
    out = []
    for i, p in enumerate(parts):
        same = [q for q, n in zip(parts, names, strict=True) if n == names[i]]
        differing = sorted(
            k
            for k in set().union(*[q.keys() for q in same])
            if len({q.get(k) for q in same}) > 1
            and not k.endswith("._target_")
            and not (group == "method" and k == TEACHER_KIND)  # in the name: kd [swag]
            and not (group == "method" and _follows_from_kind(k, p, same))
        )
        extra = [f"{k}={_fmt_value(json.loads(p[k])) if k in p else '-'}" for k in differing]
        name = _method_text(p, names[i]) if group == "method" else str(names[i])
        out.append(name + (f" ({', '.join(extra)})" if extra else ""))
    return out


def _paper_order(entries: Sequence[Mapping[str, Any]], field_name: str) -> list[Any]:
    order: list[Any] = []
    for e in entries:
        if e.get(field_name) not in order:
            order.append(e.get(field_name))
    return order


def _augmentation(ident: Mapping[str, str]) -> str | None:
    value = ident.get("method.mix_half") or ident.get("augment.mix")
    return None if value is None else json.loads(value)


@functools.cache
def _preset_keys() -> dict[tuple[str, str], frozenset[str]]:
    """``{(method, setting): keys}`` that ``conf/paper_presets.yaml`` gives values for."""
    import yaml

    try:
        presets = yaml.safe_load((conf_dir() / "paper_presets.yaml").read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[tuple[str, str], frozenset[str]] = {}
    for method, settings in presets.items():
        for setting, entries in (settings or {}).items():
            keys = {k for e in entries or [] for k in (e.get("values") or {})}
            out[(str(method), str(setting))] = frozenset(keys)
    return out


def _presets_match(ident: Mapping[str, str]) -> bool:
    key = tuple(sorted((k, v) for k, v in ident.items() if k.startswith(("method.", "noise.name"))))
    return _presets_match_cached(key)


@functools.cache
def _presets_match_cached(items: tuple[tuple[str, str], ...]) -> bool:
    ident = dict(items)
    return _presets_match_uncached(ident)


def _presets_match_uncached(ident: Mapping[str, str]) -> bool:
    """Whether a group's method hyperparameters are the paper's for its noise setting and
    rate (Appendix A.1 as transcribed in ``conf/paper_presets.yaml``); True for a method
    the file has no values for. ``bsd method.gamma=0.8`` under symmetric noise is not the
    paper's BSD (gamma 0.85), so its row does not get the paper's number beside it."""

    def value(key: str) -> Any:
        raw = ident.get(key)
        return None if raw is None else json.loads(raw)

    method = str(value("method.name"))
    # The realised setting's shipped config says which presets apply (noise.setting and
    # noise.preset_rate are not part of a run's identity: the values they select are).
    shipped = _shipped_noise().get(str(value("noise.name")))
    if shipped is None:
        return False  # not a shipped setting (a rate of its own): no paper cell
    setting = str(shipped.get("setting") or "none")
    rate = shipped.get("preset_rate")
    rate = _finite(shipped.get("rate") if rate is None else rate) or 0.0
    for key in sorted(_preset_keys().get((method, setting), ())):
        try:
            paper = paper_preset(method, setting, rate, key)
        except UserError:
            return False  # the paper gives no value for this rate: not its cell
        ours = value(f"method.{key}")
        if isinstance(paper, int | float) and _finite(ours) is not None:
            if not math.isclose(float(ours), float(paper), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif ours != paper:
            return False
    return True


def _paper_match(entry: Mapping[str, Any], want: Mapping[str, Any], keys: Sequence[str]) -> bool:
    for k in keys:
        if k == "hparams":
            hp = entry.get("hparams")
            if hp and any(want.get(f"method.{h}") != v for h, v in hp.items()):
                return False
        elif k == "augmentation":
            if entry.get("augmentation") != want.get("augmentation"):
                return False
        elif k == "presets":
            if not want.get("presets"):
                return False
        elif entry.get(k) != want.get(k):
            return False
    return True


def build_table(
    groups: Sequence[Group],
    table: str = "generic",
    rules: Sequence[str] | None = None,
    paper: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
) -> Table:
    """Lay ``groups`` out as ``table`` with the selection ``rules`` (default: the layout's,
    plus ``noisy_val`` when a run has ``val/acc``) and the paper's numbers beside ours.
    ``metrics``: the quantities shown (default: the layout's; see :data:`METRICS`)."""
    layout = _layout(table, metrics, paper)
    rules = _table_rules(groups, layout, rules)
    entries = list(paper[table]["entries"]) if paper is not None and table in paper else []
    grid = _grid(groups, layout.across, entries)
    columns = _columns(grid, layout, rules, bool(entries))
    metric_rows = layout.metrics if layout.metrics_on == "rows" else ("*",)
    paper_cells = _PaperCells(entries, layout.paper_key)
    rows = [_row(grid, ri, m, columns, paper_cells) for ri in grid.row_order for m in metric_rows]

    # Reference rows: paper entries not shown beside ours, for the displayed columns.
    used = paper_cells.used
    ref_rows, in_refs = _reference_rows(entries, used, columns, layout, grid.col_views, metric_rows)
    shown = used | in_refs
    _bold(rows, columns, layout)
    notes = _notes(groups, layout, rules, entries, table, paper) + grid.merge_notes
    notes += _source_notes(paper.get(table) if paper else None, [entries[i] for i in sorted(shown)])
    # Labels, notes and seeds come from the run directories' files: no control character of
    # theirs reaches a terminal or a rendered table.
    for row in rows:
        row.label = printable(row.label)
    for col in columns:
        col.label, col.group = printable(col.label), printable(col.group)
    notes = [printable(n) for n in notes]
    out = Table(table, layout.title, columns, rows + ref_rows, notes)
    out.row_header = {"noise": "method", "method": "dataset / model"}.get(
        layout.across or "", "run"
    )
    return out


def _layout(table: str, metrics: Sequence[str] | None, paper: Mapping[str, Any] | None) -> Layout:
    """The layout of ``table`` (:func:`layout_of`), with ``metrics`` instead of its own when
    given."""
    layout = layout_of(table, paper)
    if metrics is None:
        return layout
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserError(
            f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"use --metrics with some of {', '.join(METRICS)}"
        )
    return dataclasses.replace(layout, metrics=tuple(metrics))


def _table_rules(groups: Sequence[Group], layout: Layout, rules: Sequence[str] | None) -> list[str]:
    """The selection rules shown: ``rules``, or the runs' own rule (their ``selection``,
    schema 2: the headline column) first, then the layout's, then ``noisy_val`` /
    ``clean_val`` when a run recorded ``val/acc`` / ``val/clean_acc``."""
    if rules is None:
        recorded = [
            run.get("selection_rule")
            for g in groups
            for run in g.runs
            if run.get("selection_rule") in RULES
        ]
        rules = list(dict.fromkeys([*recorded, *layout.rules]))
        for rule, key in (("noisy_val", "val/acc"), ("clean_val", "val/clean_acc")):
            runs = (run for g in groups for run in g.runs)
            if rule not in rules and any(
                key in r for run in runs for r in run.get("history") or []
            ):
                rules.append(rule)
    for rule in rules:
        if rule not in RULES:
            raise UserError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
    return list(rules)


@dataclass
class _Grid:
    """The groups laid out on a grid: rows and columns are the distinct row and column parts
    of the groups' identities (``present[(row, col)]`` the group of a cell), merged where
    entries of one name cover disjoint cells (``row_merged``/``col_merged`` list the parts of
    each displayed row/column, ``*_views`` what they share, ``*_labels`` their labels), in
    the displayed order (``row_order``, ``col_order``)."""

    across: str | None
    names: list[str]
    row_parts: list[dict[str, str]]
    col_parts: list[dict[str, str]]
    present: dict[tuple[int, int], Group]
    row_merged: list[list[int]]
    col_merged: list[list[int]]
    row_views: list[dict[str, str]]
    col_views: list[dict[str, str]]
    row_labels: list[str]
    col_labels: list[str]
    merge_notes: list[str]
    row_order: list[int] = field(default_factory=list)
    col_order: list[int] = field(default_factory=list)


def _split_identities(
    groups: Sequence[Group], across: str | None
) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[tuple[int, int], Group]]:
    """Each group's identity split into its row part and its column part (the keys of the
    ``across`` group); returns the distinct row parts, column parts and the cell of each
    group."""

    def split(g: Group) -> tuple[dict[str, str], dict[str, str]]:
        if across is None:
            return dict(g.ident), {}
        col = {k: v for k, v in g.ident.items() if k.startswith(across + ".")}
        row = {k: v for k, v in g.ident.items() if not k.startswith(across + ".")}
        return row, col

    row_keys: list[str] = []
    row_parts: list[dict[str, str]] = []
    col_keys: list[str] = []
    col_parts: list[dict[str, str]] = []
    present: dict[tuple[int, int], Group] = {}
    for g in groups:
        row, col = split(g)
        rk, ck = json.dumps(row, sort_keys=True), json.dumps(col, sort_keys=True)
        if rk not in row_keys:
            row_keys.append(rk)
            row_parts.append(row)
        if ck not in col_keys:
            col_keys.append(ck)
            col_parts.append(col)
        present[(row_keys.index(rk), col_keys.index(ck))] = g
    return row_parts, col_parts, present


def _grid(groups: Sequence[Group], across: str | None, entries: Sequence[Any]) -> _Grid:
    """:class:`_Grid` of ``groups`` for a layout whose columns are the values of ``across``."""
    row_parts, col_parts, present = _split_identities(groups, across)
    names = [k for k in _NAME_KEYS if across is None or not k.startswith(across + ".")]
    if across == "noise":
        names = ["method.name"]
    elif across == "method":
        names = ["dataset.name", "model.name"]

    # Entries of one name whose runs cover disjoint cells of the other axis are one entry: the
    # paper presets give a method other settings per noise level (Table 4's BSD row, the BSD
    # column of Table 1 over several noise levels); the differences are listed in a note.
    if across is None:
        col_merged = [[0]]
        row_merged = [[i] for i in range(len(row_parts))]
    else:
        col_cover = [{r for (r, c) in present if c == ci} for ci in range(len(col_parts))]
        col_merged = _merge_disjoint(col_parts, [f"{across}.name"], col_cover)
        col_of = {ci: m for m, members in enumerate(col_merged) for ci in members}
        row_cover = [{col_of[c] for (r, c) in present if r == ri} for ri in range(len(row_parts))]
        row_merged = _merge_disjoint(row_parts, names, row_cover)
    row_views = [_common(row_parts, m) for m in row_merged]
    col_views = [_common(col_parts, m) for m in col_merged]
    row_labels = _labels(row_views, names)
    col_labels = _column_labels(col_views, across) if across else [""]
    grid = _Grid(
        across, names, row_parts, col_parts, present, row_merged, col_merged,
        row_views, col_views, row_labels, col_labels, [],
    )  # fmt: skip
    if across is not None:
        grid.merge_notes = _merge_notes(grid, of_columns=True) + _merge_notes(grid, False)
    _order(grid, entries)
    return grid


def _order(grid: _Grid, entries: Sequence[Any]) -> None:
    """Order columns as the paper does (then by label), rows by method in the paper's order
    (by label when the columns are the methods)."""

    def order_key(part: Mapping[str, str], group: str, label: str) -> tuple[int, str]:
        name = json.loads(part.get(f"{group}.name", '""'))
        known = _paper_order(entries, group)
        return (known.index(name) if name in known else len(known), label)

    across = grid.across
    grid.col_order = list(range(len(grid.col_merged)))
    if across:
        grid.col_order.sort(key=lambda i: order_key(grid.col_views[i], across, grid.col_labels[i]))
    grid.row_order = list(range(len(grid.row_merged)))
    if across != "method":
        grid.row_order.sort(
            key=lambda i: order_key(grid.row_views[i], "method", grid.row_labels[i])
        )
    else:
        grid.row_order.sort(key=lambda i: grid.row_labels[i])


def _columns(grid: _Grid, layout: Layout, rules: Sequence[str], with_paper: bool) -> list[Column]:
    """For each column value (and metric when metrics are columns): one sub-column per rule,
    then the paper's (``with_paper``)."""
    metrics_cols = layout.metrics if layout.metrics_on == "cols" else ("*",)
    columns: list[Column] = []
    for ci in grid.col_order:
        for metric in metrics_cols:
            prefix = " ".join(
                x
                for x in (grid.col_labels[ci], "" if metric == "*" else METRICS[metric].label)
                if x
            )
            for rule in rules:
                columns.append(
                    Column(
                        f"{ci}|{metric}|{rule}",
                        f"{prefix} · {RULES[rule][1]}".strip(" ·"),
                        metric,
                        rule,
                        prefix,
                    )
                )
            if with_paper:
                columns.append(
                    Column(
                        f"{ci}|{metric}|paper",
                        f"{prefix} · paper".strip(" ·"),
                        metric,
                        None,
                        prefix,
                    )
                )
    return columns


def _row(grid: _Grid, ri: int, mrow: str, columns: Sequence[Column], paper: _PaperCells) -> Row:
    """Displayed row ``ri`` (metric ``mrow`` when metrics are rows, else ``*``): our cells
    and the paper's."""
    label = grid.row_labels[ri] + ("" if mrow == "*" else f" · {METRICS[mrow].label}")
    bucket = json.dumps(
        [grid.row_views[ri].get(k) for k in grid.names if k != "method.name"] + [mrow]
    )
    row = Row(label, "ours", bucket=bucket)
    for col in columns:
        ci = int(col.key.split("|")[0])
        metric = mrow if col.metric == "*" else col.metric
        cells_here = [
            (r, c)
            for r in grid.row_merged[ri]
            for c in grid.col_merged[ci]
            if (r, c) in grid.present
        ]
        r0, c0 = cells_here[0] if cells_here else (grid.row_merged[ri][0], grid.col_merged[ci][0])
        g = grid.present.get((r0, c0))
        if g is None:
            continue
        if col.rule is None:
            want = {**grid.row_parts[r0], **grid.col_parts[c0]}
            cell = paper.cell(want, metric)
        else:
            cell = _our_cell(g, metric, col.rule, row)
        if cell is not None:
            row.cells[col.key] = cell
    return row


@dataclass
class _PaperCells:
    """The paper's numbers (``entries`` of ``paper_tables.yaml``, matched on ``paper_key``)
    beside ours; ``used``: the entries shown so far (the others become reference rows)."""

    entries: Sequence[Any]
    paper_key: tuple[str, ...]
    used: set[int] = field(default_factory=set)

    def cell(self, want: Mapping[str, str], metric: str) -> Cell | None:
        """The paper's number for the cell whose identity is ``want`` (the first matching
        entry), or None."""
        fields = {
            "dataset": json.loads(want.get("dataset.name", "null")),
            "model": json.loads(want.get("model.name", "null")),
            "method": json.loads(want.get("method.name", "null")),
            "noise": json.loads(want.get("noise.name", "null")),
            "augmentation": _augmentation(want),
            "presets": _presets_match(want),
            "metric": metric,
            **{k: json.loads(v) for k, v in want.items() if k.startswith("method.")},
        }
        hits = [i for i, e in enumerate(self.entries) if _paper_match(e, fields, self.paper_key)]
        if not hits:
            return None
        e = self.entries[hits[0]]
        self.used.update(hits[:1])
        return Cell(e["value"], e.get("std"), None, bool(e.get("bold")), True)


def _our_cell(g: Group, metric: str, rule: str, row: Row) -> Cell | None:
    """Our mean and std over the seeds of group ``g`` of ``metric`` at the epoch ``rule``
    selects (None when no seed has it); adds the group's seeds to ``row.seeds``."""
    per_seed = sorted(
        (
            (_seed_of(run), v * METRICS[metric].scale)
            for run in g.runs
            if (v := run_value(run, metric, rule)) is not None
        ),
        key=lambda t: _seed_order(t[0]),
    )
    seeds = [_seed_of(run) for run in g.runs]
    row.seeds = sorted(set(row.seeds) | set(seeds), key=_seed_order)
    if not per_seed:
        return None
    got = [v for _, v in per_seed]
    mean, std = mean_std(got)
    return Cell(
        mean,
        std if len(got) > 1 else None,
        len(got),
        values=got,
        seeds=[s for s, _ in per_seed],
    )


def _reference_rows(
    entries: Sequence[Mapping[str, Any]],
    used: set[int],
    columns: Sequence[Column],
    layout: Layout,
    col_parts: Sequence[Mapping[str, str]],
    metric_rows: Sequence[str],
) -> tuple[list[Row], set[int]]:
    """The paper's rows that no row of ours carries, restricted to the displayed columns,
    and the indices of the entries they show."""
    paper_cols = [c for c in columns if c.rule is None]
    shown: set[int] = set()
    if not paper_cols:
        return [], shown
    across = layout.across
    # The identity of a reference row: every paper field but the column axis and the metric.
    row_fields = [f for f in ("dataset", "model", "method", "label", "section") if f != across]
    if across == "method":
        row_fields = ["dataset", "model"]
    rows: dict[str, Row] = {}
    for i, e in enumerate(entries):
        if i in used:
            continue
        for col in paper_cols:
            ci = int(col.key.split("|")[0])
            metric = e["metric"] if col.metric == "*" else col.metric
            if e["metric"] != metric or (col.metric == "*" and metric not in metric_rows):
                continue
            if across is not None:
                name = json.loads(col_parts[ci].get(f"{across}.name", "null"))
                if e.get(across) != name:
                    continue
                if "augmentation" in layout.paper_key and e.get("augmentation") != _augmentation(
                    col_parts[ci]
                ):
                    continue
            base = e.get("label") or " / ".join(str(e[f]) for f in row_fields if e.get(f))
            if across == "method":
                base = f"{e['dataset']} / {e['model']}"
            label = "paper: " + base + ("" if col.metric != "*" else f" · {METRICS[metric].label}")
            row = rows.setdefault(label, Row(label, "paper"))
            row.cells[col.key] = Cell(e["value"], e.get("std"), None, bool(e.get("bold")), True)
            shown.add(i)
    return list(rows.values()), shown


def _bold(rows: Sequence[Row], columns: Sequence[Column], layout: Layout) -> None:
    """Bold the best of our means along the method axis (ties by the shown precision):
    per column when methods are rows, per row (and metric, rule) when methods are columns.
    Only where at least two numbers compete."""
    ours = [r for r in rows if r.source == "ours"]
    if layout.across == "method":
        for row in ours:
            for (metric, _), cells in _row_buckets(row, columns, layout).items():
                _bold_best(cells, metric)
        return
    for col in columns:
        if col.rule is None:
            continue
        for bucket in {r.bucket for r in ours}:
            cells = [r.cells[col.key] for r in ours if r.bucket == bucket and col.key in r.cells]
            _bold_best(cells, col.metric)


def _row_buckets(
    row: Row, columns: Sequence[Column], layout: Layout
) -> dict[tuple[str, str], list[Cell]]:
    """Our cells of ``row`` (methods are columns) by (metric, rule): the numbers that
    compete for bold."""
    metric_of_row = row.label.rsplit(" · ", 1)[-1]
    buckets: dict[tuple[str, str], list[Cell]] = {}
    for col in columns:
        if col.rule is None or col.key not in row.cells:
            continue
        metric = col.metric
        if metric == "*":
            metric = next(m for m in layout.metrics if METRICS[m].label == metric_of_row)
        buckets.setdefault((metric, col.rule), []).append(row.cells[col.key])
    return buckets


def _bold_best(cells: Sequence[Cell], metric: str) -> None:
    """Bold the best of our ``cells`` of ``metric`` (by the shown precision), when at least
    two compete."""
    vals = [c for c in cells if c.mean is not None and not c.paper]
    if len(vals) < 2:
        return
    hi = METRICS[metric].higher_is_better
    target = (max if hi else min)(round(c.mean, 2) for c in vals)
    for c in vals:
        c.bold = round(c.mean, 2) == target


def _notes(
    groups: Sequence[Group],
    layout: Layout,
    rules: Sequence[str],
    entries: Sequence[Mapping[str, Any]],
    table: str,
    paper: Mapping[str, Any] | None = None,
) -> list[str]:
    notes = [
        "ours: mean ± sample std (ddof = 1) over seeds, n = number of seeds (no ± for one "
        "seed); bold: the best of ours along the methods."
    ]
    shared = {}
    if groups:
        common = set.intersection(*[set(g.ident.items()) for g in groups])
        for k in ("dataset.name", "model.name", "noise.name", "method.name", "epochs"):
            for key, value in common:
                if key == k:
                    shared[k] = json.loads(value)
    if shared:
        notes.append(
            "ours, common to all rows: " + ", ".join(f"{k}={v}" for k, v in shared.items())
        )
    reference = table.startswith("ref_")  # a baseline's own protocol, not the BSD paper's
    if "best_test" in rules:
        notes.append(
            "best epoch selected on the test set: "
            + ("" if reference else "what the paper reports for Table 4; ")
            + "optimistic, as it uses the test labels."
        )
    if "noisy_val" in rules:
        notes.append(
            "noisy val split: the epoch with the best accuracy on the held-out part of the "
            "noisy training set (no clean label used)."
        )
    if any(
        m in ("cifar10c_acc", "cifar10p_mfp", "ood_auroc_svhn", "sce", "ace")
        for m in layout.metrics
    ):
        notes.append(
            "post-hoc suites (evaluation.json) evaluate the final checkpoint: last-epoch "
            "numbers only; per-epoch eval/* history keys are used where logged."
        )
    if "ood_auroc_svhn" in layout.metrics:
        sources = sorted(
            {
                key.split("/")[1]
                for g in groups
                for run in g.runs
                for key in ((run.get("evaluation") or {}).get("metrics") or {})
                if key.startswith("ood/") and key.endswith("/auroc")
            }
        )
        notes.append(
            "OOD set of ours: "
            + (", ".join(sources) or "none evaluated")
            + " (the first of svhn, sklearn_patches, npy a run has); the paper's: SVHN."
        )
    spec = (paper if paper is not None else load_paper_tables() if entries else {}).get(table)
    spec = spec or {}
    if entries:
        whose = (  # the BSD paper's tables, or another paper's / code's (with their source)
            f"{spec.get('title', table)}, source: {spec['source']}"
            if spec.get("source")
            else f"the BSD paper's {table.replace('table', 'Table ')}"
        )
        notes.append(
            f"paper: the published numbers of {whose}"
            f" (noisybench/paper_tables.yaml), bold as printed there; their epoch: "
            f"{spec.get('paper_selection', 'not stated')}. Their datasets and models are those "
            "of the paper, not necessarily ours."
        )
    return notes


def _source_notes(spec: Mapping[str, Any] | None, shown: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the paper numbers of each shown method come from, when the paper copied them
    (``sources: {method: text}`` of a paper table: Table 4's OT-Filter and DULC rows are
    DULC's Table 2, CSOT's row is CSOT's own paper)."""
    sources = (spec or {}).get("sources") or {}
    methods = list(dict.fromkeys(str(e.get("method")) for e in shown))
    return [f"paper, {m}: {sources[m]}" for m in methods if isinstance(sources.get(m), str)]


# ------------------------------------------------------------------------------ figures
def setting_groups(groups: Sequence[Group]) -> dict[str, list[tuple[str, Group]]]:
    """``{setting label: [(method label, group), ...]}`` for the figures: groups sharing every
    identity key but the method's; method labels show the method keys that differ within a
    setting (``bsd (method.gamma=0.5)``)."""
    settings: dict[str, list[Group]] = {}
    parts: dict[str, dict[str, str]] = {}
    for g in groups:
        rest = {k: v for k, v in g.ident.items() if not k.startswith("method.")}
        key = json.dumps(rest, sort_keys=True)
        settings.setdefault(key, []).append(g)
        parts[key] = rest
    keys = list(settings)
    labels = _labels([parts[k] for k in keys], ["dataset.name", "model.name", "noise.name"])
    out: dict[str, list[tuple[str, Group]]] = {}
    for key, label in zip(keys, labels, strict=True):
        members = settings[key]
        method_parts = [
            {k: v for k, v in g.ident.items() if k.startswith("method.")} for g in members
        ]
        labelled = zip(_column_labels(method_parts, "method"), members, strict=True)
        out[label] = sorted(labelled, key=lambda t: t[0])
    return out


# ------------------------------------------------------------------------------ rendering
def _cell_text(cell: Cell | None, fmt: str) -> str:
    if cell is None or cell.mean is None:
        return "–" if fmt == "md" else "--"
    mean = f"{cell.mean:.2f}"
    if cell.bold:
        mean = f"**{mean}**" if fmt == "md" else f"\\textbf{{{mean}}}"
    text = mean
    if cell.std is not None:
        text += f" ± {cell.std:.2f}" if fmt == "md" else f" $\\pm$ {cell.std:.2f}"
    if cell.n is not None:
        text += f" (n={cell.n})"
    return text


def _md(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"**{t.title}**", ""]
    lines.append("| " + " | ".join([t.row_header, *[esc(c.label) for c in t.columns]]) + " |")
    lines.append("|---" * (len(t.columns) + 1) + "|")
    for r in t.rows:
        cells = [_cell_text(r.cells.get(c.key), "md") for c in t.columns]
        lines.append("| " + " | ".join([esc(r.label), *cells]) + " |")
    lines.append("")
    lines.extend(f"- {n}" for n in t.notes)
    return "\n".join(lines)


# Every character TeX treats specially, written so that it prints as itself. ``^`` matters
# beyond superscripts: TeX reads ``^^5c`` as a backslash, so a name with ``^^5cinput{f}``
# would become ``\input{f}`` once compiled; ``\textasciicircum{}`` leaves no ``^`` at all.
_LATEX_CHARS = {
    "\\": "\\textbackslash{}",
    "{": "\\{",
    "}": "\\}",
    "^": "\\textasciicircum{}",
    "~": "\\textasciitilde{}",
    "_": "\\_",
    "%": "\\%",
    "&": "\\&",
    "#": "\\#",
    "$": "\\$",
    "±": "$\\pm$",
    "·": "$\\cdot$",
    "–": "--",
}


def _latex_escape(s: str) -> str:
    """``s`` as LaTeX text, one character at a time (no later replacement can re-open an
    escape); control characters are escaped first by :func:`printable`."""
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in printable(s))


def _latex(t: Table) -> str:
    lines = [
        "% " + _latex_escape(t.title),
        "\\begin{tabular}{l" + "r" * len(t.columns) + "}",
        "\\toprule",
        " & ".join([_latex_escape(t.row_header), *[_latex_escape(c.label) for c in t.columns]])
        + " \\\\",
        "\\midrule",
    ]
    for r in t.rows:
        cells = [_cell_text(r.cells.get(c.key), "latex") for c in t.columns]
        lines.append(" & ".join([_latex_escape(r.label), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += ["% " + _latex_escape(n) for n in t.notes]
    return "\n".join(lines)


CSV_FIELDS = (
    "table",
    "row",
    "source",
    "column",
    "metric",
    "selection",
    "mean",
    "std",
    "n",
    "bold",
    "seeds",
    "values",
)


def _csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in t.rows:
        for c in t.columns:
            cell = r.cells.get(c.key)
            if cell is None or cell.mean is None:
                continue
            w.writerow(
                {
                    "table": t.name,
                    "row": r.label,
                    "source": "paper" if cell.paper else r.source,
                    "column": c.label,
                    "metric": c.metric if c.metric != "*" else r.label.rsplit(" · ", 1)[-1],
                    "selection": "paper" if c.rule is None else c.rule,
                    "mean": f"{cell.mean:.6g}",
                    "std": "" if cell.std is None else f"{cell.std:.6g}",
                    "n": "" if cell.n is None else cell.n,
                    "bold": int(cell.bold),
                    "seeds": ";".join(str(x) for x in cell.seeds or []),
                    "values": ";".join(f"{v:.6g}" for v in cell.values or []),
                }
            )
    return buf.getvalue().rstrip("\n")


def _json(t: Table) -> str:
    obj = {
        "table": t.name,
        "title": t.title,
        "columns": [
            {"key": c.key, "label": c.label, "metric": c.metric, "selection": c.rule or "paper"}
            for c in t.columns
        ],
        "rows": [
            {
                "label": r.label,
                "source": r.source,
                "seeds": r.seeds,
                "cells": {
                    c.key: {
                        "mean": cell.mean,
                        "std": cell.std,
                        "n": cell.n,
                        "bold": cell.bold,
                        "paper": cell.paper,
                        **(
                            {"seeds": cell.seeds, "values": cell.values}
                            if cell.values is not None
                            else {}
                        ),
                    }
                    for c in t.columns
                    if (cell := r.cells.get(c.key)) is not None
                },
            }
            for r in t.rows
        ],
        "notes": t.notes,
    }
    # ASCII only: every character outside it is a JSON escape, never a raw control character.
    return json.dumps(obj, indent=1, ensure_ascii=True)


RENDERERS: dict[str, Callable[[Table], str]] = {
    "md": _md,
    "latex": _latex,
    "csv": _csv,
    "json": _json,
}


def render(t: Table, fmt: str = "md") -> str:
    """The table as Markdown, LaTeX (booktabs), CSV (one line per number) or JSON."""
    if fmt not in RENDERERS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](t)


def format_table(groups: Sequence[Group], table: str = "generic", fmt: str = "md") -> str:
    """Shortcut: :func:`build_table` with the paper's numbers, then :func:`render`."""
    paper = load_paper_tables() if table != "generic" else None
    return render(build_table(groups, table, paper=paper), fmt)


# ------------------------------------------------------------------------------ command line
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m noisybench.report",
        description="The BSD paper's tables from noisybench runs: mean ± std over seeds, the "
        "paper's numbers beside ours; figures with --figures.",
    )
    parser.add_argument("roots", nargs="+", help="run directories or folders holding them")
    parser.add_argument(
        "--table",
        default="generic",
        metavar="TABLE",
        help="the paper's table layout: " + ", ".join(TABLES) + " (default: generic, one row "
        "per experiment)",
    )
    parser.add_argument("--format", default="md", choices=[*RENDERERS, "html"])
    parser.add_argument(
        "--select",
        default=None,
        help="comma-separated epoch selection rules: last, best_test, noisy_val "
        "(default: the table's, plus noisy_val when runs have val/acc)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated columns: " + ", ".join(METRICS) + " (default: the table's; acc "
        "without --table)",
    )
    parser.add_argument("--figures", metavar="DIR", help="also write the figures as PNG to DIR")
    parser.add_argument(
        "--leaderboard",
        action="store_true",
        help="one row per method and setting: mean ± std, 95 %% CI, paired comparison with "
        "--reference, rank, cost (formats: md, latex, csv, json, html)",
    )
    parser.add_argument(
        "--reference", default="ce", help="the leaderboard's reference method (default: ce)"
    )
    parser.add_argument(
        "--output", metavar="FILE", help="write to FILE instead of stdout (html: a page)"
    )
    parser.add_argument(
        "--include-unfinished", action="store_true", help="also average unfinished runs"
    )
    return parser.parse_args(argv)


def _emit(stream: Any, text: str) -> None:
    """Write ``text`` line by line with every control character escaped (:func:`printable`):
    a reader that goes away (``| head``) is noticed at the next line, where one large write
    can lose the error in a partial write."""
    for line in text.splitlines():
        stream.write(printable(line, keep="\t") + "\n")


def _write_output(path: Path, text: str) -> None:
    from noisybench.io import atomic_write_text

    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror}); pass a writable --output") from None
    _warn(f"wrote {path}")


def _leaderboard(
    args: argparse.Namespace,
    groups: Sequence[Group],
    rules: Sequence[str] | None,
    metrics: Sequence[str] | None,
) -> int:
    """``--leaderboard``: :mod:`noisybench.leaderboard` over the groups, for the first of
    ``--select`` (default: the runs' own rule, else ``last``) and ``--metrics`` (acc)."""
    import tempfile

    from noisybench.leaderboard import Ranked, build_leaderboard, render_leaderboard

    recorded = [run.get("selection_rule") for g in groups for run in g.runs]
    rule = (rules or [next((r for r in recorded if r in RULES), "last")])[0]
    if rule not in RULES:
        raise UserError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
    metric = (metrics or ["acc"])[0]
    if metric not in METRICS:
        raise UserError(
            f"unknown metric {metric!r}; use --metrics with one of {', '.join(METRICS)}"
        )
    settings = {
        printable(setting): [(printable(label), g) for label, g in methods]
        for setting, methods in setting_groups(groups).items()
    }
    m = METRICS[metric]

    def value_of(run: Mapping[str, Any]) -> float | None:
        value = run_value(run, metric, rule)
        return None if value is None else value * m.scale

    ranked = Ranked(metric, m.label, m.higher_is_better, rule, RULES[rule][1])
    board = build_leaderboard(settings, value_of, ranked, args.reference)
    figures: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.format == "html":
            from noisybench.figures import write_figures

            target = Path(args.figures) if args.figures else Path(tmp)
            write_figures(settings, target)
            figures = sorted(target.glob("*.png"))
        text = render_leaderboard(board, args.format, figures, _latex_escape)
    if args.output:
        _write_output(Path(args.output), text)
    else:
        _emit(sys.stdout, text)
    return 0


def _split(option: str | None) -> list[str] | None:
    return None if option is None else [x.strip() for x in option.split(",") if x.strip()]


def _main(argv: Sequence[str] | None) -> int:  # noqa: C901
    args = _parse(argv)
    if args.figures:  # before any work: not after the whole table has been printed
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UserError(
                "--figures needs matplotlib; install the plots extra: "
                "pip install 'noisybench[plots]' (or leave out --figures)"
            )
    layout_of(args.table)  # an unknown --table: one line before any file is read
    results = load_results(args.roots)
    if not results:
        raise UserError(
            f"no result.json below {', '.join(args.roots)}; pass the out_dir of your runs"
        )
    rules = _split(args.select)
    metrics = _split(args.metrics)
    unfinished = [r for r in results if r.get("status") != "finished"]
    if len(unfinished) == len(results) and not args.include_unfinished:
        counts: dict[str, int] = {}
        for r in unfinished:
            counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
        done = [len(r.get("history") or []) for r in unfinished]
        states = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        _emit(
            sys.stdout,
            f"noisybench.report: no finished run below {', '.join(args.roots)} yet: "
            f"{len(unfinished)} unfinished ({states}; {min(done)}-{max(done)} epoch(s) done); "
            "pass --include-unfinished to average their epochs so far",
        )
        return 0
    groups = collect(results, args.include_unfinished)
    if args.leaderboard:
        return _leaderboard(args, groups, rules, metrics)
    if args.format == "html":
        raise UserError("--format html is the leaderboard's page: add --leaderboard")
    paper = load_paper_tables() if args.table != "generic" else None
    table = build_table(groups, args.table, rules, paper, metrics)
    text = render(table, args.format)
    if args.output:
        _write_output(Path(args.output), text)
    else:
        _emit(sys.stdout, text)
    note_stream = sys.stdout if args.format == "md" else sys.stderr
    if unfinished:
        lines = [f"\n{len(unfinished)} unfinished run(s):"]
        for r in unfinished:
            done = len(r.get("history") or [])
            lines.append(f"- {r['run_dir']}: {r.get('status')} after {done} epoch(s)")
        _emit(note_stream, "\n".join(lines))
    sys.stdout.flush()
    if args.figures:
        from noisybench.figures import write_figures

        for line in write_figures(setting_groups(groups), Path(args.figures)):
            _warn(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and status 2. A closed pipe
    (``| head``) ends quietly."""
    try:
        return _main(argv)
    except UserError as exc:
        _warn(f"error: {exc}")
        return 2
    except BrokenPipeError:
        # The reader went away: point stdout at /dev/null so the interpreter's final flush
        # raises nothing, and end as a killed writer would (SIGPIPE's status).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
