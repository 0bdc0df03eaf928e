"""Which code a config may name: the allow-list every ``_target_`` is checked against.

A config's ``_target_`` is a dotted path that Hydra imports and calls. Configs come from places
the user does not always control: a run directory someone shared (``noisybench evaluate``
rebuilds dataset, model and method from the config saved in its ``result.json``), or an
experiment YAML on a shared search path. A ``_target_`` such as ``distutils.spawn.spawn`` runs a
command, ``shutil.copyfile`` copies any readable file; Hydra's own block-list stops neither. So
noisybench instantiates only what resolves inside

* :data:`DEFAULT_PREFIXES`: ``noisybench.`` (which holds ``noisybench.baselines.``), and
* :data:`DEFAULT_EXACT`: the torch optimizers named by ``conf/optim/*`` (exact names, not the
  package: ``torch.`` also holds ``torch.hub.load``, which downloads and runs code),
* plus what the user allows explicitly, on the command line or in the environment, never in a
  file: ``allow_targets=[my_methods.]`` as a command-line override of a run, ``--allow-target
  my_methods.`` for ``noisybench evaluate``, or ``NOISYBENCH_ALLOW_TARGETS=my_methods.`` for
  any command. An entry ending in ``.`` allows a package prefix, any other entry one exact
  dotted name. A value of ``allow_targets`` written into a YAML file (or saved in a run
  directory) does not count: a shared file could otherwise allow itself.

The check looks at the string only and happens before anything is imported or called
(:func:`check_tree` walks a whole config, :func:`check_target` one name). Its refusal is one
line naming the config key, the target and how to allow it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from noisybench.errors import UserError

__all__ = [
    "DEFAULT_EXACT",
    "DEFAULT_PREFIXES",
    "ENV_VAR",
    "allow",
    "allowed",
    "check_target",
    "check_tree",
    "is_allowed",
    "parse_entries",
    "targets",
]

ENV_VAR = "NOISYBENCH_ALLOW_TARGETS"
DEFAULT_PREFIXES: tuple[str, ...] = ("noisybench.", "noisybench.baselines.")
# Exact names only (a prefix such as ``torch.`` would admit torch.hub.load). These are the
# optimizers of conf/optim/* and the common torch optimizers and schedulers a user's optim
# YAML names; every one is a constructor of an optimizer or a scheduler, nothing else.
DEFAULT_EXACT: frozenset[str] = frozenset(
    {
        "torch.optim.SGD",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "torch.optim.RMSprop",
        "torch.optim.Adagrad",
        "torch.optim.Adadelta",
        "torch.optim.Adamax",
        "torch.optim.ASGD",
        "torch.optim.LBFGS",
        "torch.optim.NAdam",
        "torch.optim.RAdam",
        "torch.optim.Rprop",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.MultiStepLR",
        "torch.optim.lr_scheduler.StepLR",
        "torch.optim.lr_scheduler.OneCycleLR",
        "torch.optim.lr_scheduler.LinearLR",
        "torch.optim.lr_scheduler.SequentialLR",
    }
)
# Hydra's own launchers and sweepers (the installed ``hydra_plugins`` namespace: joblib,
# submitit, Optuna) are allowed in the ``hydra`` node only.
HYDRA_PREFIXES: tuple[str, ...] = ("hydra._internal.core_plugins.", "hydra_plugins.")
# Python's logging (hydra.job_logging / hydra.hydra_logging handlers name a ``class``).
LOGGING_PREFIXES: tuple[str, ...] = ("logging.",)

_extra: set[str] = set()  # entries allowed by this process (command line)


def parse_entries(value: Any, where: str) -> list[str]:
    """Allow-list entries from a command-line value (``a.,b.c`` or a list); each must be a
    dotted Python name, optionally ending in ``.`` (a package prefix)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        entry = str(item).strip().strip("[]'\" ")
        if not entry:
            continue
        parts = entry[:-1].split(".") if entry.endswith(".") else entry.split(".")
        if not all(p.isidentifier() for p in parts):
            raise UserError(
                f"{where}: {entry!r} is not a dotted Python name; give a package prefix ending "
                "in '.' (my_methods.) or an exact name (my_methods.bootstrap.SoftBootstrapping)"
            )
        out.append(entry)
    return out


def allow(entries: Iterable[str]) -> None:
    """Allow ``entries`` (prefixes ending in ``.`` or exact names) for this process; only
    command-line values come here, never a file's."""
    _extra.update(entries)


def reset() -> None:
    """Forget what :func:`allow` added (tests)."""
    _extra.clear()


def allowed() -> tuple[tuple[str, ...], frozenset[str]]:
    """The prefixes and exact names allowed now: defaults, ``NOISYBENCH_ALLOW_TARGETS`` and
    what :func:`allow` added."""
    entries = set(_extra) | set(parse_entries(os.environ.get(ENV_VAR, ""), ENV_VAR))
    prefixes = DEFAULT_PREFIXES + tuple(sorted(e for e in entries if e.endswith(".")))
    exact = DEFAULT_EXACT | {e for e in entries if not e.endswith(".")}
    return prefixes, exact


def is_allowed(target: str, extra_prefixes: Sequence[str] = ()) -> bool:
    """Whether the dotted name ``target`` is inside the allow-list (string test, no import)."""
    if not isinstance(target, str) or not target:
        return False
    name = target.strip()
    parts = name.split(".")
    if name != target or not all(p.isidentifier() for p in parts):
        return False  # "noisybench..x", "noisybench.x y", ... never resolve to allowed code
    prefixes, exact = allowed()
    return name in exact or any(name.startswith(p) for p in (*prefixes, *extra_prefixes))


def _refusal(key: str, target: Any) -> UserError:
    return UserError(
        f"{key}={target} is not allowed: noisybench only builds code from noisybench. and the "
        "torch optimizers; if you trust this package, allow it on the command line with "
        f"allow_targets=[{_package(target)}] (noisybench evaluate: --allow-target "
        f"{_package(target)}), or set {ENV_VAR}={_package(target)}"
    )


def _package(target: Any) -> str:
    head = str(target).split(".")[0]
    return f"{head}." if head.isidentifier() else "PACKAGE."


def check_target(target: Any, key: str, extra_prefixes: Sequence[str] = ()) -> None:
    """Refuse ``target`` (the value of config key ``key``) unless it is allowed."""
    if not is_allowed(target, extra_prefixes):
        raise _refusal(key, target)


def targets(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(dotted key, value)`` of a ``_target_`` entry in a nested config (mappings and
    lists; a DictConfig is read without resolving interpolations twice)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, DictConfig | ListConfig):
            node = OmegaConf.to_container(node, resolve=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "_target_":
                yield path, value
            else:
                yield from targets(value, path + ".")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from targets(value, f"{prefix}{i}.")


def _logging_callables(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``class`` and ``()`` entries of a logging dictConfig (each names something called)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key in ("class", "()") and isinstance(value, str):
                yield path, value
            elif isinstance(value, Mapping):
                yield from _logging_callables(value, path + ".")


def check_tree(node: Any, prefix: str = "") -> None:  # noqa: C901
    """Refuse the first ``_target_`` in ``node`` (a whole config) that is not allowed, naming
    its key. A ``hydra`` node may also name Hydra's launchers and sweepers, and its logging
    configs Python's ``logging`` handlers."""
    if node is None:
        return
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=False)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(node, Mapping):
        for key, target in targets(node, prefix):
            check_target(target, key)
        return
    for top, value in node.items():
        if top == "hydra" and not prefix:
            for key, target in targets(value, "hydra."):
                check_target(target, key, HYDRA_PREFIXES)
            if isinstance(value, Mapping):
                for part in ("job_logging", "hydra_logging"):
                    for key, target in _logging_callables(value.get(part), f"hydra.{part}."):
                        check_target(target, key, LOGGING_PREFIXES)
            continue
        if top == "_target_":
            check_target(value, f"{prefix}{top}")
            continue
        for key, target in targets(value, f"{prefix}{top}."):
            check_target(target, key)


def take_command_line(args: Sequence[str], where: str = "the command line") -> list[str]:
    """Remove the allow-list options from ``args`` and allow their entries (for this process
    and, through :data:`ENV_VAR`, the processes it starts: sweep workers, launchers):
    ``allow_targets=[a.,b.c]``, ``--allow-target a.`` or ``--allow-target=a.``. Returns the
    other arguments in order."""
    rest: list[str] = []
    entries: list[str] = []
    todo = list(args)
    while todo:
        arg = todo.pop(0)
        key = arg.split("=", 1)[0]
        if key in ("allow_targets", "+allow_targets", "++allow_targets"):
            entries += parse_entries(arg.split("=", 1)[1] if "=" in arg else "", key)
        elif key == "--allow-target":
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif todo:
                value = todo.pop(0)
            else:
                raise UserError(f"--allow-target on {where} needs a value, e.g. my_methods.")
            entries += parse_entries(value, "--allow-target")
        else:
            rest.append(arg)
    if entries:
        allow(entries)
        old = [e for e in os.environ.get(ENV_VAR, "").split(",") if e.strip()]
        os.environ[ENV_VAR] = ",".join(dict.fromkeys([*old, *entries]))
    return rest
