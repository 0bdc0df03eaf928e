"""The last-layer Laplace teacher (Daxberger, Kristiadi, Immer, Eschenhagen, Bauer & Hennig,
"Laplace Redux -- Effortless Bayesian Deep Learning", NeurIPS 2021), diagonal GGN.

The network of a finished (deterministic) run is kept at its trained weights except the
classifier ``head`` (``logits = W phi(x) + b``, every noisybench model has ``head`` and
``forward_features``), whose weights get a Gaussian posterior around the trained ``(W, b)``
(MAP) with precision ``H + lambda I`` (their Eq. 2 and Section 3, "last-layer" subnetwork):

* ``H`` is the generalised Gauss-Newton matrix of the summed cross-entropy over the training
  set, ``sum_n J_n^T Lambda_n J_n`` with ``Lambda_n = diag(p_n) - p_n p_n^T`` the Hessian of
  the cross-entropy w.r.t. the logits and ``J_n`` the Jacobian of the logits w.r.t. ``(W, b)``.
  For the last layer the logits are linear in ``(W, b)``, so the GGN *is* the Hessian (and it
  does not depend on the labels: the noisy labels are not used); its diagonal is
  ``H[W_kj] = sum_n p_nk (1 - p_nk) phi_nj^2`` and ``H[b_k] = sum_n p_nk (1 - p_nk)``.
  ``tests/test_teachers.py`` checks it against ``torch.autograd.functional.hessian``.
* ``lambda`` (``prior_precision``, default 1, as laplace-torch's default) is the precision of
  the isotropic Gaussian prior.

The predictive distribution is the Monte Carlo average over ``S`` samples of ``(W, b)``
(Daxberger et al.'s "MC" predictive): the features are computed once, so a sample costs one
small matrix product, not a forward pass.

Why diagonal and not KFAC: on the small models of the digits experiments the diagonal is
exact to check (the brute-force Hessian) and costs ``K x (H + 1)`` floats; a Kronecker
factorisation would model the correlations between the weights of one class row but needs a
``H x H`` and a ``K x K`` factor and their eigendecompositions, and its check against the
brute-force Hessian is only approximate (KFAC is not the exact GGN). The diagonal is the
cheapest posterior that the issue's comparison needs; KFAC is left for later.

Cost: two passes over the training set (the features, and the logits once to check that
``head(forward_features(x))`` is the model's output), one over the evaluated set; memory:
the ``N x H`` features.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import MethodContext
from noisybench.teachers.base import Evaluate, Teacher, TeacherSource, single_network

__all__ = ["LaplaceTeacher", "last_layer_ggn_diagonal"]


def last_layer_ggn_diagonal(features: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal of the GGN (= Hessian) of ``sum_n CE(W phi_n + b, y_n)`` w.r.t. ``W`` ``(K, H)``
    and ``b`` ``(K,)``, from the features ``phi`` ``(N, H)`` and the softmax ``p`` ``(N, K)``."""
    curvature = probs * (1.0 - probs)  # diagonal of diag(p) - p p^T
    return curvature.t() @ features.pow(2), curvature.sum(dim=0)


class _Features(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


class LaplaceTeacher(Teacher):
    """Last-layer Laplace with a diagonal GGN (see the module docstring).

    Args:
        samples: ``S`` weight samples of the classifier.
        prior_precision: ``lambda``.
        seed, store: see :class:`~noisybench.teachers.base.Teacher`.
    """

    kind = "laplace"

    def __init__(
        self, samples: int = 30, prior_precision: float = 1.0, seed: int = 0, store: bool = True
    ) -> None:
        super().__init__(samples=samples, seed=seed, store=store)
        if not 0 < float(prior_precision) < float("inf"):
            raise UserError(
                f"method.teacher.prior_precision={prior_precision!r} must be > 0; use e.g. 1"
            )
        self.prior_precision = float(prior_precision)
        self.std: tuple[Tensor, Tensor] | None = None

    def attach(self, sources: list[TeacherSource], ctx: MethodContext) -> None:
        net = single_network(self.kind, sources)
        if not isinstance(getattr(net, "head", None), nn.Linear) or not hasattr(
            net, "forward_features"
        ):
            raise UserError(
                "the laplace teacher needs a model with a linear `head` and `forward_features` "
                "(every noisybench model has them)"
            )
        self.networks = [net]

    @torch.no_grad()
    def fit(self, train_pass: Evaluate) -> None:
        """The posterior standard deviations of ``(W, b)`` from one pass over the training set."""
        net = self.networks[0]
        head: nn.Linear = net.head  # type: ignore[assignment]
        features = train_pass(_Features(net)).float()
        logits = F.linear(features, head.weight.float(), head.bias.float())
        if not torch.allclose(logits, train_pass(net).float(), rtol=1e-3, atol=1e-3):
            raise UserError(
                "the laplace teacher needs logits = head(forward_features(x)) in eval mode; "
                "this model computes something else"
            )
        h_w, h_b = last_layer_ggn_diagonal(features, F.softmax(logits, dim=-1))
        self.std = (
            (h_w + self.prior_precision).rsqrt(),
            (h_b + self.prior_precision).rsqrt(),
        )

    def sample_logits(self, evaluate: Evaluate, train_pass: Evaluate) -> Iterator[Tensor]:
        if self.std is None:
            self.fit(train_pass)
        assert self.std is not None
        net = self.networks[0]
        head: nn.Linear = net.head  # type: ignore[assignment]
        features = evaluate(_Features(net)).float()
        w, b = head.weight.detach().float(), head.bias.detach().float()
        std_w, std_b = self.std
        for _ in range(self.samples):
            z = torch.randn(w.numel() + b.numel(), device=w.device)
            w_s = w + std_w * z[: w.numel()].view_as(w)
            b_s = b + std_b * z[w.numel() :]
            yield F.linear(features, w_s, b_s)

    def passes(self) -> int:
        return 3  # features, the logits check, the evaluated set's features

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prior_precision": self.prior_precision}
