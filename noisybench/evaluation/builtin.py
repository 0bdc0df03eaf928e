"""The suites every training run has: test metrics, validation accuracy, memorisation and
label recovery (the BSD paper's Sec. 5 diagnostics).

They are evaluation suites like the others (``conf/eval/<name>.yaml``, so ``noisybench
evaluate RUN eval=[test,memorisation]`` computes them on a finished run by the same code), but
``builtin``: :func:`noisybench.build.build` adds them to every run, configured by the ``eval``
settings (``train_diagnostics``, ``train_diagnostics_every``), and their keys join the epoch's
record as they are (``test/acc``, ``memorisation/fit_given``, ``recovery/recovered``).

They predict through ``predict.split`` (:class:`noisybench.evaluation.base.Predictor`): the
run's data source, streamed or in memory, split over the processes and gathered, so they
need no images in memory. Only the engine and these suites see the clean training labels
(``ctx.labels``); a method never does.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from noisybench import metrics
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict

__all__ = ["MemorisationSuite", "RecoverySuite", "TestSuite", "ValSuite"]


def _argmax(logits: Tensor) -> Tensor:
    return logits.argmax(-1)


def _labels(ctx: EvalContext) -> Any:
    if ctx.labels is None:
        raise ValueError("the built-in suites need the run's labels (EvalContext.labels)")
    return ctx.labels


def _split(predict: Predict) -> Any:
    split = getattr(predict, "split", None)
    if split is None:
        raise TypeError("the built-in suites need a Predictor (predict.split over the data source)")
    return split


def _prefixed(name: str, values: dict[str, Tensor]) -> Metrics:
    return {f"{name}/{key}": float(value) for key, value in values.items()}


class _BuiltinSuite(EvalSuite):
    """A suite every training run has: due every epoch unless told otherwise."""

    stage = "held_out"

    def __init__(self, every: int = 1) -> None:
        super().__init__(every)


class TestSuite(_BuiltinSuite):
    """``test/acc``, ``test/err``, ``test/ece`` (15 equal-width bins) and ``test/nll`` of the
    whole test set (:func:`noisybench.metrics.classification_metrics`), every epoch; the same
    for a real-noise dataset's further test sets under their own prefix (mini-WebVision's
    ILSVRC12 validation images: ``test_imagenet/acc``, ...), with the top-k accuracies its
    protocol names (``test/top5``, :func:`noisybench.metrics.topk_accuracy`)."""

    name = "test"
    __test__ = False  # not a pytest class

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        labels = _labels(ctx)
        out: Metrics = {}
        for split, y in (("test", labels.test), *labels.extra_tests.items()):
            logits = _split(predict)(split)
            test = metrics.classification_metrics(logits, y)
            test.update({f"top{k}": metrics.topk_accuracy(logits, y, k) for k in labels.topk})
            out.update(_prefixed(split, test))
        return out


class ValSuite(_BuiltinSuite):
    """``val/acc``: accuracy on the held-out noisy validation split against its noisy labels
    (model selection under noise), and ``val/clean_acc`` on the dataset's own clean
    validation split (Clothing1M's; the ``clean_val`` rule's number); nothing for a split the
    run does not have."""

    name = "val"

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        labels = _labels(ctx)
        out: Metrics = {}
        for split, key, y in (
            ("val", "acc", labels.val),
            ("clean_val", "clean_acc", labels.clean_val),
        ):
            if y is not None:
                pred = _split(predict)(split, _argmax)
                out[f"val/{key}"] = float((pred == y).float().mean())
        return out


class MemorisationSuite(_BuiltinSuite):
    """``memorisation/fit_given``, ``fit_true``, ``clean_fit``
    (:func:`noisybench.metrics.memorisation`): the arg-max predictions on the training set
    (or on the fixed diagnostic subset, ``eval.train_diagnostics_subset``) against the given
    and the clean labels. Due every ``every`` epochs and at the last one (``epochs``);
    nothing when the clean labels are unknown (real noise)."""

    name = "memorisation"
    stage = "diagnostics"

    def __init__(self, every: int = 1, epochs: int | None = None) -> None:
        super().__init__(every)
        self.epochs = epochs

    def due(self, epoch: int) -> bool:
        return super().due(epoch) or (self.every > 0 and epoch + 1 == self.epochs)

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        labels = _labels(ctx)
        if not labels.clean_known:
            return {}
        subset = labels.train_subset
        pred = _split(predict)("train", _argmax, subset)
        given, clean = labels.train_given, labels.train_clean
        if subset is not None:
            given, clean = given[subset], clean[subset]
        return _prefixed(self.name, metrics.memorisation(pred, given, clean))


class RecoverySuite(_BuiltinSuite):
    """``recovery/recovered``, ``still_given``, ``detect_precision``, ``detect_recall``,
    ``entropy`` (:func:`noisybench.metrics.label_recovery`) of the method's per-sample soft
    targets against the clean labels, in chunks (no ``(N, K)`` float32 temporary at ImageNet
    size); nothing for a method without soft targets or without clean labels."""

    name = "recovery"
    stage = "diagnostics"

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        labels = _labels(ctx)
        if not labels.clean_known or ctx.method is None:
            return {}
        rec = metrics.label_recovery_chunked(ctx.method, labels.train_given, labels.train_clean)
        return {} if rec is None else _prefixed(self.name, rec)
