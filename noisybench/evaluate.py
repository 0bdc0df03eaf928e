"""``python -m noisybench.evaluate RUN_DIR... eval=[calibration,ood] [suite.key=value ...]``:
evaluation suites on finished runs.

For every run directory it reads ``result.json`` (the resolved config is under ``config``),
``checkpoint.pt`` and ``noisy_labels.npy``, rebuilds the dataset, the model and the method
from the saved config (:func:`rebuild_model`), runs the chosen suites (``conf/eval/<name>.yaml``;
default: calibration and temperature) and writes ``evaluation.json`` into the run directory
atomically. Results of suites run earlier are kept; a suite run again replaces its keys.

Options (Hydra-style ``key=value``, or ``--eval a,b``):

* ``eval=[a,b]`` or ``eval=a,b``: the suites (``eval=all``: every suite with a YAML file);
* ``<suite>.<setting>=<value>``: a suite setting, e.g. ``ood.source=sklearn_patches``;
* ``device=auto|cpu|cuda``, ``batch_size=1024``, ``data_dir=PATH`` (where suites look for
  their files; default: the run's ``data_dir``).

evaluation.json::

    {"run_dir": ..., "checkpoint_epoch": E, "method": ..., "seed": ..., "noise": ...,
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from noisybench.build import resolve_device
from noisybench.config import instantiate, without_name
from noisybench.errors import UserError
from noisybench.evaluation import (
    EvalContext,
    available_suites,
    load_suite,
    make_predict,
    run_suites,
)
from noisybench.evaluation.selection import selection_summary
from noisybench.rundir import RunDir, check_label_array, check_saved_config, read_evaluation
from noisybench.safety import take_command_line

__all__ = ["EVALUATION_FILE", "evaluate_run", "main", "rebuild_model"]

EVALUATION_FILE = "evaluation.json"
DEFAULT_SUITES = ("calibration", "temperature")


def rebuild_model(config: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """The run's model from its resolved config (the config's ``model`` node minus ``name``,
    instantiated with ``num_classes`` and ``in_channels``), as ``noisybench.run`` builds it.
    The one place to swap for the lead's ``build()``."""
    node = without_name(dict(config["model"]))
    what = f"model {config['model'].get('name')}"
    return instantiate(node, what, num_classes=num_classes, in_channels=in_channels)


def evaluate_run(
    run_dir: str | Path,
    suites: Sequence[str],
    overrides: dict[str, dict[str, Any]] | None = None,
    device: str = "auto",
    batch_size: int = 1024,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate one finished run with ``suites``; writes and returns its evaluation.json."""
    from noisybench.data.views import build_views
    from noisybench.io import atomic_write_json, load_checkpoint
    from noisybench.method import Method, MethodContext

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    result = rd.read_result()
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict):
        raise UserError(
            f"{run_dir / 'result.json'} is missing or unreadable; pass a run directory of "
            "noisybench (it holds result.json and checkpoint.pt)"
        )
    config = result["config"]
    # The run directory may be someone else's: nothing it names is imported or called unless
    # the allow-list admits it (noisybench.safety), and its shape is checked first.
    check_saved_config(config, run_dir / "result.json")
    previous = read_evaluation(run_dir / EVALUATION_FILE)  # a damaged one is not overwritten
    if result.get("status") != "finished":
        print(
            f"noisybench.evaluate: warning: {run_dir} is not finished (status "
            f"{result.get('status')!r}); its checkpoint is evaluated as it is",
            file=sys.stderr,
        )
    dev = resolve_device(device)
    built = [load_suite(name, (overrides or {}).get(name)) for name in suites]
    ckpt = load_checkpoint(rd.checkpoint_file, map_location=dev)

    if config["dataset"].get("streaming"):
        raise UserError(
            f"{run_dir} trained on the streamed dataset {config['dataset'].get('name')}; the "
            "evaluation suites need its images in memory, so they run on in-memory datasets only"
        )
    reader = dict(config["dataset"]["reader"])
    if data_dir and reader.get("root") == config.get("data_dir"):
        reader["root"] = data_dir  # the dataset moved with data_dir=
    data = instantiate(reader, f"dataset {config['dataset'].get('name')}")
    k, c = data.num_classes, int(data.train_images.shape[1])
    label_path = rd.label_file
    if not label_path.is_file():
        raise UserError(f"{label_path} is missing; the run directory is incomplete, rerun it")
    try:
        raw = np.load(label_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{label_path} is not a readable .npy file ({type(err).__name__}); the run "
            "directory is damaged, rerun the experiment (restart=true)"
        ) from None
    n_train = int(data.train_images.shape[0])
    given = torch.from_numpy(check_label_array(raw, n_train, k, label_path))
    train_images, train_clean = data.train_images, data.train_labels
    validation = config.get("validation") or {}
    if float(validation.get("fraction") or 0.0) > 0.0:
        # The run trained on the rest of a held-out split (noisybench.data.split): the
        # method's per-sample state and the dark-knowledge statistics cover that part only.
        from noisybench.data.split import holdout_split

        keep, _ = holdout_split(
            int(given.numel()),
            float(validation["fraction"]),
            int(validation.get("seed", 0)),
            labels=given.numpy(),
        )
        index = torch.as_tensor(keep)
        given, train_images, train_clean = given[index], train_images[index], train_clean[index]

    def build_model() -> nn.Module:
        return rebuild_model(config, k, c).to(dev)

    model = build_model()
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(
            f"the checkpoint in {run_dir} does not fit the model of its config ({str(exc)[:80]})"
        ) from exc
    method = instantiate(
        without_name(dict(config["method"])), f"method {config['method'].get('name')}"
    )
    if not isinstance(method, Method):
        raise UserError(f"the run's method {config['method'].get('name')} is not a Method")
    method.setup(
        MethodContext(
            num_samples=int(given.numel()),
            num_classes=k,
            noisy_labels=given.to(dev),
            epochs=int(config["epochs"]),
            steps_per_epoch=1,
            device=dev,
            build_model=build_model,
        )
    )
    method.to(dev)
    if isinstance(ckpt.get("method"), dict):
        try:
            method.load_state_dict(ckpt["method"])
        except RuntimeError as exc:
            raise UserError(
                f"the method state in {run_dir / 'checkpoint.pt'} does not fit the method of its "
                f"config ({str(exc).splitlines()[0][:100]}); was the run trained on a subset?"
            ) from exc
    view = build_views(
        ("plain",),
        config["dataset"].get("augment"),
        data.mean,
        data.std,
        tuple(data.train_images.shape[-2:]),
    )["plain"]
    if isinstance(view, nn.Module):
        view = view.to(dev)
    predict = make_predict(model, view, dev, int(batch_size), method)
    ctx = EvalContext(
        num_classes=k,
        test_images=data.test_images,
        test_labels=data.test_labels.to(dev),
        data_dir=Path(data_dir or config.get("data_dir") or "./data"),
        device=dev,
        dataset=str(config["dataset"].get("name", "")),
        seed=int(config.get("seed", 0)),
        train_images=train_images,
        train_labels=given.to(dev),
        train_clean=train_clean.to(dev),
    )
    metrics = run_suites([s for s, _ in built], predict, ctx)
    if "dark_knowledge" in suites and (run_dir / "predictions").is_dir():
        from noisybench.evaluation.dark_knowledge import kl_to_final, load_snapshots

        epochs, logits, _ = load_snapshots(run_dir)
        kl, temps = kl_to_final(logits)
        metrics["dark_knowledge/kl_epochs"] = [float(e) for e in epochs]
        metrics["dark_knowledge/kl_to_final"] = kl
        metrics["dark_knowledge/kl_temperature"] = temps

    path = run_dir / EVALUATION_FILE
    old_metrics = {
        key: value
        for key, value in (previous.get("metrics") or {}).items()
        if key.split("/")[0] not in suites
    }
    out = {
        "run_dir": str(run_dir),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint_epoch": ckpt.get("epoch"),
        "status": result.get("status"),
        "dataset": config["dataset"].get("name"),
        "model": config["model"].get("name"),
        "noise": config.get("noise", {}).get("name"),
        "method": config["method"].get("name"),
        "seed": config.get("seed"),
        "suites": {
            **(previous.get("suites") or {}),
            **{n: cfg for n, (_, cfg) in zip(suites, built, strict=True)},
        },
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
        elif key in ("device", "batch_size", "data_dir"):
            options[key] = value
        elif "." in key:
            suite, setting = key.split(".", 1)
            overrides.setdefault(suite, {})[setting] = yaml.safe_load(value)
        else:
            raise UserError(
                f"unknown option {key}=; use eval=[...], <suite>.<setting>=..., device=, "
                "batch_size= or data_dir="
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
        batch_size = options.get("batch_size", "1024")
        if not batch_size.isdigit() or int(batch_size) < 1:
            raise UserError(f"batch_size={batch_size} is not a positive integer; e.g. 1024")
        for run in runs:
            out = evaluate_run(
                run,
                suites,
                overrides,
                device=options.get("device", "auto"),
                batch_size=int(batch_size),
                data_dir=options.get("data_dir"),
            )
            n = sum(1 for v in out["metrics"].values() if isinstance(v, float | int))
            print(f"{Path(run) / EVALUATION_FILE}: {n} numbers from {', '.join(suites)}")
    except UserError as exc:
        print(f"noisybench.evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
