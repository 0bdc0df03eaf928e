"""``build(cfg)``: every object a run needs, from its config, touching no file.

Data, noisy labels, model, method, loader, optimizer, schedule and evaluation tensors are built
from the ``_target_`` entries of the config groups (``conf/``): adding a method, model, dataset
or schedule is a Python file and a YAML file, never an edit here. Tests and benchmarks call
:func:`build` instead of wiring the pieces by hand; :mod:`noisybench.run` adds the run
directory and the callbacks around it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from noisybench import distributed as dist
from noisybench.config import instantiate, resolved, without_name
from noisybench.data.advice import fit_advice
from noisybench.data.base import ImageData
from noisybench.data.noise import (
    SHARED_KEYS,
    Noise,
    NoiseRecord,
    make_noise_record,
    noise_by_name,
    noise_data,
    noisy_labels,
)
from noisybench.data.source import (
    DataSource,
    EvalLabels,
    InMemorySource,
    LoaderSpec,
    StreamedSource,
)
from noisybench.data.views import ViewWrapper, build_views, input_stats
from noisybench.engine import Trainer, TrainParts, TrainSettings
from noisybench.errors import UserError
from noisybench.method import Method, MethodContext
from noisybench.schedules import with_beta1_rampdown

__all__ = [
    "ChannelsLast",
    "Experiment",
    "build",
    "deterministic_algorithms",
    "deterministic_for",
    "eval_batch_size",
    "optimizer_impl_kwargs",
    "rebuild",
    "resolve_auto",
    "resolve_device",
    "set_determinism",
]

log = logging.getLogger("noisybench")


@dataclass
class Experiment:
    """Everything :func:`build` makes; :meth:`trainer` wires it into a
    :class:`noisybench.engine.Trainer`."""

    cfg: DictConfig
    device: torch.device
    data: Any  # ImageData, or FolderData for a streamed dataset
    noisy_labels: np.ndarray
    noise: NoiseRecord
    model: torch.nn.Module
    method: Method
    source: DataSource  # in memory, or streamed (noisybench.data.source)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: torch.dtype | None
    build_model: Callable[[], torch.nn.Module]
    suites: Any  # noisybench.evaluation.SuiteRunner: the built-in and the configured suites
    validation: dict[str, Any] | None = None

    def trainer(self, callbacks: list[Any] | tuple[Any, ...] = ()) -> Trainer:
        """A :class:`Trainer` over these objects with the config's engine settings."""
        cfg = self.cfg
        return Trainer(
            TrainParts(self.model, self.method, self.optimizer, self.scheduler, self.source),
            TrainSettings(
                epochs=int(cfg.epochs),
                device=self.device,
                amp_dtype=self.amp_dtype,
                nonfinite=str(cfg.nonfinite),
                eval_batch_size=eval_batch_size(cfg.eval.batch_size, self.device),
            ),
            suites=self.suites,
            callbacks=list(callbacks),
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU) or an explicit device that is usable here.

    Raises:
        UserError: not a device name, or a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"device={name} is not a device; use device=auto, cpu or cuda") from exc
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if not available.get(device.type, False):
        raise UserError(
            f"device={name} is not available on this machine; use device=auto (picks CUDA when "
            "a GPU is visible, else the CPU) or device=cpu"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and (device.index >= torch.cuda.device_count())
    ):
        raise UserError(
            f"device={name} does not exist ({torch.cuda.device_count()} GPUs visible); use "
            "device=cuda or device=cuda:0"
        )
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp=<setting>`` on ``device`` (None: full precision).

    Raises:
        UserError: bf16/fp16 asked for on a device without mixed precision here.
    """
    if setting == "off":
        return None
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            raise UserError(
                f"amp={setting} needs a CUDA device but the run is on {device.type}; use "
                "amp=auto (full precision off the GPU) or amp=off"
            )
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def eval_batch_size(setting: Any, device: torch.device) -> int:
    """``eval.batch_size``: a number, or ``auto``: 1024 on CUDA (large inference batches keep a
    GPU busy) and 64 on the CPU, where small batches stay in cache: PreAct ResNet-18 on 32x32
    images evaluates 248 images/s at batch 64 and 163 at batch 1024 on this machine's 2 cores
    (README "Speed")."""
    if setting == "auto":
        return 1024 if device.type == "cuda" else 64
    return int(setting)


def resolve_auto(setting: Any, device: torch.device, key: str) -> bool:
    """``true``/``false``, or ``auto``: true on CUDA, false elsewhere (the speed settings
    ``channels_last``; ``deterministic`` is the opposite, see :func:`deterministic_for`).

    Raises:
        UserError: neither a boolean nor ``auto``.
    """
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return device.type == "cuda"
    raise UserError(f"{key}={setting} is invalid; set {key}=auto, true or false")


def deterministic_for(setting: Any, device: torch.device) -> bool:
    """``deterministic=auto``: deterministic algorithms on the CPU (bit-identical reruns and
    exact resume, at no cost there) and fast kernels on a GPU (cudnn.benchmark, TF32)."""
    if setting == "auto":
        return device.type != "cuda"
    return resolve_auto(setting, device, "deterministic")


def deterministic_algorithms(mode: bool, warn_only: bool = False, compiled: bool = False) -> None:
    """Set torch's deterministic-algorithms flag as ``torch.use_deterministic_algorithms``
    does, without that call's import of the inductor compiler (about a second per process) to
    set the compiler's flag too when nothing here is compiled: with ``compiled`` or the
    compiler already imported, the public call is made."""
    if (
        compiled
        or "torch._inductor.config" in sys.modules
        or not hasattr(torch._C, "_set_deterministic_algorithms")
    ):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def set_determinism(deterministic: bool, compiled: bool = False) -> None:
    """Deterministic algorithms (bit-identical reruns on the CPU) or fast kernels
    (cudnn.benchmark's autotuned convolutions, TF32 matmuls on Ampere and later GPUs)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        deterministic_algorithms(True, warn_only=True, compiled=compiled)
        # Deterministic mode also fills every new tensor's memory (NaN/ints' max) so that a
        # kernel reading uninitialised memory would show; no kernel here does (the reruns
        # are bit-identical without it, tests/test_resume.py), and the filling cost 8 % of a
        # PreAct ResNet-18 step on the CPU (aten::fill_; README "Speed").
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        if torch.are_deterministic_algorithms_enabled():  # an earlier build in this process
            deterministic_algorithms(False, compiled=compiled)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def optimizer_impl_kwargs(impl: str, optimizer_target: str, device: torch.device) -> dict[str, Any]:
    """Keyword arguments choosing the optimizer's implementation (``optimizer_impl``).

    ``fused`` (one kernel for all parameters) and ``foreach`` (a few multi-tensor kernels) are
    passed only to optimizers whose constructor takes them; ``auto`` is fused on CUDA where
    the optimizer has a fused kernel, and torch's own default elsewhere (on the CPU torch then
    uses its per-parameter loop, which keeps the tests' numbers unchanged); ``default`` never
    passes anything.

    Raises:
        UserError: an unknown ``impl``, or ``fused``/``foreach`` for an optimizer without it.
    """
    if impl not in ("auto", "default", "fused", "foreach"):
        raise UserError(
            f"optimizer_impl={impl} is unknown; use optimizer_impl=auto, default, fused or foreach"
        )
    if impl == "default":
        return {}
    import inspect

    from hydra.utils import get_class

    from noisybench.safety import check_target

    check_target(optimizer_target, "optim.optimizer._target_")  # before get_class imports it
    try:
        params = inspect.signature(get_class(optimizer_target)).parameters
    except Exception:  # not importable here: instantiate() reports it with its own message
        return {}
    if impl == "auto":
        return {"fused": True} if device.type == "cuda" and "fused" in params else {}
    if impl not in params:
        raise UserError(
            f"optimizer_impl={impl}: {optimizer_target} has no {impl} implementation; use "
            "optimizer_impl=auto or default"
        )
    return {impl: True}


class ChannelsLast(ViewWrapper):
    """A view whose output batch is laid out channels-last (NHWC), the memory format GPU
    convolution kernels (cuDNN, with AMP) run fastest on; values are unchanged."""

    def post(self, out: torch.Tensor) -> torch.Tensor:
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


def noise_variant(node: DictConfig) -> Noise:
    """The ``noise`` group's variant: its ``_target_`` built with the node's own keys (all but
    :data:`noisybench.data.noise.SHARED_KEYS`) through :func:`instantiate` (allow-list
    checked). A config written before variants had a ``_target_`` names a registered one by
    ``variant``.

    Raises:
        UserError: the target builds no :class:`Noise`, or draws another variant than
            ``noise.variant`` (which the record, the report and the paper presets read).
    """
    own = {k: v for k, v in resolved(node).items() if k not in SHARED_KEYS}
    variant = str(node.variant)
    if own.get("_target_") is None:
        own.pop("_target_", None)
        return noise_by_name(variant, own)
    noise = instantiate(own, f"noise {node.get('name', variant)}")
    if not isinstance(noise, Noise):
        raise UserError(
            f"noise._target_={own['_target_']} built a {type(noise).__name__}, not a noise "
            "variant; point it at a subclass of noisybench.data.noise.Noise"
        )
    if noise.variant != variant:
        raise UserError(
            f"noise.variant={variant} but noise._target_={own['_target_']} draws "
            f"{noise.variant!r}; choose the noise config of that variant (noise=NAME) or set "
            f"noise.variant={noise.variant}"
        )
    return noise


def make_noise(cfg: DictConfig, data: ImageData) -> tuple[np.ndarray, NoiseRecord]:
    """The run's noisy training labels: read from ``noise.label_file`` or drawn fresh by the
    ``noise`` group's variant (:func:`noise_variant`)."""
    given = noise_data(
        data.train_labels.numpy(),
        data.num_classes,
        superclass=None if data.superclass is None else data.superclass.numpy(),
        features=None if _is_streamed(data) else data.train_images.numpy(),
        asym_map=cfg.dataset.get("asym_map"),
    )
    return noisy_labels(
        noise_variant(cfg.noise),
        given,
        rate=float(cfg.noise.rate),
        seed=int(cfg.noise.seed),
        label_file=cfg.noise.label_file,
    )


@dataclass(frozen=True)
class Runtime:
    """Where and how the run computes, resolved once from the config's ``auto`` settings:
    the device (``cuda:LOCAL_RANK`` with several processes), autocast dtype, channels-last,
    ``torch.compile``, SyncBatchNorm, the evaluation batch size and the process layout."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    compiled: bool
    sync_batchnorm: bool
    eval_batch_size: int
    world: int = 1
    rank: int = 0


def runtime(cfg: DictConfig, device: torch.device | None = None) -> Runtime:
    """Resolve the config's device and speed settings and apply the process-wide ones (thread
    count, determinism, the torch seed); the first part of :func:`build`.

    Raises:
        UserError: an unusable device, precision or SyncBatchNorm setting.
    """
    if device is None:
        own = dist.device_for(str(cfg.device))  # cuda:LOCAL_RANK with several processes
        device = own if own is not None else resolve_device(str(cfg.device))
    world, rank = dist.world_size(), dist.rank()
    sync_bn = bool((cfg.get("distributed") or {}).get("sync_batchnorm", False)) and world > 1
    if sync_bn and device.type == "cpu":
        raise UserError(
            "distributed.sync_batchnorm=true needs GPUs (SyncBatchNorm has no CPU kernel); "
            "set distributed.sync_batchnorm=false on the CPU"
        )
    amp = amp_dtype(str(cfg.amp), device)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    compiled = bool(cfg.get("compile", False))
    channels_last = resolve_auto(cfg.get("channels_last", False), device, "channels_last")
    set_determinism(deterministic_for(cfg.deterministic, device), compiled)
    torch.manual_seed(int(cfg.seed) % 2**63)
    return Runtime(
        device=device,
        amp_dtype=amp,
        channels_last=channels_last,
        compiled=compiled,
        sync_batchnorm=sync_bn,
        eval_batch_size=eval_batch_size(cfg.eval.batch_size, device),
        world=world,
        rank=rank,
    )


def read_data(cfg: DictConfig) -> Any:
    """The dataset of ``cfg.dataset.reader`` (``ImageData``, or ``FolderData`` when streamed),
    after refusing what a streamed dataset cannot do and a batch larger than the data."""
    if bool(cfg.dataset.get("streaming", False)):
        _check_streaming(cfg)
    data: Any = instantiate(cfg.dataset.reader, f"dataset {cfg.dataset.name}")
    n = data.train_labels.shape[0]
    if int(cfg.batch_size) > n:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {n} training images of "
            f"{cfg.dataset.name}; set batch_size to at most {n}"
        )
    return data


@dataclass
class Labels:
    """The run's labels: ``noisy`` for all N training samples (the noise record covers all
    of them) and, with a noisy validation split, the positions trained on (``train_idx``) and
    held out (``val_idx``, stratified by the noisy labels; :func:`_holdout`)."""

    noisy: np.ndarray
    record: NoiseRecord | None
    train_idx: np.ndarray | None = None
    val_idx: np.ndarray | None = None
    validation: dict[str, Any] | None = None

    def train_clean(self, data: Any) -> torch.Tensor:
        """The clean labels of the samples trained on."""
        return data.train_labels if self.train_idx is None else data.train_labels[self.train_idx]

    def train_noisy(self) -> np.ndarray:
        """The noisy labels of the samples trained on."""
        return self.noisy if self.train_idx is None else self.noisy[self.train_idx]

    def val_labels(self, device: torch.device) -> torch.Tensor | None:
        """The noisy labels of the held-out validation samples (None without a split)."""
        if self.val_idx is None:
            return None
        return torch.as_tensor(self.noisy[self.val_idx], dtype=torch.long, device=device)


def labels(cfg: DictConfig, data: Any, noisy_labels: np.ndarray | None = None) -> Labels:
    """The noisy labels (given, the dataset's own, or drawn by ``cfg.noise``) and the noisy
    validation split held out of them after the noise is drawn.

    Raises:
        UserError: noise asked for on a dataset that brings its own noisy labels.
    """
    if noisy_labels is None and getattr(data, "given_labels", None) is not None:
        # A real-noise dataset brings its own noisy labels (folder / arrays readers).
        if str(cfg.noise.variant) != "none" or cfg.noise.get("label_file") is not None:
            raise UserError(
                f"dataset {cfg.dataset.name} comes with its own noisy labels, so noise="
                f"{cfg.noise.name} would add noise to noise; use noise=none"
            )
        noisy_labels = data.given_labels.numpy()
    if noisy_labels is None:
        noisy, record = make_noise(cfg, data)
    else:
        noisy = np.asarray(noisy_labels, dtype=np.int64)
        record = make_noise_record(
            data.train_labels.numpy(),
            noisy,
            data.num_classes,
            variant="given",
            nominal_rate=0.0,
            seed=0,
        )
        record = _noise_on_known(record, data, noisy)
    train_idx, val_idx, validation = _holdout(cfg, noisy)
    return Labels(noisy, record, train_idx, val_idx, validation)


def _noise_on_known(record: NoiseRecord, data: Any, noisy: np.ndarray) -> NoiseRecord:
    """A real-noise dataset with partly known clean labels (Clothing1M: ~37k of the 1M noisy
    training images also carry a clean label; ``data.noise_on_known``, issue 24): the record's
    realised rate and transition matrix are those on the samples with both labels, not the
    given labels against themselves (0 and the identity). The labels' hash stays that of all
    N noisy labels."""
    from dataclasses import replace

    known = getattr(data, "noise_on_known", None)
    given = getattr(data, "given_labels", None)
    if not known or given is None or not np.array_equal(noisy, given.numpy()):
        return record  # labels other than the dataset's own: no clean labels to compare with
    return replace(
        record, realised_rate=float(known["realised_rate"]), transition=known["transition"]
    )


@dataclass
class Networks:
    """The model, the method (not yet set up) and the model factory the method may call for
    networks of its own (co-teaching's peer, DivideMix's second net)."""

    model: torch.nn.Module
    method: Method
    build_model: Callable[[], torch.nn.Module]


def networks(cfg: DictConfig, rt: Runtime, data: Any) -> Networks:
    """The ``model`` and ``method`` groups instantiated on ``rt.device``, with SyncBatchNorm,
    channels-last and ``torch.compile`` as ``rt`` says.

    Raises:
        UserError: a model or method that does not build, or a method that is no ``Method``.
    """
    k = data.num_classes
    streamed = _is_streamed(data)
    channels = 3 if streamed else int(data.train_images.shape[1])  # folders decode to RGB
    model_kwargs = without_name(cfg.model)

    def architecture() -> torch.nn.Module:
        return instantiate(
            model_kwargs, f"model {cfg.model.name}", num_classes=k, in_channels=channels
        ).to(rt.device)

    def finish(model: torch.nn.Module) -> torch.nn.Module:
        # The method's network around the architecture (its own heads, Method.network), on
        # the device, before SyncBatchNorm, channels-last and compiling see the whole of it.
        model = method.network(model).to(rt.device)
        if rt.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if rt.compiled:
            # In place: the module's forward is compiled on first call, its state_dict keys
            # stay those of the plain module (checkpoints load either way).
            model.compile()
        return model

    model = architecture()  # before the method is made: the RNG stream of every earlier run
    method = instantiate(without_name(cfg.method), f"method {cfg.method.name}")
    if not isinstance(method, Method):
        raise UserError(
            f"method {cfg.method.name}: {cfg.method._target_} is not a noisybench.method.Method; "
            "point _target_ at a subclass of it"
        )
    return Networks(finish(model), method, lambda: finish(architecture()))


def _advise(cfg: DictConfig, rt: Runtime, data: Any) -> None:
    """One warning line for each way the model or crop does not fit the images (rank 0)."""
    if rt.rank != 0:
        return
    streamed = _is_streamed(data)
    seen = (cfg.dataset.reader.image_size,) * 2 if streamed else data.train_images.shape[-2:]
    for line in fit_advice(cfg.model, seen, cfg.dataset.augment, streaming=streamed):
        log.warning(line)


def eval_view(
    cfg: DictConfig, rt: Runtime, data: Any, model: torch.nn.Module
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plain evaluation view of in-memory uint8 images, normalised with the model's own
    input statistics (ImageNet's for pretrained weights, :func:`input_stats`), so that every
    evaluation of this model (training, :func:`rebuild`) normalises as training did."""
    mean, std = input_stats(model, data.mean, data.std)
    size = tuple(data.train_images.shape[-2:])
    plain = build_views(("plain",), cfg.dataset.augment, mean, std, size)["plain"]
    if isinstance(plain, torch.nn.Module):
        plain = plain.to(rt.device)
    return ChannelsLast(plain) if rt.channels_last else plain


def source(cfg: DictConfig, rt: Runtime, data: Any, lab: Labels, nets: Networks) -> DataSource:
    """The run's data source (:mod:`noisybench.data.source`): in memory
    (:class:`InMemorySource`) or streamed (:class:`StreamedSource`, when the reader returned
    a ``FolderData``), normalised with the model's own input statistics (ImageNet's for
    pretrained weights)."""
    from noisybench.data.realnoise import evaluation_splits

    given = torch.as_tensor(lab.train_noisy(), dtype=torch.long, device=rt.device)
    splits = evaluation_splits(data)  # a real-noise dataset's clean val and extra test sets
    eval_labels = EvalLabels(
        test=data.test_labels.to(rt.device),
        train_clean=lab.train_clean(data).to(rt.device),
        train_given=given,
        val=lab.val_labels(rt.device),
        clean_known=bool(getattr(data, "clean_known", True)),
        train_subset=_diagnostic_subset(cfg, int(given.shape[0]), rt.device),
        clean_val=splits["clean_val"][1].to(rt.device) if "clean_val" in splits else None,
        extra_tests={k: y.to(rt.device) for k, (_, y) in splits.items() if k != "clean_val"},
        topk=tuple(int(k) for k in (getattr(data, "protocol", None) or {}).get("topk", ())),
    )
    mean, std = input_stats(nets.model, data.mean, data.std)
    spec = dict(
        batch_size=int(cfg.batch_size),
        seed=int(cfg.seed),
        device=rt.device,
        carry_previous=float(type(nets.method).carry_previous),
        drop_last=bool(nets.method.drop_last),
        rank=rt.rank,
        world_size=rt.world,
        channels_last=rt.channels_last,
    )
    holdout = (lab.train_idx, lab.val_idx)
    if _is_streamed(data):
        streamed = dataclasses.replace(data, mean=mean, std=std)
        reading = cfg.dataset.get("loader") or {}
        named = LoaderSpec(views=tuple(nets.method.views), **spec)
        files = {k: f for k, (f, _) in splits.items()}
        return StreamedSource(streamed, eval_labels, named, reading, holdout, files)
    views = build_views(
        nets.method.views, cfg.dataset.augment, mean, std, tuple(data.train_images.shape[-2:])
    )
    if rt.channels_last:
        views = {key: ChannelsLast(view) for key, view in views.items()}
    view = eval_view(cfg, rt, data, nets.model)
    return InMemorySource(data, eval_labels, LoaderSpec(views=views, **spec), view, holdout)


def setup_method(
    cfg: DictConfig, nets: Networks, given: torch.Tensor, num_classes: int, steps: int
) -> None:
    """``method.setup`` with the run's sizes (the method's per-sample state is sized here),
    then the method's modules moved to the device."""
    nets.method.setup(
        MethodContext(
            num_samples=int(given.shape[0]),
            num_classes=num_classes,
            noisy_labels=given,
            epochs=int(cfg.epochs),
            steps_per_epoch=steps,
            device=given.device,
            build_model=nets.build_model,
        )
    )
    nets.method.to(given.device)


def optimisation(
    cfg: DictConfig, rt: Runtime, nets: Networks, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer over the model's and the method's extra modules' parameters, and its
    per-step schedule (with the optional Adam beta1 ramp-down)."""
    params = [p for m in (nets.model, *nets.method.extra_modules()) for p in m.parameters()]
    impl = optimizer_impl_kwargs(
        str(cfg.get("optimizer_impl", "default")), str(cfg.optim.optimizer._target_), rt.device
    )
    optimizer = instantiate(
        cfg.optim.optimizer, f"optimizer of optim {cfg.optim.name}", params=params, **impl
    )
    scheduler = instantiate(
        cfg.optim.scheduler,
        f"scheduler of optim {cfg.optim.name}",
        optimizer=optimizer,
        total_steps=int(cfg.epochs) * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
    )
    scheduler = with_beta1_rampdown(
        scheduler,
        epochs=int(cfg.epochs),
        steps_per_epoch=steps_per_epoch,
        rampdown_epochs=int(cfg.optim.get("beta1_rampdown_epochs", 0)),
        final_beta1=float(cfg.optim.get("beta1_final", 0.0)),
    )
    return optimizer, scheduler


def _reseed_rank(cfg: DictConfig, rt: Runtime) -> None:
    """Processes other than rank 0 reseed their global generators (rank 0 keeps a
    single-process run's stream) so that their augmentations differ."""
    if rt.rank > 0:
        seed = dist.rank_seed(int(cfg.seed), rt.rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


def build(
    cfg: DictConfig,
    device: torch.device | None = None,
    noisy_labels: np.ndarray | None = None,
) -> Experiment:
    """Build every object of the experiment ``cfg`` describes (reads data files, writes none):
    the short sequence runtime, data, labels, networks, source, method setup, optimisation,
    suites.

    Sets the process's torch seed, thread count and determinism as the config says.
    ``noisy_labels`` (tests, benchmarks) replaces the config's noise with given labels.

    In a multi-process run (an initialised process group, :mod:`noisybench.distributed`) the
    device is ``cuda:LOCAL_RANK`` (or the CPU), the loader yields this process's share of
    every global batch, the model is optionally converted to SyncBatchNorm
    (``distributed.sync_batchnorm``; the trainer wraps it in ``DistributedDataParallel``,
    :mod:`noisybench.processes`), and, once everything is built identically on every process
    (same seed), processes other than rank 0 reseed their global generators with
    :func:`noisybench.distributed.rank_seed` so that their augmentations differ.

    Raises:
        UserError: bad input (missing or corrupt data, impossible sizes, a config that does not
            build), with one actionable line.
    """
    rt = runtime(cfg, device)
    data = read_data(cfg)
    lab = labels(cfg, data, noisy_labels)
    nets = networks(cfg, rt, data)
    _advise(cfg, rt, data)
    src = source(cfg, rt, data, lab, nets)
    setup_method(cfg, nets, src.labels.train_given, data.num_classes, len(src))
    optimizer, scheduler = optimisation(cfg, rt, nets, len(src))
    _reseed_rank(cfg, rt)
    return Experiment(
        cfg=cfg,
        device=rt.device,
        data=data,
        noisy_labels=lab.noisy,
        noise=lab.record,
        model=nets.model,
        method=nets.method,
        source=src,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=rt.amp_dtype,
        build_model=nets.build_model,
        suites=suites(cfg, data, src, nets.method, rt.device),
        validation=lab.validation,
    )


@dataclass
class Rebuilt:
    """A finished run's objects, rebuilt by :func:`rebuild` (states not loaded yet)."""

    cfg: DictConfig
    runtime: Runtime
    data: Any
    labels: Labels
    networks: Networks
    source: DataSource  # in memory: the images, labels and evaluation view of training


def rebuild(
    config: dict[str, Any],
    noisy_labels: np.ndarray | Path,
    device: torch.device,
    data_dir: str | None = None,
) -> Rebuilt:
    """The objects of a finished run (its resolved ``config`` and saved ``noisy_labels``) made
    by the same parts as :func:`build`: the runtime, the data, the labels and the validation
    split, the networks with the method set up, and the data source (whose evaluation view
    has the model's own input statistics). ``data_dir``: where the dataset moved to (replaces
    the reader's ``root`` when that was the run's ``data_dir``). ``noisybench.evaluate``
    evaluates what this returns.

    Raises:
        UserError: a streamed dataset (the suites need images in memory), or a config that
            no longer builds.
    """
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(config)
    if cfg.dataset.get("streaming"):
        raise UserError(
            f"the run trained on the streamed dataset {cfg.dataset.get('name')}; the "
            "evaluation suites need its images in memory, so they run on in-memory datasets only"
        )
    if data_dir and cfg.dataset.reader.get("root") == cfg.get("data_dir"):
        cfg.dataset.reader.root = data_dir  # the dataset moved with data_dir=
    cfg.compile = False  # a few evaluation passes: compiling would cost more than it saves
    rt = runtime(cfg, device)
    data = instantiate(cfg.dataset.reader, f"dataset {cfg.dataset.name}")
    if isinstance(noisy_labels, Path):
        noisy_labels = _saved_labels(noisy_labels, data)
    lab = labels(cfg, data, noisy_labels)
    nets = networks(cfg, rt, data)
    src = source(cfg, rt, data, lab, nets)
    setup_method(cfg, nets, src.labels.train_given, data.num_classes, len(src))
    return Rebuilt(cfg, rt, data, lab, nets, src)


def _saved_labels(path: Path, data: Any) -> np.ndarray:
    """A run directory's ``noisy_labels.npy``, refused in one line when it cannot be this
    run's (missing, unreadable, not ``N`` integers in ``0..K-1``): the directory may be
    someone else's (:func:`noisybench.rundir.check_label_array`)."""
    from noisybench.rundir import check_label_array

    if not path.is_file():
        raise UserError(f"{path} is missing; the run directory is incomplete, rerun it")
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{path} is not a readable .npy file ({type(err).__name__}); the run "
            "directory is damaged, rerun the experiment (restart=true)"
        ) from None
    return check_label_array(raw, int(data.train_labels.shape[0]), data.num_classes, path)


def _is_streamed(data: Any) -> bool:
    return bool(getattr(data, "streaming", False))


def _check_streaming(cfg: DictConfig) -> None:
    """Refuse, in one line, what a streamed dataset cannot do (before any file is read)."""
    if str(cfg.noise.variant) == "idn":
        raise UserError(
            f"noise variant idn draws instance-dependent noise from the images in memory, but "
            f"dataset {cfg.dataset.name} is streamed; use another noise variant or dataset=arrays"
        )
    suites = [name for name, node in (cfg.eval.get("suites") or {}).items() if node.get("every")]
    if suites:
        raise UserError(
            f"evaluation suites {sorted(suites)} need the test images in memory, but dataset "
            f"{cfg.dataset.name} is streamed; drop eval=... (or set their every=0)"
        )
    if int((cfg.eval.get("snapshots") or {}).get("size") or 0) > 0:
        raise UserError(
            f"prediction snapshots need the training images in memory, but dataset "
            f"{cfg.dataset.name} is streamed; set eval.snapshots.size=0"
        )


def _diagnostic_subset(cfg: DictConfig, n: int, device: torch.device) -> torch.Tensor | None:
    """The fixed training indices of the memorisation diagnostics
    (``eval.train_diagnostics_subset``; None: the whole training set). The same ``size``
    indices (sorted) for every run with a training set of ``n`` samples, whatever its seed,
    method or noise: drawn from a generator seeded with 0, so that the curves of different
    runs are measured on the same samples."""
    size = cfg.eval.get("train_diagnostics_subset")
    if size is None or int(size) >= n:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0)
    idx = torch.randperm(n, generator=gen)[: int(size)]
    return idx.sort().values.to(device)


def _holdout(
    cfg: DictConfig, noisy: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any] | None]:
    """``validation.fraction`` of the noisy training set held out (stratified by the noisy
    labels, seeded by ``validation.seed``), or nothing."""
    from noisybench.data.split import holdout_split, split_record

    node = cfg.get("validation") or {}
    fraction = float(node.get("fraction") or 0.0)
    if fraction <= 0.0:
        return None, None, None
    seed = int(node.get("seed") or 0)
    train_idx, val_idx = holdout_split(len(noisy), fraction, seed, labels=noisy)
    return train_idx, val_idx, split_record(fraction, seed, train_idx, val_idx)


def suite_context(
    cfg: DictConfig,
    data: Any,
    src: DataSource,
    device: torch.device,
    data_dir: str | None = None,
    method: Method | None = None,
) -> Any:
    """The suites' one :class:`noisybench.evaluation.EvalContext`, from the run's data source
    (its labels, and its images when in memory) and ``method`` (label recovery), during
    training and on a rebuilt run alike. ``data_dir``: where the suites' files moved to
    (default: the config's)."""
    from noisybench.evaluation import EvalContext

    return EvalContext(
        num_classes=data.num_classes,
        test_images=src.images("test"),
        test_labels=src.labels.test,
        data_dir=Path(str(data_dir or cfg.get("data_dir") or "./data")),
        device=device,
        dataset=str(cfg.dataset.get("name", "")),
        seed=int(cfg.get("seed", 0)),
        train_images=src.images("train"),
        train_labels=src.labels.train_given,
        train_clean=src.labels.train_clean,
        labels=src.labels,
        method=method,
    )


def suites(
    cfg: DictConfig, data: Any, src: DataSource, method: Method, device: torch.device
) -> Any:
    """The run's evaluation during training (a :class:`noisybench.evaluation.SuiteRunner`):
    the built-in suites (test metrics, validation accuracy, memorisation as ``eval.
    train_diagnostics*`` say, label recovery), then the suites chosen in the ``eval`` group
    (``eval=[calibration,ood]``) that run during training (their ``every`` > 0).

    Raises:
        UserError: ``eval=[...]`` names a built-in suite (every run has it already).
    """
    from noisybench.evaluation import BUILTIN_SUITES, SuiteRunner, build_suites, builtin_suites

    nodes = dict(cfg.eval.get("suites") or {})
    twice = sorted(set(nodes) & set(BUILTIN_SUITES))
    if twice:
        raise UserError(
            f"evaluation suites {twice} run in every training run already; drop them from "
            "eval=[...] (noisybench evaluate RUN eval=[...] computes them on a finished run)"
        )
    builtin = builtin_suites(
        int(cfg.epochs),
        bool(cfg.eval.train_diagnostics),
        int(cfg.eval.get("train_diagnostics_every") or 1),
    )
    chosen = [s for s in build_suites(nodes) if s.every > 0]
    return SuiteRunner(builtin + chosen, suite_context(cfg, data, src, device, method=method))
