"""``python -m noisybench.evaluate RUN_DIR... eval=[calibration,ood] [suite.key=value ...]``:
evaluation suites on finished runs.

For every run directory it reads ``result.json`` (the resolved config is under ``config``),
``checkpoint.pt`` (and ``selected.pt``, the selected epoch's weights) and ``noisy_labels.npy``,
rebuilds the dataset, the model and the method
from the saved config (:func:`rebuild_model`), runs the chosen suites (``conf/eval/<name>.yaml``;
default: calibration and temperature) and writes ``evaluation.json`` into the run directory
atomically. Results of suites run earlier are kept; a suite run again replaces its keys.

Options (Hydra-style ``key=value``, or ``--eval a,b``):

* ``eval=[a,b]`` or ``eval=a,b``: the suites (``eval=all``: every suite with a YAML file);
* ``<suite>.<setting>=<value>``: a suite setting, e.g. ``ood.source=sklearn_patches``;
* ``device=auto|cpu|cuda``, ``batch_size=1024``, ``data_dir=PATH`` (where suites look for
  their files; default: the run's ``data_dir``);
* ``weights=selected|last``: which model is evaluated (issue 22). ``selected`` (the default):
  the weights of the epoch the run's selection rule picked (``selected.pt``, written by
  :mod:`noisybench.selected`; for a run whose rule is ``last`` that is the last checkpoint);
  ``last``: the last checkpoint's;
* ``allow_unfinished=true``: evaluate a run that has not finished (interrupted or still
  running); without it such a run is refused, so no number of a half-trained model is taken
  for a result by accident.

evaluation.json::

    {"run_dir": ..., "checkpoint_epoch": E (the epoch of the weights evaluated),
     "weights": {"used": "selected" | "last", "file", "epoch", "rule", "selected_on",
                 "last_epoch"}, "unfinished": bool, "method": ..., "seed": ..., "noise": ...,
     "suites": {name: settings}, "metrics": {"<suite>/<key>": float | [floats]},
     "selection": {"last" | "best_test" | "noisy_val": {"epoch", "selected_on", "test/acc", ...}}}

A run trained on part of a held-out split (``validation.fraction > 0`` and
``validation.seed`` in its config, :func:`noisybench.data.split.holdout_split` stratified by
the saved noisy labels) is evaluated on that part of the training set.

With the ``dark_knowledge`` suite and per-epoch snapshots in ``<run>/predictions/``, the
metrics also hold ``dark_knowledge/kl_epochs``, ``dark_knowledge/kl_to_final`` and
``dark_knowledge/kl_temperature`` (Figure 11).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from noisybench.build import resolve_device
from noisybench.config import instantiate, without_name
from noisybench.errors import UserError
from noisybench.evaluation import Predictor, available_suites, load_suite, run_suites
from noisybench.evaluation.selection import selection_summary
from noisybench.rundir import RunDir, check_saved_config, read_evaluation
from noisybench.safety import take_command_line

__all__ = ["EVALUATION_FILE", "EvaluateOptions", "evaluate_run", "main", "rebuild_model"]

EVALUATION_FILE = "evaluation.json"
WEIGHTS = ("selected", "last")
DEFAULT_SUITES = ("calibration", "temperature")


def rebuild_model(config: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """The run's model alone from its resolved config (the config's ``model`` node minus
    ``name``, instantiated with ``num_classes`` and ``in_channels``); :func:`evaluate_run`
    rebuilds the whole run with :func:`noisybench.build.rebuild` instead."""
    node = without_name(dict(config["model"]))
    what = f"model {config['model'].get('name')}"
    return instantiate(node, what, num_classes=num_classes, in_channels=in_channels)


def _load_states(run_dir: Path, ckpt: dict[str, Any], model: nn.Module, method: Any) -> None:
    """The checkpoint's model and method states, or one line saying why they do not fit."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(
            f"the checkpoint in {run_dir} does not fit the model of its config ({str(exc)[:80]})"
        ) from exc
    if isinstance(ckpt.get("method"), dict):
        try:
            method.load_state_dict(ckpt["method"])
        except RuntimeError as exc:
            raise UserError(
                f"the method state in {run_dir / 'checkpoint.pt'} does not fit the method of its "
                f"config ({str(exc).splitlines()[0][:100]}); was the run trained on a subset?"
            ) from exc


def _read_result(rd: RunDir) -> dict[str, Any]:
    """The run's result.json, or one line saying it is missing."""
    result = rd.read_result()
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict):
        raise UserError(
            f"{rd.path / 'result.json'} is missing or unreadable; pass a run directory of "
            "noisybench (it holds result.json and checkpoint.pt)"
        )
    return result


@dataclass(frozen=True)
class EvaluateOptions:
    """The command line's options (module docstring): ``device``, ``batch_size``,
    ``data_dir`` (where the dataset and the suites' files moved to), ``weights``
    (``selected``: the epoch the run's selection rule picked, ``selected.pt``; ``last``: the
    last checkpoint) and ``allow_unfinished`` (evaluate a run that has not finished)."""

    device: str = "auto"
    batch_size: int = 1024
    data_dir: str | None = None
    weights: str = "selected"
    allow_unfinished: bool = False

    @classmethod
    def from_command_line(cls, options: Mapping[str, str]) -> EvaluateOptions:
        """The options of ``key=value`` strings, each checked (one line when it is bad)."""
        batch_size = options.get("batch_size", "1024")
        if not batch_size.isdigit() or int(batch_size) < 1:
            raise UserError(f"batch_size={batch_size} is not a positive integer; e.g. 1024")
        weights = options.get("weights", "selected")
        if weights not in WEIGHTS:
            raise UserError(
                f"weights={weights} is not one of {', '.join(WEIGHTS)}; e.g. weights=last"
            )
        allow = options.get("allow_unfinished", "false").lower()
        if allow not in ("true", "false"):
            raise UserError(f"allow_unfinished={allow} is not true or false")
        return cls(
            device=options.get("device", "auto"),
            batch_size=int(batch_size),
            data_dir=options.get("data_dir"),
            weights=weights,
            allow_unfinished=allow == "true",
        )


def evaluate_run(
    run_dir: str | Path,
    suites: Sequence[str],
    overrides: dict[str, dict[str, Any]] | None = None,
    options: EvaluateOptions | None = None,
) -> dict[str, Any]:
    """Evaluate one finished run with ``suites`` (``overrides``: settings by suite) and the
    command line's ``options``; writes and returns its evaluation.json.

    The run is rebuilt by :func:`noisybench.build.rebuild`, the same parts that built it for
    training, so the model sees its inputs normalised as in training (a pretrained ViT:
    ImageNet's statistics, ``model.input_stats``).
    """
    from noisybench.build import rebuild, suite_context
    from noisybench.io import load_checkpoint

    opts = options or EvaluateOptions()
    weights, data_dir = opts.weights, opts.data_dir
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    result = _read_result(rd)
    config = result["config"]
    # The run directory may be someone else's: nothing it names is imported or called unless
    # the allow-list admits it (noisybench.safety), and its shape is checked first.
    check_saved_config(config, run_dir / "result.json")
    previous = read_evaluation(run_dir / EVALUATION_FILE)  # a damaged one is not overwritten
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights} is not one of {', '.join(WEIGHTS)}; e.g. weights=last")
    unfinished = result.get("status") != "finished"
    if unfinished and not opts.allow_unfinished:
        raise UserError(
            f"{run_dir} is not finished (status {result.get('status')!r}): its numbers are not "
            "a result; resume it with the same command, or pass allow_unfinished=true to "
            "evaluate its last checkpoint as it is"
        )
    if unfinished:
        print(
            f"noisybench.evaluate: warning: {run_dir} is not finished (status "
            f"{result.get('status')!r}); evaluated as it is (allow_unfinished=true)",
            file=sys.stderr,
        )
    dev = resolve_device(opts.device)
    built = [load_suite(name, (overrides or {}).get(name)) for name in suites]
    ckpt = load_checkpoint(rd.checkpoint_file, map_location=dev)
    chosen = _choose_weights(run_dir, result, ckpt, weights, dev, check=not unfinished)
    run = rebuild(config, rd.label_file, dev, data_dir)
    model, method = run.networks.model, run.networks.method
    # The method's state (second networks, running targets) is the last checkpoint's: selected.pt
    # keeps the model's weights only (noisybench.selected).
    _load_states(run_dir, {**ckpt, "model": chosen.pop("state")}, model, method)
    # The one prediction path of training (its images and its data source's splits).
    predict = Predictor(
        model, method, dev, int(opts.batch_size), view=run.source.view, source=run.source
    )
    ctx = suite_context(run.cfg, run.data, run.source, dev, data_dir, method)
    metrics = run_suites([s for s, _ in built], predict, ctx)
    if "dark_knowledge" in suites and (run_dir / "predictions").is_dir():
        from noisybench.evaluation.dark_knowledge import kl_to_final, load_snapshots

        epochs, logits, _ = load_snapshots(run_dir)
        kl, temps = kl_to_final(logits)
        metrics["dark_knowledge/kl_epochs"] = [float(e) for e in epochs]
        metrics["dark_knowledge/kl_to_final"] = kl
        metrics["dark_knowledge/kl_temperature"] = temps
    settings = {n: cfg for n, (_, cfg) in zip(suites, built, strict=True)}
    return _write_evaluation(run_dir, result, chosen, settings, metrics, previous)


def _choose_weights(
    run_dir: Path,
    result: dict[str, Any],
    ckpt: dict[str, Any],
    weights: str,
    device: Any,
    check: bool,
) -> dict[str, Any]:
    """The model weights to evaluate and where they come from (evaluation.json's ``weights``).

    ``selected``: ``selected.pt`` when the run's rule (result.json's ``selection_rule``) picks
    epochs by a validation or test number; the last checkpoint when the rule is ``last`` (or
    the run predates ``selection_rule``, when only the last checkpoint was kept). On a
    finished run the file's epoch must be the one its history selects (``check``): a stale or
    foreign ``selected.pt`` is refused rather than reported as the selected model.
    """
    from noisybench.evaluation.selection import select_epoch
    from noisybench.io import load_checkpoint
    from noisybench.selected import SELECTED_FILE

    last_epoch = ckpt.get("epoch")
    rule = str(result.get("selection_rule") or "last")
    if weights == "last" or rule == "last":
        return {
            "state": ckpt["model"],
            "used": "last",
            "file": "checkpoint.pt",
            "epoch": last_epoch,
            "rule": rule,
            "selected_on": None if weights == "last" else "none (last epoch)",
            "last_epoch": last_epoch,
        }
    path = run_dir / SELECTED_FILE
    if not path.is_file():
        raise UserError(
            f"{path} is missing, though the run selects its epoch by '{rule}'; pass "
            "weights=last to evaluate the last checkpoint instead"
        )
    try:
        sel = load_checkpoint(path, map_location=device)
    except UserError as exc:
        raise UserError(
            f"{str(exc).split('; ')[0]}; pass weights=last to evaluate the last checkpoint instead"
        ) from exc
    if check:
        want = select_epoch(result.get("history") or [], rule).get("epoch")
        if sel.get("epoch") != want or sel.get("rule") != rule:
            raise UserError(
                f"{path} holds epoch {sel.get('epoch')} (rule {sel.get('rule')!r}) but the run's "
                f"history selects epoch {want} by '{rule}'; it is stale or from another run: "
                "pass weights=last to evaluate the last checkpoint instead"
            )
    return {
        "state": sel["model"],
        "used": "selected",
        "file": SELECTED_FILE,
        "epoch": sel.get("epoch"),
        "rule": rule,
        "selected_on": sel.get("selected_on"),
        "last_epoch": last_epoch,
    }


def _write_evaluation(
    run_dir: Path,
    result: dict[str, Any],
    chosen: dict[str, Any],
    settings: dict[str, dict[str, Any]],
    metrics: dict[str, Any],
    previous: dict[str, Any],
) -> dict[str, Any]:
    """evaluation.json: the earlier suites' results (``previous``) kept, the suites run now
    replaced."""
    from noisybench.io import atomic_write_json

    config = result["config"]
    path = run_dir / EVALUATION_FILE
    old_metrics = {
        key: value
        for key, value in (previous.get("metrics") or {}).items()
        if key.split("/")[0] not in settings
    }
    out = {
        "run_dir": str(run_dir),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint_epoch": chosen["epoch"],  # the epoch whose weights were evaluated
        "weights": chosen,
        "status": result.get("status"),
        "unfinished": result.get("status") != "finished",
        "dataset": config["dataset"].get("name"),
        "model": config["model"].get("name"),
        "noise": config.get("noise", {}).get("name"),
        "method": config["method"].get("name"),
        "seed": config.get("seed"),
        "suites": {**(previous.get("suites") or {}), **settings},
        "metrics": {**old_metrics, **metrics},
        "selection": selection_summary(result.get("history") or []),
    }
    atomic_write_json(path, out)
    return out


def _parse(
    argv: Sequence[str],
) -> tuple[list[str], list[str], dict[str, dict[str, Any]], dict[str, str]]:
    runs: list[str] = []
    suites: list[str] = list(DEFAULT_SUITES)
    overrides: dict[str, dict[str, Any]] = {}
    options: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg == "--eval" or arg.startswith("--eval="):
            value = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
            arg = f"eval={value}"
        if "=" not in arg:
            runs.append(arg)
            continue
        key, value = arg.split("=", 1)
        if key == "eval":
            names = [n.strip() for n in value.strip("[]").split(",") if n.strip()]
            suites = available_suites() if names == ["all"] else names
            if not suites:
                raise UserError("eval= names no suite; e.g. eval=[calibration,ood]")
        elif key in ("device", "batch_size", "data_dir", "weights", "allow_unfinished"):
            options[key] = value
        elif "." in key:
            suite, setting = key.split(".", 1)
            overrides.setdefault(suite, {})[setting] = yaml.safe_load(value)
        else:
            raise UserError(
                f"unknown option {key}=; use eval=[...], <suite>.<setting>=..., device=, "
                "batch_size=, data_dir=, weights=selected|last or allow_unfinished=true"
            )
    if not runs:
        raise UserError(
            "no run directory given; usage: python -m noisybench.evaluate RUN_DIR... "
            "eval=[calibration]"
        )
    stray = sorted(set(overrides) - set(suites))
    if stray:
        raise UserError(
            f"settings given for suite(s) {', '.join(stray)} that eval= does not select"
        )
    return runs, suites, overrides, options


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on a UserError)."""
    try:
        args = take_command_line(sys.argv[1:] if argv is None else argv, "noisybench evaluate")
        runs, suites, overrides, options = _parse(args)
        opts = EvaluateOptions.from_command_line(options)
        for run in runs:
            out = evaluate_run(run, suites, overrides, opts)
            w = out["weights"]
            print(
                f"{Path(run)}: evaluated the {w['used']} weights ({w['file']}, epoch {w['epoch']}"
                + (f", selected by '{w['rule']}'" if w["used"] == "selected" else "")
                + ")"
            )
            n = sum(1 for v in out["metrics"].values() if isinstance(v, float | int))
            print(f"{Path(run) / EVALUATION_FILE}: {n} numbers from {', '.join(suites)}")
    except UserError as exc:
        print(f"noisybench.evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
