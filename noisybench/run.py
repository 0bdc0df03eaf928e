"""The one place that reads the config and builds things: data, noise, model, method,
optimizer, schedule; then resumes or starts the run and trains it.

Everything is built from ``_target_`` entries of the config groups (``conf/``): adding a
method, model, dataset or schedule is a file and a YAML file, never an edit here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from noisybench.data.base import ImageData
from noisybench.data.loader import DeviceLoader
from noisybench.data.noise import NoiseRecord, apply_noise, save_labels
from noisybench.data.views import build_views
from noisybench.engine import CHECKPOINT_FILE, EvalData, Interrupted, Trainer, TrainingDiverged
from noisybench.errors import UserError
from noisybench.io import load_checkpoint
from noisybench.method import Method, MethodContext
from noisybench.recorder import RESULT_FILE, Recorder, code_version

__all__ = ["LABEL_FILE", "check_config", "config_differences", "run_experiment"]

log = logging.getLogger("noisybench")

LABEL_FILE = "noisy_labels.npy"
# Keys that may differ between a checkpoint and the command that resumes it: they change
# where files are or how progress is shown, not what is computed.
RESUME_IGNORED = (
    "restart",
    "progress",
    "tensorboard",
    "device",
    "data_dir",
    "out_dir",
    "dataset.reader.root",
    "dataset.reader.download",
    "dataset.reader.verify",
    "eval.batch_size",
)
ARTEFACTS = (RESULT_FILE, CHECKPOINT_FILE, CHECKPOINT_FILE + ".prev", LABEL_FILE, "tb")


def _without_name(node: DictConfig) -> dict[str, Any]:
    """A config node as instantiate() kwargs: everything but the ``name`` label."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    out.pop("name", None)
    return out


def _build(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a :class:`UserError` raised by the built object
    (a missing dataset file, a bad model width, ...) through as itself, and turns a broken
    ``_target_`` into one line naming the config group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot build the {what} from its config ({first}); check its YAML file"
        ) from exc


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings with one actionable line each (before anything is built)."""
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise UserError(f"epochs={cfg.epochs} is invalid; set epochs to a positive integer")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(
            f"batch_size={cfg.batch_size} is invalid; set batch_size to a positive integer"
        )
    rate = cfg.noise.rate
    if not isinstance(rate, int | float) or not 0.0 <= float(rate) < 1.0:
        raise UserError(f"noise.rate={rate} is outside [0, 1); choose a rate like noise.rate=0.4")
    if cfg.nonfinite not in ("stop", "skip"):
        raise UserError(f"nonfinite={cfg.nonfinite} is unknown; use nonfinite=stop or skip")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise UserError(f"amp={cfg.amp} is unknown; use amp=auto, off, bf16 or fp16")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (ignoring
    :data:`RESUME_IGNORED`)."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not k.startswith(RESUME_IGNORED)]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device={name} is not a device; use device=auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but no GPU is visible; use device=auto")
    return device


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "off" or device.type != "cuda":
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write to the run directory {run_dir} ({exc.strerror}); "
            "choose a writable out_dir=... or run_name=..."
        ) from exc


def _move_aside(run_dir: Path) -> Path | None:
    """Move earlier artefacts of ``run_dir`` into ``previous/<timestamp>/`` (never delete)."""
    present = [run_dir / name for name in ARTEFACTS if (run_dir / name).exists()]
    if not present:
        return None
    target = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    target.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), str(target / path.name))
    return target


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _make_noise(cfg: DictConfig, data: ImageData) -> tuple[np.ndarray, NoiseRecord]:
    """The run's noisy training labels: read from ``noise.label_file`` or drawn fresh."""
    return apply_noise(
        data.train_labels.numpy(),
        data.num_classes,
        variant=cfg.noise.variant,
        rate=float(cfg.noise.rate),
        seed=int(cfg.noise.seed),
        asym_map=cfg.noise.asym_map or cfg.dataset.get("asym_map"),
        label_file=cfg.noise.label_file,
        superclass=None if data.superclass is None else data.superclass.numpy(),
        features=data.train_images.numpy(),
    )


def run_experiment(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume, or report) the experiment that ``cfg`` describes in ``run_dir``.

    Returns the content of the result file. Raises :class:`UserError` for bad input and
    :class:`TrainingDiverged`/:class:`Interrupted` when training stops early; in every case the
    run directory keeps its last good checkpoint and a readable result file.
    """
    check_config(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    _prepare_run_dir(run_dir)

    previous = _read_result(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if cfg.restart:
        moved = _move_aside(run_dir)
        if moved:
            log.info("restart=true: earlier files of %s moved to %s", run_dir, moved)
    elif previous is not None and previous.get("status") == "finished":
        best, last = previous.get("best") or {}, previous.get("last") or {}
        log.info(
            "%s already finished (last-epoch test acc %.4f, best %.4f at epoch %s); "
            "pass restart=true to run it again",
            run_dir,
            last.get("test/acc") or float("nan"),
            best.get("test/acc") or float("nan"),
            best.get("epoch"),
        )
        return previous
    elif not checkpoint_path.exists():
        moved = _move_aside(run_dir)  # a run that died before its first checkpoint
        if moved:
            log.info("earlier unfinished files of %s moved to %s", run_dir, moved)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    ckpt = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    if ckpt is not None:
        diff = config_differences(ckpt.get("config", {}), resolved)
        if diff:
            raise UserError(
                f"the checkpoint in {run_dir} was made with a different config (differing keys: "
                f"{', '.join(diff)}); use another run_name=... or restart=true to start over"
            )

    device = _device(cfg.device)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    _set_determinism(bool(cfg.deterministic))
    torch.manual_seed(int(cfg.seed))

    data: ImageData = _build(cfg.dataset.reader, f"dataset {cfg.dataset.name}")
    noisy, noise_record = _make_noise(cfg, data)
    if ckpt is not None and ckpt.get("noise", {}).get("sha256") != noise_record.sha256:
        raise UserError(
            f"the checkpoint in {run_dir} was trained on different noisy labels (hash "
            f"{ckpt.get('noise', {}).get('sha256', '?')[:12]} vs {noise_record.sha256[:12]}); "
            "use another run_name=... or restart=true"
        )
    if not (run_dir / LABEL_FILE).exists():
        save_labels(run_dir / LABEL_FILE, noisy)
    log.info(
        "noise %s (%s): nominal rate %.3f, realised %.4f, seed %d, labels sha256 %s",
        cfg.noise.name,
        noise_record.variant,
        noise_record.nominal_rate,
        noise_record.realised_rate,
        noise_record.seed,
        noise_record.sha256[:16],
    )

    n, k = data.train_labels.shape[0], data.num_classes
    c = int(data.train_images.shape[1])
    model_kwargs = _without_name(cfg.model)

    def build_model() -> torch.nn.Module:
        model = _build(model_kwargs, f"model {cfg.model.name}", num_classes=k, in_channels=c)
        return model.to(device)

    model = build_model()
    method: Method = _build(_without_name(cfg.method), f"method {cfg.method.name}")
    if not isinstance(method, Method):
        raise UserError(
            f"method {cfg.method.name}: {cfg.method._target_} is not a noisybench.method.Method"
        )

    train_images = data.train_images.to(device)
    given = torch.as_tensor(noisy, dtype=torch.long, device=device)
    views = build_views(
        method.views, cfg.dataset.augment, data.mean, data.std, tuple(data.train_images.shape[-2:])
    )
    loader = DeviceLoader(
        train_images,
        given,
        int(cfg.batch_size),
        views,
        seed=int(cfg.seed),
        carry_previous=float(type(method).carry_previous),
    )
    method.setup(
        MethodContext(
            num_samples=n,
            num_classes=k,
            noisy_labels=given,
            epochs=int(cfg.epochs),
            steps_per_epoch=len(loader),
            device=device,
            build_model=build_model,
        )
    )
    method.to(device)
    params = [p for m in (model, *method.extra_modules()) for p in m.parameters()]
    optimizer = _build(cfg.optim.optimizer, f"optimizer of optim {cfg.optim.name}", params=params)
    scheduler = _build(
        cfg.optim.scheduler,
        f"scheduler of optim {cfg.optim.name}",
        optimizer=optimizer,
        total_steps=int(cfg.epochs) * len(loader),
        steps_per_epoch=len(loader),
    )
    plain = build_views(
        ("plain",), cfg.dataset.augment, data.mean, data.std, tuple(data.train_images.shape[-2:])
    )["plain"]
    if isinstance(plain, torch.nn.Module):
        plain = plain.to(device)
    eval_data = EvalData(
        test_images=data.test_images.to(device),
        test_labels=data.test_labels.to(device),
        train_images=train_images,
        train_clean=data.train_labels.to(device),
        train_given=given,
        view=plain,
    )

    header = {
        "run_dir": str(run_dir),
        "config": resolved,
        "code_version": code_version(),
        "seeds": {"train": int(cfg.seed), "noise": int(cfg.noise.seed)},
        "noise": noise_record.to_dict(),
        "device": str(device),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    history = list(ckpt["history"]) if ckpt is not None else []
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    recorder = Recorder(
        run_dir,
        header,
        history=history,
        tensorboard=bool(cfg.tensorboard),
        purge_step=start_epoch + 1 if ckpt is not None else None,
    )
    trainer = Trainer(
        model=model,
        method=method,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        data=eval_data,
        epochs=int(cfg.epochs),
        run_dir=run_dir,
        recorder=recorder,
        checkpoint_extra={"config": resolved, "noise": noise_record.to_dict()},
        device=device,
        amp_dtype=_amp_dtype(cfg.amp, device),
        nonfinite=cfg.nonfinite,
        beta1_rampdown=(
            int(cfg.optim.get("beta1_rampdown_epochs", 0)),
            float(cfg.optim.get("beta1_final", 0.0)),
        ),
        eval_batch_size=int(cfg.eval.batch_size),
        train_diagnostics=bool(cfg.eval.train_diagnostics),
        progress=bool(cfg.progress),
        method_name=str(cfg.method.name),
    )
    start_step, sums = 0, None
    if ckpt is not None:
        start_epoch, start_step, sums = trainer.load_state_dict(ckpt)
        log.info("resuming %s at epoch %d, step %d", run_dir, start_epoch + 1, start_step)
    try:
        trainer.fit(start_epoch, start_step, sums)
    except Interrupted as exc:
        recorder.write("interrupted", error=str(exc))
        raise
    except TrainingDiverged as exc:
        recorder.write("failed", error=str(exc))
        raise
    except Exception as exc:
        recorder.write("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        recorder.close()
    result = recorder.write("finished")
    best, last = result["best"] or {}, result["last"] or {}
    log.info(
        "finished %s: last-epoch test acc %.4f, best %.4f at epoch %s (selected on the test set)",
        run_dir,
        last.get("test/acc", float("nan")),
        best.get("test/acc", float("nan")),
        best.get("epoch"),
    )
    return result
