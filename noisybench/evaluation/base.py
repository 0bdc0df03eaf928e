"""The evaluation-suite interface shared by training-time and post-hoc evaluation.

A suite is one class (a subclass of :class:`EvalSuite`) and one YAML file under
``conf/eval/<name>.yaml``. It never reads or writes run directories: it receives a
``predict`` callable and an :class:`EvalContext`, and returns numbers.

How the engine calls a suite (the contract):

* ``predict(images)`` takes uint8 images ``(N, C, H, W)`` (on any device) and returns float32
  logits ``(N, K)`` on ``ctx.device``. It applies the evaluation view (normalisation, and
  resizing where configured), puts the model and the method in eval mode, calls
  ``method.predict(model, x)`` under ``torch.no_grad()`` in batches of ``eval.batch_size``,
  and leaves the modules in the mode it found them in. It is a :class:`Predictor`, the one
  prediction path of training and of finished runs alike; ``predict.split(name)`` predicts a
  split of the run's data source (streamed or in memory, split over the processes).
* During training: after the epoch's own evaluation, for every suite with ``every > 0`` and
  ``(epoch + 1) % every == 0`` (epochs counted from 1), call
  ``suite.evaluate(predict, ctx)`` and log the ``float`` entries of the returned mapping as
  ``eval/<key>`` (keys already start with the suite's name, e.g. ``calibration/ece``);
  ``list`` entries (reliability bins, curves) are for evaluation.json and figures only.
* Built-in suites (:mod:`noisybench.evaluation.builtin`: ``test``, ``val``, ``memorisation``,
  ``recovery``; their ``stage`` is ``held_out`` or ``diagnostics``) run in every training
  run, every epoch they are due, before the method's ``on_epoch_end`` (the held-out ones
  before the training numbers too), and their keys join the record as they are
  (``test/acc``, ``memorisation/fit_given``, ...), not under ``eval/``.
* After training, or on a finished run (``python -m noisybench.evaluate``): every selected
  suite, whatever its ``every``.
* ``ctx`` is built once per run (see :class:`EvalContext`); suites cache what they read from
  disk (corrupted test sets, OOD images) on the suite object, so calling ``evaluate`` every k
  epochs reads the files once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from noisybench.errors import UserError

if TYPE_CHECKING:
    from noisybench.data.source import EvalLabels

__all__ = ["EvalContext", "EvalSuite", "Metrics", "Predict", "Predictor", "make_predict"]

Predict = Callable[[Tensor], Tensor]
Metrics = dict[str, float | list[float]]


@dataclass
class EvalContext:
    """What a suite may know about the run besides ``predict``.

    Attributes:
        num_classes: K.
        test_images: uint8 ``(M, C, H, W)``, the in-distribution test set (None: streamed).
        test_labels: int64 ``(M,)``.
        data_dir: the run's ``data_dir`` (where suites look for their files).
        device: where ``predict`` returns its logits.
        dataset: the dataset's name as in ``conf/dataset`` (``cifar10``, ``digits``, ...).
        seed: a seed for the suites' own random choices (held-out halves, corruption noise).
        train_images: uint8 ``(N, C, H, W)`` training images, or None (dark knowledge only).
        train_labels: int64 ``(N,)`` the labels the run trained on (the noisy ones), or None.
        train_clean: int64 ``(N,)`` the clean training labels, or None.
        labels: the run's evaluation labels (:class:`noisybench.data.source.EvalLabels`:
            test, validation, given and clean training labels, the diagnostic subset), or
            None; the built-in suites read them.
        method: the run's method (its soft targets: label recovery), or None.
    """

    num_classes: int
    test_images: Tensor | None
    test_labels: Tensor
    data_dir: Path
    device: torch.device
    dataset: str = ""
    seed: int = 0
    train_images: Tensor | None = None
    train_labels: Tensor | None = None
    train_clean: Tensor | None = None
    labels: EvalLabels | None = None
    method: Any | None = None


class EvalSuite(abc.ABC):
    """One evaluation suite.

    Attributes:
        name: the key prefix of its metrics and the name of its YAML file.
        every: run it every ``every`` epochs during training; 0 runs it only on finished
            runs (and at the end of training).
        stage: where its numbers go in an epoch's record: ``eval`` (the configured suites:
            under ``eval/``, last), or, for the suites every training run has (keys as they
            are), ``held_out`` (the held-out splits' numbers, first) or ``diagnostics``
            (after the training numbers).
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "eval"

    def __init__(self, every: int = 0) -> None:
        if int(every) < 0:
            raise UserError(f"eval suite {self.name}: every={every} is negative; use 0 or more")
        self.every = int(every)

    def due(self, epoch: int) -> bool:
        """Whether the suite runs after (0-based) ``epoch`` during training."""
        return self.every > 0 and (epoch + 1) % self.every == 0

    @abc.abstractmethod
    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        """Return ``{"<name>/<metric>": value}``; values are floats or lists of floats."""


@dataclass
class Predictor:
    """The one prediction path of a run, during training and on a finished run: the model's
    logits through ``method.predict`` (or ``model`` itself when ``method`` is None) in eval
    mode, in batches of ``batch_size``, without gradients, inside ``autocast()`` (the run's
    mixed precision). The modules' train/eval modes are restored afterwards.

    * ``predictor(images)``: uint8 images (any device) through ``view`` (the suites'
      ``predict``; in-memory data only).
    * ``predictor.split(split, reduce, subset)``: the samples of a split of ``source``
      (:class:`noisybench.data.source.DataSource`), streamed or in memory; with several
      ``processes`` each evaluates a contiguous block and the blocks are gathered, so every
      process gets the whole result (the built-in suites and the engine use it).
    * ``predictor.outputs(split, forward, reduce, ...)``: the same pass with any ``forward``
      (a method's ``on_epoch_start`` evaluates its own modules on the training set).
    """

    model: nn.Module
    method: Any | None
    device: torch.device
    batch_size: int = 1024
    view: Callable[[Tensor], Tensor] | None = None
    source: Any | None = None  # a DataSource: split predictions
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    processes: Any | None = None  # noisybench.processes.Processes; None: this process's

    def _forward(self, x: Tensor) -> Tensor:
        return self.method.predict(self.model, x) if self.method is not None else self.model(x)

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        modules = [m for m in (self.model, self.method) if isinstance(m, nn.Module)]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    def _run(
        self,
        batches: Iterable[Tensor],
        forward: Callable[[Tensor], Tensor],
        reduce: Callable[[Tensor], Tensor],
    ) -> list[Tensor]:
        """The batch loop every prediction goes through."""
        parts = []
        for x in batches:
            with self.autocast():
                parts.append(reduce(forward(x)))
        return parts

    def __call__(self, images: Tensor) -> Tensor:
        """Float32 logits ``(N, K)`` on ``device`` of uint8 ``images`` ``(N, C, H, W)``."""
        view = self.view
        if view is None:
            raise UserError(
                "this dataset is streamed, so evaluation suites that need its images in memory "
                "cannot run; use an in-memory dataset (dataset=arrays) for them"
            )
        n, size = images.shape[0], self.batch_size
        batches = (
            view(images[s : s + size].to(self.device, non_blocking=True)) for s in range(0, n, size)
        )
        with torch.no_grad(), self._eval_mode():
            parts = self._run(batches, self._forward, _as_float)
        return torch.cat(parts) if parts else torch.zeros(0, 0, device=self.device)

    def split(
        self,
        split: str,
        reduce: Callable[[Tensor], Tensor] | None = None,
        subset: Tensor | None = None,
    ) -> Tensor:
        """``reduce`` (default: float32) of the logits over ``split`` (``"test"``, ``"train"``,
        ``"val"``; all samples, or the indices ``subset`` in that order): e.g. ``argmax`` keeps
        the classes only (diagnostics, no N x K tensor)."""
        with self._eval_mode():
            return self.outputs(split, self._forward, reduce or _as_float, subset, inference=True)

    def outputs(
        self,
        split: str,
        forward: Callable[[Tensor], Tensor],
        reduce: Callable[[Tensor], Tensor],
        subset: Tensor | None = None,
        inference: bool = False,
    ) -> Tensor:
        """``reduce(forward(x))`` over the samples of ``split`` of ``source``, concatenated in
        sample order, under ``no_grad`` (``inference``: ``inference_mode``, ~8 % faster on the
        CPU, whose outputs must never meet autograd later); the caller sets the modes.

        With several processes each evaluates a contiguous block of the samples and the
        blocks are all-gathered in rank order, so every process returns the whole result
        (the same numbers as one process, up to the rounding of other batch compositions).
        """
        if self.source is None:
            raise ValueError("Predictor.outputs needs a data source")
        procs = self.processes
        if procs is None:
            from noisybench.processes import for_this_process

            procs = self.processes = for_this_process()
        n = self.source.labels.size(split) if subset is None else int(subset.shape[0])
        lo, hi = procs.block(n)
        empty = lo == hi
        if empty:  # fewer samples than processes: one sample gives the output's shape
            lo, hi = 0, min(1, n)
        samples = range(lo, hi) if subset is None else subset[lo:hi]
        batches = self.source.eval_batches(split, samples, self.batch_size)
        with torch.inference_mode() if inference else torch.no_grad():
            parts = self._run(batches, forward, reduce)
        out = torch.cat(parts)[:0] if empty else torch.cat(parts)
        return procs.gather_rows(out, n)


def _as_float(logits: Tensor) -> Tensor:
    return logits.float()


def make_predict(
    model: nn.Module,
    view: Callable[[Tensor], Tensor],
    device: torch.device,
    batch_size: int = 1024,
    method: Any | None = None,
    autocast: Callable[[], Any] | None = None,
) -> Predictor:
    """The suites' ``predict`` over in-memory images (a :class:`Predictor` without a data
    source)."""
    return Predictor(model, method, device, batch_size, view, autocast=autocast or nullcontext)


def flat_float(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a suite's result (what a scalar logger such as TensorBoard takes)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
