"""The evaluation-suite interface shared by training-time and post-hoc evaluation.

A suite is one class (a subclass of :class:`EvalSuite`) and one YAML file under
``conf/eval/<name>.yaml``. It never reads or writes run directories: it receives a
``predict`` callable and an :class:`EvalContext`, and returns numbers.

How the engine calls a suite (the contract):

* ``predict(images)`` takes uint8 images ``(N, C, H, W)`` (on any device) and returns float32
  logits ``(N, K)`` on ``ctx.device``. It applies the evaluation view (normalisation, and
  resizing where configured), puts the model and the method in eval mode, calls
  ``method.predict(model, x)`` under ``torch.no_grad()`` in batches of ``eval.batch_size``,
  and leaves the modules in the mode it found them in. :func:`make_predict` is a reference
  implementation; the engine's ``Trainer.predict`` does the same (minus the mode restore).
* During training: after the epoch's own evaluation, for every suite with ``every > 0`` and
  ``(epoch + 1) % every == 0`` (epochs counted from 1), call
  ``suite.evaluate(predict, ctx)`` and log the ``float`` entries of the returned mapping as
  ``eval/<key>`` (keys already start with the suite's name, e.g. ``calibration/ece``);
  ``list`` entries (reliability bins, curves) are for evaluation.json and figures only.
* After training, or on a finished run (``python -m noisybench.evaluate``): every selected
  suite, whatever its ``every``.
* ``ctx`` is built once per run (see :class:`EvalContext`); suites cache what they read from
  disk (corrupted test sets, OOD images) on the suite object, so calling ``evaluate`` every k
  epochs reads the files once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from noisybench.errors import UserError

__all__ = ["EvalContext", "EvalSuite", "Metrics", "Predict", "make_predict"]

Predict = Callable[[Tensor], Tensor]
Metrics = dict[str, float | list[float]]


@dataclass
class EvalContext:
    """What a suite may know about the run besides ``predict``.

    Attributes:
        num_classes: K.
        test_images: uint8 ``(M, C, H, W)``, the in-distribution test set.
        test_labels: int64 ``(M,)``.
        data_dir: the run's ``data_dir`` (where suites look for their files).
        device: where ``predict`` returns its logits.
        dataset: the dataset's name as in ``conf/dataset`` (``cifar10``, ``digits``, ...).
        seed: a seed for the suites' own random choices (held-out halves, corruption noise).
        train_images: uint8 ``(N, C, H, W)`` training images, or None (dark knowledge only).
        train_labels: int64 ``(N,)`` the labels the run trained on (the noisy ones), or None.
        train_clean: int64 ``(N,)`` the clean training labels, or None.
    """

    num_classes: int
    test_images: Tensor
    test_labels: Tensor
    data_dir: Path
    device: torch.device
    dataset: str = ""
    seed: int = 0
    train_images: Tensor | None = None
    train_labels: Tensor | None = None
    train_clean: Tensor | None = None


class EvalSuite(abc.ABC):
    """One evaluation suite.

    Attributes:
        name: the key prefix of its metrics and the name of its YAML file.
        every: run it every ``every`` epochs during training; 0 runs it only on finished
            runs (and at the end of training).
    """

    name: ClassVar[str] = ""

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


def make_predict(
    model: nn.Module,
    view: Callable[[Tensor], Tensor],
    device: torch.device,
    batch_size: int = 1024,
    method: Any | None = None,
    autocast: Callable[[], Any] | None = None,
) -> Predict:
    """The ``predict`` callable of the suites, during training (``Trainer.predict``) and on a
    finished run (``noisybench evaluate``): the evaluation view, eval mode, ``method.predict``
    (or ``model`` itself when ``method`` is None), in batches, without gradients, inside
    ``autocast()`` when given (the run's mixed precision).

    The modules' train/eval modes are restored afterwards, so it is safe to call in the
    middle of training.
    """
    from contextlib import nullcontext

    precision = autocast or nullcontext

    @torch.no_grad()
    def predict(images: Tensor) -> Tensor:
        modules: list[nn.Module] = [model] + ([method] if isinstance(method, nn.Module) else [])
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            outs = []
            for start in range(0, images.shape[0], batch_size):
                x = view(images[start : start + batch_size].to(device, non_blocking=True))
                with precision():
                    logits = method.predict(model, x) if method is not None else model(x)
                outs.append(logits.float())
            if not outs:
                return torch.zeros(0, 0, device=device)
            return torch.cat(outs)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)

    return predict


def flat_float(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a suite's result (what a scalar logger such as TensorBoard takes)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
