"""Dark knowledge (the BSD paper, Section 4.1 and Appendix A.2).

With ``f(x)`` the model's softmax output and ``y_i`` the integer label of sample i (the label
the run trained on, ``argmax_k y^0_{i,k}``, i.e. the given, possibly noisy, label; the clean
label can be chosen instead), Eq. 9 decomposes ``f(x_i) = mu_{y_i} + delta(x_i)`` where

* Eq. 10: ``mu_ij = 1/2 (E[f(X) | Y=i]_j + E[f(X) | Y=j]_i)``, the inter-class component
  (the class-conditional mean output, symmetrised); Figures 2, 7, 9 show it;
* ``delta(x_i) = f(x_i) - mu_{y_i}``, the sample-wise deviation; Figures 3, 8, 10 show the
  per-sample total absolute deviation ``sum_k |delta(x_i)_k|``.

Emergence (Figure 11): the mean KL divergence between the final model's predictive
distribution and epoch e's on a fixed subset, "adjusting for temperature scaling": per epoch,
``min_T mean_i KL(softmax(z_i^final) || softmax(z_i^e / T))`` over one temperature ``T > 0``
(L-BFGS on log T), so that a model that differs from the final one only by its confidence
scale counts as equal. The per-epoch logits are saved by :func:`save_snapshot` as float16
``(S, K)`` arrays in ``<run_dir>/predictions/epoch_<e>.npy`` with the subset's indices in
``<run_dir>/predictions/indices.npy``.

Penultimate-layer projection (Figure 13, after Müller et al. 2019, "When does label smoothing
help?", Sec. 2): for three classes a, b, c with final-layer templates ``w_a, w_b, w_c`` (rows
of the last linear layer's weight), the penultimate activations are projected onto the plane
through the three templates: coordinates ``((x - w_a) . e_1, (x - w_a) . e_2)`` with ``e_1, e_2``
the Gram-Schmidt orthonormal basis of ``(w_b - w_a, w_c - w_a)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from noisybench.errors import UserError
from noisybench.evaluation.base import EvalContext, EvalSuite, Metrics, Predict
from noisybench.losses import kl_from_log

__all__ = [
    "DarkKnowledgeSuite",
    "PredictionSnapshots",
    "class_conditional_means",
    "inter_class_matrix",
    "kl_to_final",
    "load_snapshots",
    "penultimate_features",
    "sample_deviation",
    "save_snapshot",
    "snapshot_indices",
    "temperature_adjusted_kl",
    "template_plane_projection",
]

SNAPSHOT_DIR = "predictions"


def class_conditional_means(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``M_ij = E[f(X) | Y=i]_j`` ``(K, K)``; rows of classes without samples are NaN."""
    p = probs.float()
    sums = torch.zeros(num_classes, p.shape[1], device=p.device).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=num_classes).float()
    means = sums / counts.clamp(min=1)[:, None]
    return torch.where(counts[:, None] > 0, means, torch.full_like(means, float("nan")))


def inter_class_matrix(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Eq. 10: ``mu = (M + M^T) / 2`` with ``M`` the class-conditional mean outputs."""
    m = class_conditional_means(probs, labels, num_classes)
    return 0.5 * (m + m.T)


def sample_deviation(probs: Tensor, labels: Tensor, mu: Tensor) -> Tensor:
    """Eq. 9: ``delta(x_i) = f(x_i) - mu_{y_i}``, ``(N, K)``."""
    return probs.float() - mu[labels]


def _mean_kl(p_log: Tensor, q_logits: Tensor) -> Tensor:
    """Mean over rows of ``KL(p || softmax(q_logits))`` with ``p_log`` log-probabilities."""
    return kl_from_log(p_log, F.log_softmax(q_logits, dim=-1)).mean()


def temperature_adjusted_kl(
    logits: Tensor, final_logits: Tensor, max_iter: int = 100
) -> tuple[float, float]:
    """``(min_T mean KL(softmax(final) || softmax(logits / T)), argmin T)``."""
    z = logits.detach().float()
    p_log = F.log_softmax(final_logits.detach().float(), dim=-1)
    log_t = torch.zeros((), device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _mean_kl(p_log, z / log_t.exp())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        t = log_t.exp()
        return float(_mean_kl(p_log, z / t)), float(t)


def snapshot_indices(num_samples: int, size: int, seed: int = 0) -> np.ndarray:
    """The fixed subset whose predictions are saved every epoch: ``size`` distinct indices
    (all when ``size >= num_samples``), sorted, drawn with ``numpy.random.default_rng(seed)``."""
    if int(size) <= 0:
        raise UserError(f"prediction snapshot size={size} must be positive, e.g. 1000")
    if size >= num_samples:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(num_samples, size=int(size), replace=False)).astype(np.int64)


def save_snapshot(run_dir: str | Path, epoch: int, logits: Tensor, indices: np.ndarray) -> Path:
    """Save one epoch's logits on the subset (float16 ``(S, K)``) atomically; writes
    ``indices.npy`` on first use and refuses a different subset later."""
    from noisybench.io import atomic_write

    folder = Path(run_dir) / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    idx_path = folder / "indices.npy"
    if idx_path.exists():
        saved = np.load(idx_path)
        if not np.array_equal(saved, indices):
            raise UserError(
                f"{idx_path} holds another prediction subset; keep the snapshot size and seed "
                "of the run, or move the predictions/ folder away"
            )
    else:
        atomic_write(idx_path, lambda f: np.save(f, np.asarray(indices, dtype=np.int64)))
    path = folder / f"epoch_{int(epoch):04d}.npy"
    array = logits.detach().to(torch.float16).cpu().numpy()
    atomic_write(path, lambda f: np.save(f, array))
    return path


def load_snapshots(run_dir: str | Path) -> tuple[list[int], Tensor, np.ndarray]:
    """``(epochs, logits (E, S, K) float32, indices)`` of the saved snapshots of a run."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    files = sorted(folder.glob("epoch_*.npy"))
    if not files or not (folder / "indices.npy").is_file():
        raise UserError(
            f"{folder} holds no prediction snapshots; train with per-epoch prediction "
            "snapshots enabled to get the KL-over-epochs curve"
        )
    epochs = [int(f.stem.split("_")[1]) for f in files]
    logits = torch.stack([torch.from_numpy(np.load(f).astype(np.float32)) for f in files])
    return epochs, logits, np.load(folder / "indices.npy")


def kl_to_final(logits: Tensor) -> tuple[list[float], list[float]]:
    """Figure 11: temperature-adjusted KL of every snapshot ``logits[e]`` to the last one;
    returns ``(kl per epoch, temperature per epoch)``."""
    final = logits[-1]
    pairs = [temperature_adjusted_kl(logits[e], final) for e in range(logits.shape[0])]
    return [k for k, _ in pairs], [t for _, t in pairs]


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer to take features from")
    return linears[-1]


@torch.no_grad()
def penultimate_features(
    model: torch.nn.Module, view: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """``(features (N, D), templates (K, D))``: the inputs of the model's last ``nn.Linear``
    (the penultimate activations) over uint8 ``images`` in eval mode, and that layer's weight."""
    head = _last_linear(model)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    was_training = model.training
    model.eval()
    device = head.weight.device
    try:
        for start in range(0, images.shape[0], batch_size):
            model(view(images[start : start + batch_size].to(device)))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).float(), head.weight.detach().float()


def template_plane_projection(features: Tensor, templates: Tensor) -> Tensor:
    """Figure 13: 2-D coordinates of ``features`` (N, D) in the plane through the three
    ``templates`` (3, D), origin at the first, axes by Gram-Schmidt on the other two."""
    if templates.shape[0] != 3:
        raise UserError(f"the projection needs 3 class templates, got {templates.shape[0]}")
    w = templates.double()
    e1 = w[1] - w[0]
    e1 = e1 / e1.norm()
    v = w[2] - w[0]
    e2 = v - (v @ e1) * e1
    if float(e2.norm()) < 1e-12:
        raise UserError("the three class templates are collinear; choose other classes")
    e2 = e2 / e2.norm()
    x = features.double() - w[0]
    return torch.stack([x @ e1, x @ e2], dim=1).float()


class PredictionSnapshots:
    """Saves the logits of a fixed subset of images after chosen epochs (Figure 11's input).

    The engine creates one per run (after the data are on the device) and calls it after each
    epoch's evaluation: ``snapshots(epoch, predict)`` with the 0-based epoch. It saves epoch
    ``epoch + 1`` when ``(epoch + 1) % every == 0`` and always the last epoch (the final model
    every curve is compared with). Cost per call: one forward pass over ``size`` images and a
    ``2 * size * K``-byte file.
    """

    def __init__(
        self,
        run_dir: str | Path,
        images: Tensor,
        epochs: int,
        size: int = 1000,
        seed: int = 0,
        every: int = 1,
    ) -> None:
        if int(every) < 1:
            raise UserError(f"prediction snapshots every={every} must be at least 1")
        self.run_dir = Path(run_dir)
        self.indices = snapshot_indices(int(images.shape[0]), size, seed)
        self.images = images[torch.as_tensor(self.indices, device=images.device)]
        self.epochs, self.every = int(epochs), int(every)

    def due(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is saved."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs

    def __call__(self, epoch: int, predict: Predict) -> Path | None:
        if not self.due(epoch):
            return None
        return save_snapshot(self.run_dir, epoch + 1, predict(self.images), self.indices)


class DarkKnowledgeSuite(EvalSuite):
    """mu (Eq. 10) and delta (Eq. 9) of the model over the training set.

    Keys: ``dark_knowledge/mu`` (K*K list, row-major), ``dark_knowledge/mu_offdiag_mean``,
    ``dark_knowledge/mu_diag_mean``, ``dark_knowledge/delta_l1_mean`` (mean over samples of
    ``sum_k |delta_k|``), ``dark_knowledge/delta_l1_quantiles`` (the 0, 10, ..., 100 %
    quantiles), ``dark_knowledge/delta_l1_hist`` (20 equal bins on [0, 2]) and
    ``dark_knowledge/labels`` (0: the given labels, 1: the clean ones).
    """

    name = "dark_knowledge"

    def __init__(self, every: int = 0, labels: str = "given") -> None:
        super().__init__(every)
        if labels not in ("given", "clean"):
            raise UserError(f"eval suite dark_knowledge: labels={labels!r}; use given or clean")
        self.labels = labels

    def evaluate(self, predict: Predict, ctx: EvalContext) -> Metrics:
        labels = ctx.train_labels if self.labels == "given" else ctx.train_clean
        if ctx.train_images is None or labels is None:
            raise UserError(
                "eval suite dark_knowledge needs the training images and labels; run it from "
                "the engine or noisybench.evaluate, which provide them"
            )
        k = ctx.num_classes
        probs = predict(ctx.train_images).softmax(-1)
        labels = labels.to(probs.device)
        mu = inter_class_matrix(probs, labels, k)
        l1 = sample_deviation(probs, labels, mu).abs().sum(-1)
        eye = torch.eye(k, dtype=torch.bool, device=mu.device)
        q = torch.quantile(l1, torch.linspace(0, 1, 11, device=l1.device))
        hist = torch.histc(l1, bins=20, min=0.0, max=2.0)
        return {
            f"{self.name}/mu": [float(v) for v in mu.flatten().cpu()],
            f"{self.name}/mu_diag_mean": float(mu[eye].nanmean()),
            f"{self.name}/mu_offdiag_mean": float(mu[~eye].nanmean()),
            f"{self.name}/delta_l1_mean": float(l1.mean()),
            f"{self.name}/delta_l1_quantiles": [float(v) for v in q.cpu()],
            f"{self.name}/delta_l1_hist": [float(v) for v in hist.cpu()],
            f"{self.name}/labels": 0.0 if self.labels == "given" else 1.0,
        }
