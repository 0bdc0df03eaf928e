"""The one place that reads the config and builds things: data, noise, model, method,
optimizer, schedule; then resumes or starts the run and trains it.

Everything is built from ``_target_`` entries of the config groups (``conf/``): adding a
method, model, dataset or schedule is a file and a YAML file, never an edit here.

What happens to a run directory (see :func:`run_experiment`): a finished run with the same
config is reported, not rerun; a run with a checkpoint resumes from it when the config and
the noisy labels match, and is refused (naming the differing keys) when they do not; a
directory without a checkpoint starts afresh, after moving any earlier result files to
``previous/<time>/``. ``restart=true`` moves everything to ``previous/<time>/`` and starts
over. Nothing in the directory is moved or written until every input has been read and every
object built, so bad input never touches an earlier run. A lock file keeps two processes
from training in one directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from noisybench.cli import (
    RESUME_IGNORED,
    check_config,
    check_existing_run,
    config_differences,
    finished_message,
    refuse_other_config,
)
from noisybench.data.base import ImageData
from noisybench.data.loader import DeviceLoader
from noisybench.data.noise import NoiseRecord, apply_noise, save_labels
from noisybench.data.views import build_views, input_stats
from noisybench.engine import CHECKPOINT_FILE, EvalData, Interrupted, Trainer, TrainingDiverged
from noisybench.errors import UserError
from noisybench.io import load_checkpoint, remove_stale_temporaries
from noisybench.method import Method, MethodContext
from noisybench.recorder import RESULT_FILE, Recorder, code_version

__all__ = [
    "ARTEFACTS",
    "LABEL_FILE",
    "RESUME_IGNORED",
    "check_config",
    "config_differences",
    "run_experiment",
]

log = logging.getLogger("noisybench")

LABEL_FILE = "noisy_labels.npy"
LOCK_FILE = ".lock"
# The files a run writes (and restart=true moves to previous/<time>/). Hydra's own files
# (.hydra/<time>/ per invocation, noisybench.log appended to) stay where they are.
ARTEFACTS = (RESULT_FILE, CHECKPOINT_FILE, CHECKPOINT_FILE + ".prev", LABEL_FILE, "tb")


def _without_name(node: DictConfig) -> dict[str, Any]:
    """A config node as instantiate() kwargs: everything but the ``name`` label."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    out.pop("name", None)
    return out


def _build(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a :class:`UserError` raised by the built object
    (a missing dataset file, a bad model width, ...) through as itself, and turns any other
    failure (a broken ``_target_``, a value the constructor rejects) into one line naming
    the config group and the root cause."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause: BaseException | None = exc.__cause__
        root: BaseException = exc
        while cause is not None:
            if isinstance(cause, UserError):
                raise cause from None
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
        if "torch._inductor.config" in sys.modules or not hasattr(
            torch._C, "_set_deterministic_algorithms"
        ):
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            # What torch.use_deterministic_algorithms does, minus importing the inductor
            # compiler's config to set its flag too (about a second per run): nothing here is
            # compiled with inductor. (Were torch.compile ever used, the public call must be.)
            torch._C._set_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _prepare_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write_test."):
            pass
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


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (released by the OS even on SIGKILL)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another noisybench process is running in {run_dir}; wait for it to end, or "
                "use another run_name=..."
            ) from None
        yield
    finally:
        os.close(fd)


def _noise_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k) != current.get(k)]


def _resume_state(
    cfg: DictConfig, run_dir: Path, resolved: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Decide what ``run_dir`` holds, reading only: ``(finished result, checkpoint)``.

    Raises:
        UserError: a config differing from the run there, a corrupt checkpoint (the ``.prev``
            one is named), or a missing newest checkpoint next to a ``.prev`` one.
    """
    if cfg.restart:
        return None, None
    finished = check_existing_run(run_dir, resolved)
    if finished is not None:
        return finished, None
    path = run_dir / CHECKPOINT_FILE
    prev = path.with_name(path.name + ".prev")
    if path.exists():
        ckpt = load_checkpoint(path)
        saved = ckpt.get("config")
        saved = saved if isinstance(saved, dict) else {}
        refuse_other_config(saved, resolved, run_dir, "checkpoint")
        return None, ckpt
    if prev.exists():
        raise UserError(
            f"{run_dir} holds {prev.name} but no {path.name} (a checkpoint write was cut "
            f"short); rename {prev.name} to {path.name} to resume from it, or pass "
            "restart=true to start over (old files go to previous/)"
        )
    return None, None


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
    with _run_lock(run_dir):
        return _run_locked(cfg, run_dir)


def _run_locked(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    finished, ckpt = _resume_state(cfg, run_dir, resolved)
    if finished is not None:
        log.info("%s", finished_message(run_dir, finished))
        return finished

    # ---- read and build everything; the run directory is not touched until this succeeded
    device = _device(cfg.device)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    _set_determinism(bool(cfg.deterministic))
    torch.manual_seed(int(cfg.seed))

    data: ImageData = _build(cfg.dataset.reader, f"dataset {cfg.dataset.name}")
    n, k = data.train_labels.shape[0], data.num_classes
    if int(cfg.batch_size) > n:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {n} training images of "
            f"{cfg.dataset.name}; set batch_size to at most {n}"
        )
    noisy, noise_record = _make_noise(cfg, data)
    noise = noise_record.to_dict()
    if ckpt is not None:
        saved_noise = ckpt.get("noise") if isinstance(ckpt.get("noise"), dict) else {}
        diff = _noise_differences(saved_noise, noise)
        if diff:
            raise UserError(
                f"the checkpoint in {run_dir} was trained on different noisy labels (differing "
                f"noise record keys: {', '.join(diff)}; labels sha256 "
                f"{str(saved_noise.get('sha256', '?'))[:12]} then, {noise_record.sha256[:12]} "
                "now); use another run_name=... or pass restart=true to start over"
            )
    log.info(
        "noise %s (%s): nominal rate %.3f, realised %.4f, seed %d, labels sha256 %s",
        cfg.noise.name,
        noise_record.variant,
        noise_record.nominal_rate,
        noise_record.realised_rate,
        noise_record.seed,
        noise_record.sha256[:16],
    )

    c = int(data.train_images.shape[1])
    model_kwargs = _without_name(cfg.model)

    def build_model() -> torch.nn.Module:
        model = _build(model_kwargs, f"model {cfg.model.name}", num_classes=k, in_channels=c)
        return model.to(device)

    model = build_model()
    method: Method = _build(_without_name(cfg.method), f"method {cfg.method.name}")
    if not isinstance(method, Method):
        raise UserError(
            f"method {cfg.method.name}: {cfg.method._target_} is not a noisybench.method.Method; "
            "point _target_ at a subclass of it"
        )

    train_images = data.train_images.to(device)
    given = torch.as_tensor(noisy, dtype=torch.long, device=device)
    mean, std = input_stats(model, data.mean, data.std)  # ImageNet stats for pretrained ViT
    views = build_views(
        method.views, cfg.dataset.augment, mean, std, tuple(data.train_images.shape[-2:])
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
        ("plain",), cfg.dataset.augment, mean, std, tuple(data.train_images.shape[-2:])
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
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "method": method,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loader": loader,
        "data": eval_data,
        "epochs": int(cfg.epochs),
        "run_dir": run_dir,
        "checkpoint_extra": {"config": resolved, "noise": noise},
        "device": device,
        "amp_dtype": _amp_dtype(cfg.amp, device),
        "nonfinite": cfg.nonfinite,
        "beta1_rampdown": (
            int(cfg.optim.get("beta1_rampdown_epochs", 0)),
            float(cfg.optim.get("beta1_final", 0.0)),
        ),
        "eval_batch_size": int(cfg.eval.batch_size),
        "train_diagnostics": bool(cfg.eval.train_diagnostics),
        "progress": bool(cfg.progress),
        "method_name": str(cfg.method.name),
    }
    header = {
        "run_dir": str(run_dir),
        "config": resolved,
        "code_version": code_version(),
        "seeds": {"train": int(cfg.seed), "noise": int(cfg.noise.seed)},
        "noise": noise,
        "device": str(device),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }

    # ---- from here on the run directory changes
    if ckpt is None:
        moved = _move_aside(run_dir)
        if moved:
            log.info("earlier files of %s moved to %s", run_dir, moved)
    remove_stale_temporaries(run_dir, (CHECKPOINT_FILE, RESULT_FILE, LABEL_FILE))
    if not (run_dir / LABEL_FILE).exists():
        save_labels(run_dir / LABEL_FILE, noisy)

    history = list(ckpt["history"]) if ckpt is not None else []
    recorder = Recorder(
        run_dir,
        header,
        history=history,
        tensorboard=bool(cfg.tensorboard),
        # Resuming: TensorBoard drops what earlier writers logged from the last completed
        # epoch on, and that epoch is logged again (a kill between the checkpoint and the
        # scalars of an epoch must not leave a gap).
        purge_step=max(len(history), 1) if ckpt is not None else None,
    )
    try:
        trainer = Trainer(recorder=recorder, **trainer_kwargs)
        start_epoch, start_step, sums = 0, 0, None
        if ckpt is not None:
            start_epoch, start_step, sums = trainer.load_state_dict(ckpt)
            log.info("resuming %s at epoch %d, step %d", run_dir, start_epoch + 1, start_step)
            if history:
                recorder.log_scalars(history[-1])
        recorder.write("running")
        trainer.fit(start_epoch, start_step, sums)
    except Interrupted as exc:
        recorder.write("interrupted", error=str(exc))
        raise
    except KeyboardInterrupt:
        message = (
            "interrupted by a second SIGINT/SIGTERM during a step; the last checkpoint is kept: "
            "run the same command again to resume"
        )
        recorder.write("interrupted", error=message)
        raise Interrupted(message, signal.SIGINT) from None
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
