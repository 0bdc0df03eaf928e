"""The configuration: where it lives, what is valid, and what makes two runs the same experiment.

This module is the only place that looks up the config directory (``conf/``, installed as
``noisybench.conf``), and it holds:

* :data:`NON_IDENTITY_KEYS`, the one list of keys that do not change an experiment (where files
  go, how progress is shown, which hardware computes it); every other key does;
* :func:`identity`, an experiment's identity (its resolved config minus those keys), used by
  the run directory to refuse a resume under another config and by the report to group runs;
* :func:`run_variant`, the readable part of a run directory's name that makes sweeps over any
  key land in distinct directories (``method.gamma=0.9,epochs=3``);
* the paper presets (``conf/paper_presets.yaml``) behind the ``${paper:KEY}`` interpolation of
  method configs: stated once per setting, each with the noise rates it was calibrated for;
* :func:`check_config` (one actionable line per impossible value) and :func:`instantiate`
  (Hydra's instantiate with one-line errors).

It imports neither torch nor the data, so the command line's checks stay fast.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from noisybench.errors import UserError

__all__ = [
    "CONF_DIR",
    "GROUPS",
    "NON_IDENTITY_KEYS",
    "authors_preset",
    "check_config",
    "compose",
    "conf_dir",
    "config_differences",
    "describe_differences",
    "flatten",
    "identity",
    "instantiate",
    "paper_preset",
    "resolved",
    "run_variant",
    "validate_choices",
]


def conf_dir() -> Path:
    """The config directory: ``conf/`` of a source checkout (editable install) or the
    ``noisybench/conf`` folder a wheel installs; the same package either way."""
    return Path(str(importlib.resources.files("noisybench.conf")))


CONF_DIR = conf_dir()
# The config groups a user chooses from (shown by --help). ``method_optim`` is internal: what
# a method needs from any optimizer (TE's beta1 annealing), selected by the method's name.
GROUPS = ("dataset", "noise", "model", "method", "optim", "experiment", "logger", "teacher")
HIDDEN_GROUPS = ("method_optim",)
# The groups every run needs one option of (``method=null`` or ``~method`` is refused).
REQUIRED_GROUPS = ("dataset", "noise", "model", "method", "optim")
# The groups that name a run directory's path components (dataset/model/noise/method).
PATH_GROUPS = ("dataset", "model", "noise", "method")

# Keys that do not change an experiment: where files are, how progress is shown, which
# loggers record it, how the run reacts to a non-finite loss (resuming with nonfinite=skip
# after a stop is the intended recovery), or which hardware computes it (bitwise results may
# then differ). Two runs whose resolved configs differ only here are the same experiment.
NON_IDENTITY_KEYS = (
    "run_name",
    "restart",
    "progress",
    "logger",
    "tensorboard",
    "nonfinite",
    "device",
    "cpu_threads",
    "data_dir",
    "out_dir",
    "dataset.reader.root",
    "dataset.reader.download",
    "dataset.reader.verify",
    "dataset.loader",  # a streamed dataset's workers / decoder: same pixels (per-sample seeds)
    "eval",  # evaluation (suites, diagnostics, snapshots) never changes training
    "distributed.backend",
    "distributed.timeout_s",
    "deterministic",
    "channels_last",
    "compile",
    "optimizer_impl",
    "result_interval_s",
    "selection",  # which epoch is reported and kept, not how the model is trained
    "tune_on_test",
    "checkpoint_async",
    "hydra",
    # Which paper preset a noise config selects: the values it selects are in the method's
    # config, so they are compared there (and runs made before these keys existed match).
    "noise.setting",
    "noise.preset_rate",
    # The class that draws a noise variant and the CIFAR-N set: both follow noise.variant
    # (build.noise_variant refuses a class that draws another variant), and runs made before
    # noise configs had a _target_ match.
    "noise._target_",
    "noise.label_set",
    "method.seed_keys",
)

_MAX_NAME = 120  # characters of one run-directory component before it is shortened


@functools.lru_cache(maxsize=65536)  # the same few hundred keys in every run of a report
def _non_identity(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in NON_IDENTITY_KEYS)


# ------------------------------------------------------------------------------ flattening
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (e.g. a resolved config) as ``{"dotted.key": leaf}``."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _jsonish(value: Any) -> Any:
    """A value as it reads back from the result file (tuples are lists, NaN/inf are null).
    Baselines were the top-level package ``baselines`` in noisybench 0.1; their targets are
    compared under today's name ``noisybench.baselines``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and value.startswith("baselines."):
        return "noisybench." + value
    if isinstance(value, tuple | list):
        return [_jsonish(v) for v in value]
    return value


def identity(config: Mapping[str, Any], *, with_seed: bool = True) -> dict[str, Any]:
    """The experiment a resolved config describes: its flattened keys minus
    :data:`NON_IDENTITY_KEYS` (values as JSON reads them back). ``with_seed=False`` also drops
    the training and noise seeds: the identity of a row of mean ± std over seeds."""
    flat = {k: _jsonish(v) for k, v in flatten(config).items() if not _non_identity(k)}
    if flat.get("noise.asym_map", ...) is None:  # every variant had one before _target_ configs
        del flat["noise.asym_map"]
    if not with_seed:
        flat.pop("seed", None)
        flat.pop("noise.seed", None)
        # A config node may name its keys whose values follow the seed (KD's teacher runs,
        # one per seed): ``seed_keys: [teacher_runs]``.
        for group, node in config.items():
            if isinstance(node, Mapping) and isinstance(node.get("seed_keys"), list):
                for key in node["seed_keys"]:
                    flat = {
                        k: v
                        for k, v in flat.items()
                        if k != f"{group}.{key}" and not k.startswith(f"{group}.{key}.")
                    }
    return flat


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, outside
    :data:`NON_IDENTITY_KEYS`."""
    a, b = identity(saved), identity(current)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, ...) != b.get(k, ...)]
    # The choices themselves (method.name, noise.name, ...) first: they explain the rest.
    return sorted(keys, key=lambda k: not k.endswith(".name"))


def describe_differences(
    keys: list[str], saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 8
) -> str:
    """``key (saved X, now Y), ...`` for the first ``limit`` differing keys."""
    a, b = flatten(saved), flatten(current)

    def show(flat: dict[str, Any], key: str) -> str:
        return json.dumps(_jsonish(flat[key])) if key in flat else "absent"

    parts = [f"{k} (saved {show(a, k)}, now {show(b, k)})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


# ------------------------------------------------------------------------------ run names
def _safe(text: str) -> str:
    """Text usable inside one path component *and* as an unquoted Hydra override value (so a
    run directory can be passed back, e.g. as ``noise.label_file=...``): separators become
    ``_``, list punctuation ``-``, quotes and spaces go."""
    for old, new in (("/", "_"), ("\\", "_"), (",", "-"), ("=", ":"), (" ", "")):
        text = text.replace(old, new)
    text = "".join(ch for ch in text if ch not in "[]{}()'\"\0;~")
    return ("_" + text[1:]) if text.startswith(".") else text


def run_variant(task_overrides: Sequence[str]) -> str:
    """The part of a run directory's name that sets an experiment apart from its groups'
    defaults: the command-line overrides that change the experiment, other than the path
    groups (dataset, model, noise, method) and the seed, which have their own components.

    ``experiment=quickstart method.gamma=0.9 epochs=3`` gives
    ``quickstart+epochs:3+method.gamma:0.9`` (the experiment's name first, then ``key:value``
    sorted by key, joined by ``+``; ``=`` and ``,`` would not survive being passed back as a
    Hydra override value); no such override gives ``""``. A name longer than 120 characters
    keeps its first 100 and ``+sha`` with a hash of the whole.
    """
    experiment: list[str] = []
    items: list[tuple[str, str]] = []
    for override in task_overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep:
            continue
        key = key.split("@", 1)[0]
        if key in PATH_GROUPS or key == "seed" or _non_identity(key):
            continue
        if key == "experiment":
            experiment.append(_safe(value))
        else:
            items.append((key, _safe(f"{key}:{value}")))
    name = "+".join([*experiment, *(text for _, text in sorted(items))])
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:100]}+sha{digest}"
    return name


def _variant_resolver() -> str:
    """``${nb_variant:}``: ``"<variant>/"`` for the running Hydra job, or ``""``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    task = list(HydraConfig.get().overrides.task)
    variant = run_variant(task)
    return f"{variant}/" if variant else ""


# ------------------------------------------------------------------------------ paper presets
@functools.cache
def _presets() -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "paper_presets.yaml"), resolve=True)
    assert isinstance(data, dict)
    return data


def _rate_matches(entry: Mapping[str, Any], rate: float) -> bool:
    rates = [float(r) for r in entry["rates"]]
    if entry.get("span", False):
        return min(rates) - 1e-9 <= rate <= max(rates) + 1e-9
    return any(abs(rate - r) < 1e-9 for r in rates)


def _value_at(entries: list[dict[str, Any]], rate: float, key: str) -> tuple[bool, Any, str]:
    """``(found, value, rates shown)``: the value of ``key`` in the first preset entry whose
    noise levels include ``rate`` (paper and authors' presets alike), else the levels that
    have one, for the refusal."""
    levels: list[float] = []
    for entry in entries:
        if key not in entry["values"]:
            continue
        levels.extend(float(r) for r in entry["rates"])
        if _rate_matches(entry, rate):
            return True, entry["values"][key], ""
    return False, None, ", ".join(f"{r:g}" for r in sorted(set(levels))) or "none"


def _noise_of(root: Any) -> tuple[str, float]:
    """The run's noise setting and the rate its presets are chosen by (``preset_rate`` when
    a noise config names one, else its rate)."""
    noise = root.get("noise")
    if noise is None:
        return "none", 0.0
    rate = noise.get("preset_rate", None)
    if rate is None:
        rate = noise.get("rate", 0.0)
    return str(noise.get("setting", "none")), float(rate)


def paper_preset(method: str, setting: str, rate: float, key: str) -> Any:
    """The paper's value of ``method.<key>`` for noise of ``setting`` at ``rate``.

    Each entry of ``conf/paper_presets.yaml`` records the noise levels it was calibrated for
    (``rates``) and whether it holds in between (``span``); a rate outside them is refused,
    naming the key to set explicitly.

    Raises:
        UserError: no preset for this method, setting, rate and key.
    """
    presets = _presets()
    entries = (presets.get(method) or {}).get(setting)
    if entries is None:
        known = ", ".join(sorted((presets.get(method) or {}).keys())) or "none"
        raise UserError(
            f"method {method} has no paper preset for noise setting '{setting}' (presets: "
            f"{known}); set method.{key}=... explicitly, or add the setting to "
            f"{CONF_DIR / 'paper_presets.yaml'}"
        )
    found, value, shown = _value_at(entries, rate, key)
    if found:
        return value
    raise UserError(
        f"method {method}'s paper value of {key} under {setting} noise was calibrated for "
        f"rates {shown}, not {rate:g}; set method.{key}=... explicitly, or choose one of those "
        "rates (noise.rate=...)"
    )


def _paper_resolver(key: str, *, _parent_: Any, _root_: Any) -> Any:
    """``${paper:KEY}`` inside a method config: the paper's value for the run's noise."""
    setting, rate = _noise_of(_root_)
    return paper_preset(str(_parent_.get("name")), setting, rate, key)


def _authors_presets() -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "baseline_presets.yaml"), resolve=True)
    assert isinstance(data, dict)
    return data


def authors_preset(
    method: str,
    dataset: str,
    setting: str,
    rate: float,
    key: str,
    pending: list[str] | None = None,
) -> Any:
    """The value of ``method.<key>`` a baseline's authors used on ``dataset`` under noise of
    ``setting`` at ``rate`` (``conf/baseline_presets.yaml``, each entry citing its source).

    Chosen like :func:`paper_preset`, and also by dataset, since these values were tuned per
    dataset (e.g. DivideMix's lambda_u: 0 on CIFAR-10 at 20 % symmetric noise, 25 on CIFAR-100).

    ``pending``: every key of the method still taken from the presets, named together in the
    refusal so that one corrected command line suffices.

    Raises:
        UserError: the source gives no value for this dataset, setting and rate.
    """
    path = CONF_DIR / "baseline_presets.yaml"
    by_dataset = _authors_presets().get(method) or {}
    explicit = " ".join(f"method.{k}=..." for k in (pending or [key]))
    entries = (by_dataset.get(dataset) or {}).get(setting)
    if entries is None:
        known = sorted(
            f"{d}/{s}"
            for d, settings in by_dataset.items()
            if isinstance(settings, dict)
            for s in settings
        )
        raise UserError(
            f"the authors of {method} give no value of {key} for dataset {dataset} under "
            f"'{setting}' noise (they do for: {', '.join(known) or 'none'}); set {explicit} "
            f"explicitly (see {path})"
        )
    found, value, shown = _value_at(entries, rate, key)
    if found:
        return value
    raise UserError(
        f"the authors of {method} give {key} on {dataset} under {setting} noise for rates "
        f"{shown}, not {rate:g}; set method.{key}=... explicitly, or choose one of those rates"
    )


def _authors_resolver(key: str, *, _parent_: Any, _root_: Any) -> Any:
    """``${authors:KEY}`` inside a method config: the baseline authors' value for the run's
    dataset and noise (``conf/baseline_presets.yaml``)."""
    method = str(_parent_.get("name"))
    gate = (_authors_presets().get(method) or {}).get("needed_if")
    if gate is not None and not bool(_parent_.get(gate)):
        return None  # the key is unused unless method.<gate> is true
    setting, rate = _noise_of(_root_)
    dataset = _root_.get("dataset")
    name = "none" if dataset is None else str(dataset.get("name"))
    pending = [
        k
        for k in _parent_
        if OmegaConf.is_interpolation(_parent_, k)
        and str(_parent_._get_node(k)._value()).startswith("${authors:")
    ]
    return authors_preset(method, name, setting, rate, key, pending)


def _groups_resolver() -> str:
    """``${nb_groups:}``: the user-facing config groups and their options, for --help."""
    lines = []
    for group in (*GROUPS, "eval"):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group + ':':<12}{', '.join(options)}")
    return "\n".join(lines)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("nb_groups"):
        OmegaConf.register_new_resolver("nb_groups", _groups_resolver)
    if not OmegaConf.has_resolver("paper"):
        OmegaConf.register_new_resolver("paper", _paper_resolver)
    if not OmegaConf.has_resolver("authors"):
        OmegaConf.register_new_resolver("authors", _authors_resolver)
    if not OmegaConf.has_resolver("nb_variant"):
        OmegaConf.register_new_resolver("nb_variant", _variant_resolver)
    if not OmegaConf.has_resolver("nb_data_fingerprint"):
        OmegaConf.register_new_resolver("nb_data_fingerprint", _fingerprint_resolver)


def _fingerprint_resolver(*, _parent_: Any) -> str | None:
    """``${nb_data_fingerprint:}`` in a reader node: the digest of the files it reads
    (:mod:`noisybench.data.fingerprint`), so other data is another experiment."""
    from noisybench.data.fingerprint import data_fingerprint

    return data_fingerprint(_parent_)


_register_resolvers()


# ------------------------------------------------------------------------------ composing
def _user_error_in(exc: BaseException) -> UserError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config (or a node of it, resolved in its config's context) as plain containers; a
    preset refusal stays one line.

    Raises:
        UserError: an interpolation cannot be resolved (e.g. no paper preset at that rate).
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        inner = _user_error_in(exc)
        if inner is not None:
            raise UserError(str(inner)) from None
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"the config does not resolve ({detail}); check the overrides") from None
    assert isinstance(out, dict)
    return out


def _known_keys(cfg: DictConfig) -> list[str]:
    return sorted(k for k in flatten(OmegaConf.to_container(cfg, resolve=False)) if k)


def compose(
    overrides: Sequence[str], *, return_hydra_config: bool = False, search_dirs: Sequence[Path] = ()
) -> DictConfig:
    """Compose ``config.yaml`` with ``overrides`` as Hydra would (the paper presets and run
    names resolve as in a real run).

    Raises:
        UserError: an override names an unknown key (with a "did you mean"), has bad syntax,
            or adds a key with ``+`` that the config does not have.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    extra = [f"file://{d}" for d in search_dirs]
    if extra:
        overrides = [o for o in overrides if not o.startswith("hydra.searchpath=")]
        overrides.append(f"hydra.searchpath=[{','.join(extra)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise UserError(_override_error(exc, overrides)) from None
    _refuse_added_keys(cfg, overrides)
    if not return_hydra_config:
        OmegaConf.set_struct(cfg, False)
        cfg.pop("hydra", None)
        OmegaConf.set_struct(cfg, True)
    return cfg


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    """The closest known key, preferring the key's own group and its last name.

    Keys are nested by group (``optim.optimizer.lr``), so a whole-string match alone suggests
    a short sibling (``optim.lr`` -> ``optim.name``); a key of the same group whose last name
    is the same (``lr``) or close (``gama`` -> ``gamma``) is what was meant.
    """
    group, _, _ = key.partition(".")
    leaf = key.rsplit(".", 1)[-1]
    same_group = [k for k in known if k.partition(".")[0] == group] or list(known)

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        last = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        return max(whole, last + (0.5 if last == 1.0 else 0.0))

    best = max(same_group, key=score, default=None)
    if best is None or score(best) < 0.6:
        return ""
    return f"did you mean {best}? "


def _is_choice(override: str) -> bool:
    """A group choice (``method=bsd``, ``+experiment=x``) or a search path: what decides which
    keys exist, as opposed to a value override."""
    key = override.lstrip("+~").partition("=")[0]
    return key in GROUPS or key in HIDDEN_GROUPS or key == "hydra.searchpath"


def _base_keys(overrides: Sequence[str] = ()) -> list[str]:
    """Keys of the config composed from the groups chosen in ``overrides`` (the value
    overrides left out, since one of them is the unknown key); the base config's keys when
    the choices alone do not compose."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    choices = [o for o in overrides if _is_choice(o)]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            cfg = hydra_compose("config", overrides=choices)
        except (HydraException, OmegaConfBaseException, ValueError):
            cfg = hydra_compose("config")
    return _known_keys(cfg)


def _override_error(exc: BaseException, overrides: Sequence[str]) -> str:
    text = " ".join(str(exc).split())
    missing = None
    if "Could not override '" in text:
        missing = text.split("Could not override '", 1)[1].split("'", 1)[0]
    elif "Key '" in text and "is not in struct" in text:
        missing = text.split("Key '", 1)[1].split("'", 1)[0]
    if missing is not None:
        hint = _did_you_mean(missing, _base_keys(overrides))
        return (
            f"unknown config key '{missing}' ({text[:200]}); {hint}"
            "check the key names (noisybench --cfg job shows the full config)"
        )
    return (
        f"cannot apply the command-line overrides ({text[:300]}); check the key names and "
        "values (noisybench --cfg job shows the full config)"
    )


def _refuse_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``+key=value`` may add only what a group option or Hydra allows: a ``+`` key the config
    does not define elsewhere is a typo (Hydra suggests ``+epoch=3`` for ``epoch=3``)."""
    added = [
        o[1:].partition("=")[0]
        for o in overrides
        if o.startswith("+") and not o.startswith("++") and "=" in o
    ]
    added = [k for k in added if k not in GROUPS and not k.startswith("hydra.")]
    if not added:
        return
    base = set(_base_keys(overrides))
    for key in added:
        if key in base or any(b.startswith(key + ".") for b in base):
            continue
        hint = _did_you_mean(key, sorted(base))
        raise UserError(
            f"+{key}=... adds a key that noisybench does not read; {hint}"
            "set an existing key without '+' (noisybench --cfg job lists them)"
        )


def search_dirs(argv: Sequence[str]) -> list[Path]:
    """The primary config directory plus ``hydra.searchpath=[...]`` directories from argv."""
    dirs = [CONF_DIR]
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.searchpath":
            continue
        for entry in value.strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                dirs.append(Path(entry[len("file://") :]))
            elif entry and "://" not in entry:
                dirs.append(Path(entry))
    return dirs


def validate_choices(argv: Sequence[str]) -> None:
    """Check every ``group=option`` on the command line names an existing config file.

    Raises:
        UserError: naming the unknown option, the valid ones, and how to add one.
    """
    dirs = search_dirs(argv)
    for arg in argv:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key not in GROUPS or "(" in value:  # sweep functions (range/choice/glob): Hydra's
            continue
        known = sorted({p.stem for d in dirs for p in (d / key).glob("*.yaml")})
        options = [v.strip() for v in value.strip("[]").split(",")]
        if key in REQUIRED_GROUPS and (arg.startswith("~") or "null" in options):
            raise UserError(
                f"{arg} leaves the run without a {key}, which every run needs; choose one of: "
                f"{', '.join(known)}"
            )
        for option in options:
            if option in ("", "null") or any((d / key / f"{option}.yaml").is_file() for d in dirs):
                continue
            raise UserError(
                f"unknown {key} '{option}'; choose one of: {', '.join(known)} "
                f"(or add {key}/{option}.yaml to conf/ or a hydra.searchpath directory)"
            )


# ------------------------------------------------------------------------------ validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _floats(cfg: DictConfig) -> list[tuple[str, float]]:
    """Every float value of the experiment (dotted key, value), Hydra's own node left out."""
    container = OmegaConf.to_container(cfg, resolve=False)
    out: list[tuple[str, float]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if prefix or k != "hydra":
                    walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif isinstance(node, float):
            out.append((prefix[:-1], node))

    walk(container, "")
    return out


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings with one actionable line each (before anything is built
    or any file is touched). A refusal raised while an interpolation resolves (an author's or
    the paper's preset missing for the setting) stays that one line.

    Raises:
        UserError: naming the bad key and value and what to set instead.
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        _check_config(cfg)
    except OmegaConfBaseException as exc:
        inner = _user_error_in(exc)
        if inner is None:
            raise
        raise UserError(str(inner)) from None


def _check_config(cfg: DictConfig) -> None:  # noqa: C901
    from noisybench.data.noise import ASYM_MAPS
    from noisybench.safety import check_tree

    # Code first: every _target_ must be allowed before anything reads, imports or calls it.
    check_tree(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else []
    if missing:  # ``???`` in a config: a value only the user can give (dataset=arrays' path)
        key = missing[0]
        example = "/data/mine.npz" if key.endswith(".path") else "/data/mine"
        raise UserError(
            f"{key} must be set: add {key}={example} to the command (dataset "
            f"{OmegaConf.select(cfg, 'dataset.name')}), or write it in a dataset config of "
            "your own (docs/datasets.md)"
        )
    for group in ("dataset", "model", "noise", "method", "optim"):
        if not isinstance(cfg.get(group), DictConfig):
            raise UserError(
                f"{group}={cfg.get(group)} is not a {group} config; choose one, e.g. "
                f"{group}=<name> (noisybench --help lists them)"
            )

    for key, value in _floats(cfg):
        if math.isnan(value):
            raise UserError(
                f"{key}=nan is not a number; give {key} a numeric value (noisybench --cfg job "
                "shows the defaults)"
            )

    def positive(key: str, example: str) -> None:
        value = OmegaConf.select(cfg, key)
        if not _is_int(value) or value < 1:
            raise UserError(f"{key}={value} is invalid; set {key} to a positive integer, {example}")

    positive("epochs", "e.g. epochs=100")
    positive("batch_size", "e.g. batch_size=128")
    if OmegaConf.select(cfg, "eval.batch_size") != "auto":
        positive("eval.batch_size", "or auto, e.g. eval.batch_size=1024")
    for key in ("seed", "noise.seed"):
        value = OmegaConf.select(cfg, key)
        if not _is_int(value) or not 0 <= value < 2**63:
            raise UserError(
                f"{key}={value} is invalid; set {key} to a non-negative integer below 2**63"
            )
    if cfg.get("cpu_threads") is not None and (not _is_int(cfg.cpu_threads) or cfg.cpu_threads < 1):
        raise UserError(
            f"cpu_threads={cfg.cpu_threads} is invalid; set a positive integer or null (torch's "
            "default)"
        )
    for key in ("restart", "progress", "eval.train_diagnostics", "compile"):
        value = OmegaConf.select(cfg, key, default=False)
        if not isinstance(value, bool):
            raise UserError(f"{key}={value} is not a boolean; set {key}=true or {key}=false")
    for key in ("deterministic", "channels_last", "checkpoint_async"):
        value = OmegaConf.select(cfg, key, default="auto")
        if not (isinstance(value, bool) or value == "auto"):
            raise UserError(f"{key}={value} is invalid; set {key}=auto, true or false")
    impl = OmegaConf.select(cfg, "optimizer_impl", default="auto")
    if impl not in ("auto", "default", "fused", "foreach"):
        raise UserError(
            f"optimizer_impl={impl} is unknown; use optimizer_impl=auto, default, fused or foreach"
        )
    interval = OmegaConf.select(cfg, "result_interval_s", default=0)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval >= 0:
        raise UserError(
            f"result_interval_s={interval} is invalid; set seconds >= 0 (0: every epoch)"
        )
    if cfg.nonfinite not in ("stop", "skip"):
        raise UserError(f"nonfinite={cfg.nonfinite} is unknown; use nonfinite=stop or skip")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise UserError(f"amp={cfg.amp} is unknown; use amp=auto, off, bf16 or fp16")
    every = OmegaConf.select(cfg, "eval.train_diagnostics_every")
    if every is not None and (not _is_int(every) or every < 1):
        raise UserError(
            f"eval.train_diagnostics_every={every} is invalid; set a positive number of epochs"
        )
    subset = OmegaConf.select(cfg, "eval.train_diagnostics_subset")
    if subset is not None and (not _is_int(subset) or subset < 1):
        raise UserError(
            f"eval.train_diagnostics_subset={subset} is invalid; set a positive number of "
            "training samples, or null for all of them"
        )

    noise = cfg.noise
    rate = noise.rate
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not 0.0 <= float(rate) < 1.0
        or math.isnan(float(rate))
    ):
        raise UserError(
            f"noise.rate={rate} is not a number in [0, 1); choose a rate like noise.rate=0.4"
        )
    noise_class = _noise_class(noise)
    label_file = noise.get("label_file")
    if label_file is not None and Path(str(label_file)).expanduser().is_dir():
        raise UserError(
            f"noise.label_file={label_file} is a directory, not a file; give the path of a "
            "saved noisy_labels.npy, or set noise.label_file=null to generate the noise"
        )
    if label_file is not None and not Path(str(label_file)).expanduser().is_file():
        raise UserError(
            f"noise.label_file={label_file} does not exist; give the path of a saved "
            "noisy_labels.npy, or set noise.label_file=null to generate the noise"
        )
    human_file = noise.get("file")
    download = noise.get("download", False)
    if human_file is not None and not download and not Path(str(human_file)).expanduser().is_file():
        raise UserError(
            f"noise.file={human_file} does not exist ({noise.name}'s official label file); "
            "put it there, point noise.file at it, or add noise.download=true to fetch it"
        )
    uses_map = noise_class is not None and noise_class.uses_asym_map
    if uses_map and label_file is None and float(rate) > 0:
        asym_map = noise.get("asym_map") or cfg.dataset.get("asym_map")
        if asym_map is None:
            raise UserError(
                f"noise variant {noise.variant} needs a class map but dataset "
                f"{cfg.dataset.name} has none (dataset.asym_map is null); set "
                f"noise.asym_map to one of {', '.join(sorted(ASYM_MAPS))}, or choose "
                "symmetric noise (e.g. noise=sym50)"
            )
        if asym_map not in ASYM_MAPS:
            raise UserError(
                f"asymmetric map {asym_map} is unknown; set noise.asym_map to one of "
                f"{', '.join(sorted(ASYM_MAPS))}"
            )


def _noise_class(noise: DictConfig) -> type | None:
    """The shipped class that draws ``noise.variant`` (None for a variant from outside
    noisybench, which the run checks when it builds it).

    Raises:
        UserError: an unknown variant, or a noisybench ``_target_`` that draws another one.
    """
    from noisybench.data.noise import NOISE_VARIANTS

    target = noise.get("_target_")
    if target is not None and not str(target).startswith("noisybench."):
        return None  # a plug-in: its module is imported only by instantiate (allow-list)
    if noise.variant not in NOISE_VARIANTS:
        known = ", ".join(sorted(NOISE_VARIANTS))
        raise UserError(f"noise.variant={noise.variant} is unknown; use one of {known}")
    cls = NOISE_VARIANTS[noise.variant]
    expected = f"{cls.__module__}.{cls.__qualname__}"
    if target is not None and str(target) != expected:
        raise UserError(
            f"noise.variant={noise.variant} is drawn by {expected}, not noise._target_="
            f"{target}; choose the noise config of that variant (noise=NAME) or set "
            f"noise._target_={expected}"
        )
    return cls


# ------------------------------------------------------------------------------ instantiate
def without_name(node: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A config node as ``instantiate()`` keyword arguments: everything but its ``name``
    (a label) and ``seed_keys`` (see :func:`identity`)."""
    out = resolved(node) if isinstance(node, DictConfig) else dict(node)
    out.pop("name", None)
    out.pop("seed_keys", None)
    return out


def instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose failures become one :class:`UserError` line naming
    the config group (``what``) and the root cause.

    Every ``_target_`` in ``node`` (nested ones too: Hydra instantiates them recursively) is
    checked against the allow-list of :mod:`noisybench.safety` first, before Hydra imports or
    calls anything; so is a ``_target_`` passed in ``kwargs``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from noisybench.safety import check_tree

    label = "_".join(str(what).split()[:1]) or "config"
    check_tree(node, f"{label}.")
    if kwargs.get("_recursive_", True):  # nested _target_s in kwargs are built too
        check_tree({k: v for k, v in kwargs.items() if not k.startswith("_")}, f"{label}.")
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as exc:
        inner = _user_error_in(exc)
        if inner is not None:
            raise inner from None
        cause: BaseException | None = exc.__cause__
        root: BaseException = exc
        while cause is not None:
            root, cause = cause, cause.__cause__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "")
        detail = first.rstrip(":.")
        if root is not exc:
            reason = str(root).strip().splitlines()[0] if str(root).strip() else ""
            detail += f": {type(root).__name__}" + (f": {reason}" if reason else "")
        hint = (
            "is its module importable (installed, or on PYTHONPATH)?"
            if isinstance(root, ImportError) or "locating target" in first
            else "check its YAML file and the values given on the command line"
        )
        raise UserError(f"cannot build the {what} from its config ({detail}); {hint}") from exc
