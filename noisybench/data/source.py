"""Where a run's data comes from: one protocol, an in-memory and a streamed implementation.

The engine (:class:`noisybench.engine.Trainer`) reads its data only through a
:class:`DataSource`: the steps of an epoch (``len``), an epoch's training batches from a
start step (``epoch``), the normalised evaluation batches of a split or of some of its samples
(``eval_batches``), the uint8 images when they are in memory (``images``, for the evaluation
suites) and the labels it evaluates against (:class:`EvalLabels`). Whether the images live on
the device (:class:`InMemorySource`, over :class:`noisybench.data.loader.DeviceLoader`) or are
decoded from files in DataLoader workers (:class:`StreamedSource`, over
:class:`noisybench.data.folder.FolderLoader`) is decided once, when the source is made
(``noisybench.build.source``); the engine never branches on it. A new reader plugs in here:
it returns an ``ImageData`` (in memory) or a ``FolderData`` (streamed), and the matching source
serves it.

Both sources keep the loaders' exact-resume property: an epoch's batches are a function of
``(seed, epoch)`` only (and, for a real-noise protocol's per-epoch class-balanced subset,
:func:`noisybench.data.realnoise.balanced_subset`, of ``(seed, epoch)`` too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from noisybench.data.folder import FolderLoader
from noisybench.data.loader import DeviceLoader, folds_last_batch
from noisybench.errors import UserError
from noisybench.method import Batch, EpochPlan

__all__ = ["DataSource", "EvalLabels", "InMemorySource", "LoaderSpec", "StreamedSource"]

#: Which samples of a split to evaluate: a contiguous range of positions, or the positions
#: listed in an int64 tensor (in that order).
Samples = range | Tensor


@dataclass
class EvalLabels:
    """The labels a run is evaluated against (int64, on the training device).

    Attributes:
        test: the test labels.
        train_clean: the clean labels of the samples trained on (only the engine sees them).
        train_given: their given (noisy) labels, the ones the method trains on.
        val: the noisy labels of the held-out validation samples (None: no split).
        clean_known: False for real noise without clean labels (no memorisation or
            label-recovery diagnostics).
        train_subset: the fixed training positions of the memorisation diagnostics
            (``eval.train_diagnostics_subset``; None: all).
        clean_val: the labels of the dataset's own CLEAN validation split (Clothing1M's
            ``clean_val_key_list``; split ``"clean_val"``, recorded as ``val/clean_acc``, the
            ``clean_val`` selection rule's number); None: the dataset has none.
        extra_tests: further test sets by the prefix their metrics are recorded under
            (mini-WebVision's ILSVRC12 validation images: ``{"test_imagenet": labels}``,
            recorded as ``test_imagenet/acc`` ...); each is also a split name.
        topk: the top-k accuracies recorded beside top-1 for the test sets (``test/top5``
            for mini-WebVision, whose tables report top-1 and top-5).
    """

    test: Tensor
    train_clean: Tensor
    train_given: Tensor
    val: Tensor | None = None
    clean_known: bool = True
    train_subset: Tensor | None = None
    clean_val: Tensor | None = None
    extra_tests: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    topk: tuple[int, ...] = ()

    def size(self, split: str) -> int:
        """The number of samples of ``split`` (``"test"``, ``"train"``, ``"val"``,
        ``"clean_val"`` or an extra test set's name)."""
        fixed = {
            "test": self.test,
            "train": self.train_given,
            "val": self.val,
            "clean_val": self.clean_val,
        }
        labels = fixed[split] if split in fixed else self.extra_tests.get(split)
        return 0 if labels is None else int(labels.shape[0])


@dataclass(frozen=True)
class LoaderSpec:
    """How the training batches are drawn, whatever the source: the GLOBAL ``batch_size``,
    the ``seed`` of the epoch orders and augmentations, the method's ``views`` (in memory:
    ``{key: view}`` of :func:`noisybench.data.views.build_views`; streamed: view names),
    DLB's ``carry_previous``, ``drop_last``, this process's ``rank`` of ``world_size``, the
    training ``device`` and whether batches are laid out channels-last."""

    batch_size: int
    seed: int
    views: Any
    device: torch.device
    carry_previous: float = 0.0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False


@runtime_checkable
class DataSource(Protocol):
    """What the engine reads its data through (see the module docstring).

    Attributes:
        labels: the evaluation labels (:class:`EvalLabels`).
        view: the plain evaluation view mapping in-memory uint8 images to normalised float
            batches (the suites' ``predict`` applies it); None when the images are streamed.
        seed: the seed of the epoch orders (a method's epoch plan draws from
            :func:`noisybench.data.loader.plan_seed` of it).
    """

    labels: EvalLabels
    view: Callable[[Tensor], Tensor] | None
    seed: int

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        ...

    def epoch(
        self, epoch: int, start_step: int = 0, plan: EpochPlan | None = None
    ) -> Iterator[Batch]:
        """This process's training batches of ``epoch`` (0-based) from ``start_step`` on: an
        ordinary pass of ``len(self)`` steps, or the steps of the method's ``plan``."""
        ...

    def eval_batches(self, split: str, samples: Samples, batch_size: int) -> Iterator[Tensor]:
        """Normalised evaluation-view float batches (on the training device) of the
        ``samples`` of ``split`` (``"test"``, ``"train"`` or ``"val"``), in that order."""
        ...

    def images(self, split: str) -> Tensor | None:
        """The device-resident uint8 images of ``split``; None when streamed."""
        ...


class InMemorySource:
    """Images held on the device as uint8 tensors: training batches from a
    :class:`DeviceLoader`, evaluation batches through the plain ``view``.

    Args:
        data: an ``ImageData``.
        labels: the evaluation labels (``train_given`` on the training device).
        spec: the training batches' settings (``spec.views``: ``{key: view}``).
        view: the plain evaluation view (the model's own input statistics).
        holdout: the training positions trained on and held out for validation (None, None:
            no validation split).
    """

    def __init__(
        self,
        data: Any,
        labels: EvalLabels,
        spec: LoaderSpec,
        view: Callable[[Tensor], Tensor],
        holdout: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    ) -> None:
        train_idx, val_idx = holdout
        device = spec.device
        train = data.train_images if train_idx is None else data.train_images[train_idx]
        train = train.to(device)
        self.loader = DeviceLoader(
            train,
            labels.train_given,
            spec.batch_size,
            spec.views,
            seed=spec.seed,
            carry_previous=spec.carry_previous,
            drop_last=spec.drop_last,
            rank=spec.rank,
            world_size=spec.world_size,
        )
        self.labels = labels
        self.seed = spec.seed
        self.view: Callable[[Tensor], Tensor] | None = view
        self._images = {
            "train": train,
            "test": data.test_images.to(device),
            "val": None if val_idx is None else data.train_images[val_idx].to(device),
        }

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(
        self, epoch: int, start_step: int = 0, plan: EpochPlan | None = None
    ) -> Iterator[Batch]:
        return self.loader.epoch(epoch, start_step, plan)

    def images(self, split: str) -> Tensor | None:
        return self._images[split]

    def eval_batches(self, split: str, samples: Samples, batch_size: int) -> Iterator[Tensor]:
        images = self._images[split]
        assert images is not None and self.view is not None
        for start in range(0, len(samples), batch_size):
            part = samples[start : start + batch_size]
            if isinstance(part, range):  # a slice: no copy
                chunk = images[part.start : part.stop]
            else:
                chunk = images.index_select(0, part.to(images.device))
            yield self.view(chunk)


class StreamedSource:
    """Images decoded from files in DataLoader workers (:mod:`noisybench.data.folder`):
    training batches from a :class:`FolderLoader`, evaluation batches resized and centre-cropped
    by :func:`noisybench.data.folder.eval_batches`.

    A real-noise reader's clean validation split (``data.val_files``) and extra test sets
    (``data.extra_tests``) are evaluated as the splits ``"clean_val"`` and the names of
    ``labels.extra_tests`` (``extra_files``: their files by that name).

    A real-noise reader's per-epoch class-balanced subset (``data.protocol["subset_per_epoch"]``,
    DivideMix's Clothing1M protocol, :func:`noisybench.data.realnoise.balanced_subset` of the
    given labels) is what each epoch trains on; it depends on ``(seed, epoch)`` only.

    Args:
        data: a ``FolderData`` (normalisation statistics already those of the model).
        labels: the evaluation labels.
        spec: the training batches' settings (``spec.views``: view names).
        reading: the dataset's ``loader`` options (``workers``, ``decoder``,
            ``decode_device``, ``prefetch_factor``).
        holdout: as for :class:`InMemorySource`.
        extra_files: the files of ``"clean_val"`` and of each extra test set, by split name
            (in the order of their labels in ``labels``).
    """

    view = None

    def __init__(
        self,
        data: Any,
        labels: EvalLabels,
        spec: LoaderSpec,
        reading: Mapping[str, Any],
        holdout: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
        extra_files: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        train_idx, val_idx = holdout
        files = list(data.train_files)
        train = data
        if train_idx is not None:
            train = dataclasses.replace(
                data,
                train_files=[files[i] for i in train_idx],
                train_labels=data.train_labels[torch.as_tensor(train_idx)],
            )
        self._held_out = None
        if val_idx is not None and labels.val is not None:
            self._held_out = dataclasses.replace(
                train, test_files=[files[i] for i in val_idx], test_labels=labels.val.cpu()
            )
        self._train = train
        self._splits: dict[str, Any] = {}
        for name, files_of in (extra_files or {}).items():
            held = labels.clean_val if name == "clean_val" else labels.extra_tests[name]
            self._splits[name] = dataclasses.replace(
                train, test_files=list(files_of), test_labels=held.cpu()
            )
        self.labels = labels
        self.seed = spec.seed
        self.workers = int(reading.get("workers", 4))
        self.decoder = str(reading.get("decoder", "torchvision"))
        self.decode_device = reading.get("decode_device")
        self.device, self.channels_last = spec.device, spec.channels_last
        total = (getattr(data, "protocol", None) or {}).get("subset_per_epoch")
        self.loader = (FolderLoader if total is None else _BalancedSubsetLoader)(
            train,
            labels.train_given,
            spec.batch_size,
            tuple(spec.views),
            seed=spec.seed,
            device=spec.device,
            workers=self.workers,
            carry_previous=spec.carry_previous,
            drop_last=spec.drop_last,
            rank=spec.rank,
            world_size=spec.world_size,
            decoder=self.decoder,
            decode_device=self.decode_device,
            prefetch_factor=int(reading.get("prefetch_factor", 2)),
        )
        if total is not None:
            self.loader.restrict(int(total))

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(
        self, epoch: int, start_step: int = 0, plan: EpochPlan | None = None
    ) -> Iterator[Batch]:
        return self.loader.epoch(epoch, start_step, plan)

    def images(self, split: str) -> Tensor | None:
        return None

    def eval_batches(self, split: str, samples: Samples, batch_size: int) -> Iterator[Tensor]:
        from noisybench.data.folder import eval_batches

        order: Sequence[int] = (
            list(samples) if isinstance(samples, range) else samples.cpu().tolist()
        )
        data = self._splits.get(split, self._held_out if split == "val" else self._train)
        batches = eval_batches(
            data,
            "train" if split == "train" else "test",
            batch_size,
            device=self.device,
            workers=self.workers,
            decoder=self.decoder,
            decode_device=self.decode_device,
            subset=order,
        )
        for x, _, _ in batches:
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class _BalancedSubsetLoader(FolderLoader):
    """A :class:`FolderLoader` whose epoch ``e`` trains on the class-balanced subset
    :func:`noisybench.data.realnoise.balanced_subset` ``(given labels, total, seed, e)``
    (DivideMix's Clothing1M protocol: 64,000 images per epoch), in the loader's own
    ``(seed, epoch)`` order. Batches keep the samples' indices in the whole training set (the
    methods' per-sample state is sized for all of them). The subset's size depends on the
    class counts only, so every epoch has the same number of steps; the subset and its order
    are functions of ``(seed, epoch)``, so a resumed run draws the same batches."""

    def restrict(self, total: int) -> None:
        """Train each epoch on ``total`` class-balanced samples (all, when fewer)."""
        self._given = self.labels.cpu()
        self._total = int(total)
        self._size = int(self.subset(0).shape[0])
        if self._size < self.batch_size:
            raise UserError(
                f"the per-epoch subset has {self._size} samples, fewer than batch_size="
                f"{self.batch_size}; set batch_size to at most {self._size}"
            )
        self.fold_last = folds_last_batch(
            self._size, self.batch_size, self.world_size, self.drop_last
        )

    def subset(self, epoch: int) -> Tensor:
        """The sorted training indices of ``epoch``'s subset."""
        from noisybench.data.realnoise import balanced_subset

        return balanced_subset(self._given, self._total, self.seed, epoch)

    @property
    def num_samples(self) -> int:
        return getattr(self, "_size", len(self.data.train_files))

    def permutation(self, epoch: int) -> Tensor:
        """The epoch's subset in the loader's ``(seed, epoch)`` order."""
        return self.subset(epoch)[super().permutation(epoch)]
