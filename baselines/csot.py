"""CSOT: curriculum- and structure-aware optimal transport for learning with noisy labels.

Reference: Chang, Shi & Wang, "CSOT: Curriculum and Structure-Aware Optimal Transport for
Learning with Noisy Labels", NeurIPS 2023 (Sec. 3-4, Eq. 6-9, Algorithm 1); authors' code:
github.com/changwxx/CSOT-for-LNL (``main_cifar.py``; ``utils.py``: ``CSOT_PL``, ``get_masks``,
``curriculum_scheduler``, ``train``, ``warmup``; ``plabel_allocator.py``:
``curriculum_structure_aware_PL``, ``entropic_COT_gcg``, ``entropic_COT_fast``,
``line_search_armijo``, ``scalar_search_armijo``, ``omega``, ``omega_df``; ``PreResNet.py``:
``Net``).

One trained network (the code builds a second, ``net2``, and never trains or uses it: not built
here). Network (:class:`CSOTNetwork`, returned by :meth:`CSOT.network`): the run's backbone
``forward_features`` (D), a projector ``Linear(D, D)`` (the code's ``encoder.head``; its output
``z`` is the feature used for the OT and for SimSiam), the backbone's own ``head`` as the
classifier on ``z`` (the code's ``cls``), and SimSiam's predictor ``D -> 128 (no bias) -> BN ->
ReLU -> D`` (the code's ``predictor``).

1. Warm-up (epochs ``< warm_up``; code: 10 CIFAR-10, 30 CIFAR-100): cross-entropy on a weak
   view in batches of ``2 B`` (the code's ``loader.run('warmup', batch_size * 2)``), plus the
   negative-entropy penalty ``mean sum_k p_k log p_k`` when ``confidence_penalty`` (the code:
   asymmetric noise).
2. Every later epoch, before its first step (:meth:`CSOT.on_epoch_start`): features ``z``
   (L2-normalised) and logits of the whole training set (eval mode, plain view); the set is
   shuffled and cut into chunks of 1024 (the code's ``eval_train`` loader: batch 1024,
   ``shuffle=True``); per chunk, CSOT (Eq. 8-9) with ``P = log_softmax(logits)``, the one-hot
   noisy labels ``L``, ``S = z z^T`` with a zero diagonal, cost ``M = -P``, marginals
   ``a = 1/n`` (rows, inequality) and ``b = m/K`` (columns, equality; ``m`` the curriculum
   budget), entropic regulariser ``reg_e`` (0.1) and the structure term
   ``-(reg_feat Omega(S, P, Q) + reg_lab Omega(S, L, Q))``,
   ``Omega(S, X, Q) = sum_ij S_ij <X_i Q_i, X_j Q_j>``: solved by the generalised conditional
   gradient (10 outer iterations, Armijo line search) whose direction is the entropic partial
   OT problem solved by 100 scaling iterations (:func:`entropic_partial_ot`). The budget rises
   linearly from ``begin_rate`` (0.3) at the end of warm-up to 1 at ``curriculum_epoch`` (250).
3. Per chunk, the ``int(n m)`` rows with the largest coupling maximum are *selected*; the OT
   label is the row's argmax, the confidence ``min(1, n max_k Q_ik)``. Three-way split
   (``get_masks``): selected with OT label == given label -> labelled; selected, different ->
   confident-unlabelled; not selected -> unlabelled. The FixMatch term switches on (for good)
   from the first epoch with more confident-unlabelled than unselected samples.
4. Each step (the code's ``train``): ``B`` labelled and ``B`` unlabelled samples from two
   cycled streams of their own lengths, ``max(|L| // B, |U| // B)`` steps (``drop_last``):

   * labelled: refined and sharpened targets ``sharpen(c y + (1 - c) (p(x_w1) + p(x_w2)) / 2,
     T = 0.5)`` (DivideMix Eq. 3-4 with the OT confidence ``c``); MixUp of the two weak views
     (``lambda ~ Beta(4, 4)``, ``max(lambda, 1 - lambda)``, one permutation of the 2B rows),
     soft cross-entropy plus the uniform-prior penalty ``sum_k pi_k log(pi_k / mean p_k)``;
     cross-entropy of the strong view to ``c t + (1 - c) p(x_w1)`` (the code keeps the
     gradient through ``p(x_w1)`` here, and so does this implementation);
   * unlabelled: SimSiam between the weak and the strong view
     ``-(cos(p_w, sg(z_s)) + cos(p_s, sg(z_w))) / 2``; FixMatch cross-entropy of the strong view
     to the OT label where ``p_w[OT label] >= 0.95`` and the sample is confident-unlabelled,
     averaged over all unlabelled rows.
   * loss: ``L_x + penalty + L_fix_x + L_fix_u + L_simsiam``.

Deviations kept (and why):

* Views: this project's ``weak`` (crop + flip) and ``strong`` (AutoAugment + Random Erasing
  with the dataset's settings) views; ``experiment=ref_csot`` selects the code's PIL
  ``CIFAR10Policy`` ranges and no erasing. The code's ``autoaugment.py`` (``np.int``, removed
  in NumPy 1.24) is irrelevant here.
* The line search's cubic-interpolation loop (``scalar_search_armijo``, unbounded in the code)
  stops after ``max_line_search`` (60) candidates; the step size halves on every pass, so the
  code would by then be trying steps below ``2^-60`` that leave the coupling unchanged in
  float64; such a chunk takes no step (the code's "no step found").
* ``S`` and ``log_softmax`` are computed in float64 from the float32 features and logits (the
  code computes both in float32 and casts).
* Shuffles: the OT chunks from ``torch.Generator`` seeded with ``(seed, epoch)``; the streams
  from the engine's per-epoch seed (exact resume); MixUp's ``lambda`` and permutation from
  torch's generator on the training device (the code: ``np.random.beta``, CPU ``randperm``).
* The OT confidence is stored in float32 (the code keeps float64 and casts to float32 where
  it uses it); the refined targets are float32 (the code's one-hot is float64).
* A labelled or unlabelled set with fewer than ``B`` samples is drawn whole each step (the code
  crashes: an empty ``drop_last`` loader); one with fewer than 2 samples is left out (batch
  norm needs 2).
* The code's cosine schedule starts one epoch late (created after epoch 0); the engine's
  cosine decays from epoch 0.
* Several processes (DistributedDataParallel needs every parameter in every backward): a step
  that leaves the SimSiam predictor unused (warm-up; no unlabelled rows) adds
  ``0 * sum(predictor output)``, which gives the predictor zero gradients, so SGD's weight
  decay shrinks it there (one process: no gradient, no decay, as the code). The predictor's
  batch norm sees each process's share of the rows (SyncBatchNorm needs GPUs:
  ``distributed.sync_batchnorm=true``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import (
    Batch,
    EpochPlan,
    Method,
    MethodContext,
    StepOutput,
    sharpen,
    uniform_prior_penalty,
)

__all__ = [
    "CSOT",
    "CSOTNetwork",
    "csot_assign",
    "csot_coupling",
    "csot_select",
    "curriculum_budget",
    "entropic_partial_ot",
    "fixmatch_loss",
    "mixup_loss",
    "refined_targets",
    "simsiam_loss",
    "split_masks",
    "stream",
]


# ---------------------------------------------------------------------------------- budget
def curriculum_budget(
    epoch: int, warm_up: int, curriculum_epoch: int = 250, begin: float = 0.3, end: float = 1.0
) -> float:
    """The curriculum budget ``m`` of an epoch after warm-up (``curriculum_scheduler``, linear
    mode): ``begin + (epoch - warm_up) / (curriculum_epoch - warm_up) * (end - begin)`` before
    ``curriculum_epoch``, then 1 (the code's ``budget, pho = 1., 1.``)."""
    if epoch >= curriculum_epoch:
        return 1.0
    ratio = (epoch - warm_up) / (curriculum_epoch - warm_up)
    return begin + ratio * (end - begin)


# ---------------------------------------------------------------------------------- OT
def entropic_partial_ot(a: Tensor, b: Tensor, cost: Tensor, reg: float, iters: int) -> Tensor:
    """Entropic OT with row marginals ``<= a`` and column marginals ``= b`` (total mass
    ``sum b``), batched: ``a (B, n)``, ``b (B, K)``, ``cost (B, n, K)``; ``iters`` scaling
    iterations from ``u = v = 1`` (``entropic_COT_fast``):
    ``u = min(a / (K v), 1)``, ``v = b / (K^T u)``, ``Q = diag(u) K diag(v)``,
    ``K = exp(-cost / reg)``. This is block-coordinate ascent on the dual of
    ``min <cost, Q> + reg sum Q (log Q - 1)`` over that set, the problem POT's
    ``entropic_partial_wasserstein(a, b, cost, reg, m=sum(b))`` solves. No host sync."""
    kernel = torch.exp(cost / (-reg))
    kernel_t = kernel.transpose(1, 2)
    v = torch.ones_like(b)
    u = torch.ones_like(a)
    one = torch.ones((), dtype=a.dtype, device=a.device)
    for _ in range(int(iters)):
        u = torch.minimum(a / torch.bmm(kernel, v.unsqueeze(2)).squeeze(2), one)
        v = b / torch.bmm(kernel_t, u.unsqueeze(2)).squeeze(2)
    return u.unsqueeze(2) * kernel * v.unsqueeze(1)


def _sum(x: Tensor) -> Tensor:
    return x.sum(dim=(1, 2))


def csot_coupling(  # noqa: PLR0913
    sim: Tensor,
    logp: Tensor,
    labels: Tensor,
    mass: float,
    *,
    reg_e: float = 0.1,
    reg_feat: float = 1.0,
    reg_lab: float = 1.0,
    outer_iters: int = 10,
    inner_iters: int = 100,
    stop_thr: float = 1e-6,
    stop_thr2: float = 1e-6,
    max_line_search: int = 60,
) -> Tensor:
    """The CSOT coupling of a batch of chunks (``curriculum_structure_aware_PL`` /
    ``entropic_COT_gcg``): ``sim (B, n, n)`` symmetric with a zero diagonal, ``logp`` and
    ``labels`` ``(B, n, K)``, all float64; ``mass`` the total mass ``m``.

    Generalised conditional gradient from ``Q = a b^T``: linearise the structure term
    (``Mi = M + df(Q)``, ``df = -2 (reg_feat (S (P Q)) P + reg_lab (S (L Q)) L)``), solve the
    entropic partial OT with cost ``Mi`` (:func:`entropic_partial_ot`), Armijo line search on
    the full objective ``<M, Q> + reg_e sum Q log Q + f(Q)`` along the difference (scipy's
    ``scalar_search_armijo`` as the code transcribes it: ``alpha0 = 0.99``, ``c1 = 1e-4``,
    quadratic then cubic interpolation, step clipped to [0, 1]), stop a chunk after
    ``outer_iters`` or when the objective changes by less than ``stop_thr`` (relative) or
    ``stop_thr2`` (absolute), or when the direction is not finite (the code's "numerical
    errors": no step). Chunks are solved together, each with its own state; the objective is
    quadratic in the step along a direction plus the entropy, so a line-search candidate costs
    one element-wise pass, not a matrix product. No host sync.
    """
    dtype = torch.float64
    sim, logp, labels = sim.to(dtype), logp.to(dtype), labels.to(dtype)
    nb, n, k = logp.shape
    a = torch.full((nb, n), 1.0 / n, dtype=dtype, device=logp.device)
    b = torch.full((nb, k), mass / k, dtype=dtype, device=logp.device)
    cost = -logp
    g = a.unsqueeze(2) * b.unsqueeze(1)
    rf, rl = float(reg_feat), float(reg_lab)

    def structure(y_p: Tensor, y_l: Tensor) -> tuple[Tensor, Tensor]:
        sy = torch.bmm(sim, torch.cat([y_p, y_l], dim=2))
        return sy[..., :k], sy[..., k:]

    def entropy(x: Tensor) -> Tensor:
        return _sum(x * torch.log(x))

    syp, syl = structure(logp * g, labels * g)
    f_val = (
        _sum(cost * g)
        + reg_e * entropy(g)
        - (rf * _sum(logp * g * syp) + rl * _sum(labels * g * syl))
    )
    active = torch.ones(nb, dtype=torch.bool, device=logp.device)
    c1, alpha_start = 1e-4, 0.99
    for it in range(1, int(outer_iters) + 1):
        syp, syl = structure(logp * g, labels * g)
        m_lin = cost - 2.0 * (rf * syp * logp + rl * syl * labels)
        direction = entropic_partial_ot(a, b, m_lin, reg_e, inner_iters)
        finite = torch.isfinite(direction).all(dim=2).all(dim=1)
        delta = torch.where(finite[:, None, None], direction - g, torch.zeros_like(g))
        derphi0 = _sum(delta * (m_lin + reg_e * (1.0 + torch.log(g))))
        phi0 = f_val
        # objective along g + alpha delta: lin0 + alpha lin1 + entropy + q0 + alpha q1 + alpha^2 q2
        sdp, sdl = structure(logp * delta, labels * delta)
        lin0 = _sum(cost * g) - (rf * _sum(logp * g * syp) + rl * _sum(labels * g * syl))
        lin1 = _sum(cost * delta) - 2.0 * (
            rf * _sum(logp * delta * syp) + rl * _sum(labels * delta * syl)
        )
        quad = -(rf * _sum(logp * delta * sdp) + rl * _sum(labels * delta * sdl))

        def phi(alpha: Tensor) -> Tensor:
            x = g + alpha[:, None, None] * delta  # noqa: B023 (used within this iteration)
            return lin0 + alpha * lin1 + alpha * alpha * quad + reg_e * entropy(x)  # noqa: B023

        nan = torch.full_like(phi0, float("nan"))
        alpha0 = torch.full_like(phi0, alpha_start)
        phi_a0 = phi(alpha0)
        done = phi_a0 <= phi0 + c1 * alpha0 * derphi0
        alpha_res = torch.where(done, alpha0, nan)
        phi_res = torch.where(done, phi_a0, nan)
        alpha1 = -derphi0 * alpha0**2 / 2.0 / (phi_a0 - phi0 - derphi0 * alpha0)
        phi_a1 = phi(alpha1)
        ok = ~done & (phi_a1 <= phi0 + c1 * alpha1 * derphi0)
        alpha_res = torch.where(ok, alpha1, alpha_res)
        phi_res = torch.where(ok, phi_a1, phi_res)
        done = done | ok
        for _ in range(int(max_line_search)):
            stop = ~done & ~(alpha1 > 0)  # the loop `while alpha1 > amin` ends: no step
            alpha_res = torch.where(stop, torch.zeros_like(alpha_res), alpha_res)
            phi_res = torch.where(stop, phi0, phi_res)
            done = done | stop
            factor = alpha0**2 * alpha1**2 * (alpha1 - alpha0)
            d1 = phi_a1 - phi0 - derphi0 * alpha1
            d0 = phi_a0 - phi0 - derphi0 * alpha0
            ca = (alpha0**2 * d1 - alpha1**2 * d0) / factor
            cb = (-(alpha0**3) * d1 + alpha1**3 * d0) / factor
            alpha2 = (-cb + torch.sqrt(torch.abs(cb**2 - 3 * ca * derphi0))) / (3.0 * ca)
            phi_a2 = phi(alpha2)
            ok = ~done & (phi_a2 <= phi0 + c1 * alpha2 * derphi0)
            alpha_res = torch.where(ok, alpha2, alpha_res)
            phi_res = torch.where(ok, phi_a2, phi_res)
            done = done | ok
            reset = ((alpha1 - alpha2) > alpha1 / 2.0) | ((1 - alpha2 / alpha1) < 0.96)
            alpha2 = torch.where(reset, alpha1 / 2.0, alpha2)
            alpha0, alpha1, phi_a0, phi_a1 = alpha1, alpha2, phi_a1, phi_a2
        alpha_res = torch.where(done, alpha_res, torch.zeros_like(alpha_res))
        phi_res = torch.where(done, phi_res, phi0)
        # the code clips with torch.tensor(alpha): a Python float (the first candidate, 0.99)
        # becomes float32 there, a tensor candidate stays float64
        first = alpha_res == alpha_start
        alpha = torch.where(first, alpha_res.float().to(dtype), alpha_res).clamp(0.0, 1.0)
        update = active & finite
        g = torch.where(update[:, None, None], g + alpha[:, None, None] * delta, g)
        new_f = torch.where(update, phi_res, f_val)
        abs_delta = torch.abs(new_f - f_val)
        converged = (abs_delta / torch.abs(new_f) < stop_thr) | (abs_delta < stop_thr2)
        f_val = new_f
        active = update & ~converged & (it < int(outer_iters))
    return g


def csot_select(coupling: Tensor, mass: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(selected, ot_label, confidence)`` of a batch of chunks ``(B, n, K)``
    (``curriculum_structure_aware_PL`` and ``CSOT_PL``): the ``int(n * mass)`` rows with the
    largest ``max_k Q_ik`` are selected; label ``argmax_k Q_ik``; confidence
    ``clip(max_k Q_ik / (1 / n), 0, 1)``."""
    nb, n, _ = coupling.shape
    top, label = coupling.max(dim=2)
    count = int(n * mass)
    selected = torch.zeros(nb, n, dtype=torch.bool, device=coupling.device)
    selected.scatter_(1, torch.topk(top, count, dim=1).indices, True)
    conf = torch.clip(top / (1 / n), min=0, max=1.0)
    return selected, label, conf


def chunk_mass(n: int, budget: float) -> float:
    """The code's ``min(torch.sum(a).item(), top_percent)`` with ``a = 1/n`` in float64 (so at
    budget 1 a chunk whose float64 ``sum(1/n)`` rounds below 1 selects ``int(n * sum) = n - 1``
    rows, as the code does)."""
    total = float(torch.full((n,), 1.0 / n, dtype=torch.float64).sum())
    return min(total, float(budget))


def csot_assign(  # noqa: PLR0913
    features: Tensor,
    logits: Tensor,
    noisy: Tensor,
    budget: float,
    order: Tensor,
    *,
    chunk: int = 1024,
    chunks_per_solve: int = 16,
    **solver: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """CSOT over the whole training set (``CSOT_PL``): ``features (N, D)`` (normalised here),
    ``logits (N, K)``, ``noisy (N,)``; the samples in ``order`` (a permutation) cut into chunks
    of ``chunk`` (the last one shorter), each solved by :func:`csot_coupling`, full chunks in
    groups of ``chunks_per_solve``. Returns ``(selected, ot_label, confidence)``, each
    ``(N,)`` in index order."""
    n_total, k = logits.shape
    dev = logits.device
    feats = F.normalize(features.to(torch.float64), dim=1)
    logp = F.log_softmax(logits.to(torch.float64), dim=1)
    onehot = F.one_hot(noisy, k).to(torch.float64)
    selected = torch.zeros(n_total, dtype=torch.bool, device=dev)
    label = torch.zeros(n_total, dtype=torch.long, device=dev)
    conf = torch.zeros(n_total, dtype=torch.float64, device=dev)
    order = order.to(dev)
    full = n_total // chunk
    groups = [(s, min(s + chunks_per_solve, full), chunk) for s in range(0, full, chunks_per_solve)]
    if n_total % chunk:
        groups.append((full, full + 1, n_total - full * chunk))
    for first, last, size in groups:
        rows = order[first * chunk : first * chunk + (last - first) * size].view(last - first, size)
        f = feats[rows]
        sim = torch.bmm(f, f.transpose(1, 2))
        sim.diagonal(dim1=1, dim2=2).zero_()
        mass = chunk_mass(size, budget)
        coupling = csot_coupling(sim, logp[rows], onehot[rows], mass, **solver)
        sel, lab, cf = csot_select(coupling, mass)
        flat = rows.reshape(-1)
        selected[flat], label[flat], conf[flat] = sel.reshape(-1), lab.reshape(-1), cf.reshape(-1)
    return selected, label, conf


def split_masks(ot_label: Tensor, noisy: Tensor, selected: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(labelled, confident_unlabelled, unselected)`` (``get_masks``)."""
    equal = torch.eq(noisy, ot_label)
    return selected & equal, selected & ~equal, ~selected


# ---------------------------------------------------------------------------------- losses
def refined_targets(
    logits_w1: Tensor, logits_w2: Tensor, onehot: Tensor, conf: Tensor, temperature: float = 0.5
) -> Tensor:
    """``sharpen(c y + (1 - c) (softmax z_1 + softmax z_2) / 2, T)``, no gradient (the code's
    label refinement, from DivideMix Eq. 3-4, with the OT confidence ``c``)."""
    with torch.no_grad():
        c = conf.view(-1, 1).to(logits_w1.dtype)
        px = (torch.softmax(logits_w1, dim=1) + torch.softmax(logits_w2, dim=1)) / 2
        return sharpen(c * onehot + (1 - c) * px, temperature)


def mixup_loss(logits: Tensor, mixed_target: Tensor) -> tuple[Tensor, Tensor]:
    """``(soft cross-entropy, prior penalty)`` of the mixed rows (the code's
    ``mixmatch_loss``): ``-mean sum t log softmax`` and ``sum_k pi_k log(pi_k / mean p_k)``
    with ``pi = 1/K``."""
    loss = -torch.mean(torch.sum(F.log_softmax(logits, dim=1) * mixed_target, dim=1))
    return loss, uniform_prior_penalty(torch.softmax(logits, dim=1))


def simsiam_loss(z1: Tensor, z2: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """``-(cos(p1, sg z2) + cos(p2, sg z1)) / 2`` (SimSiam; the code's ``loss_rep_unlab``)."""
    cos1 = F.cosine_similarity(p1, z2.detach(), dim=1).mean()
    cos2 = F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    return -(cos1 + cos2) * 0.5


def fixmatch_loss(
    logits_w: Tensor, logits_s: Tensor, ot_label: Tensor, confident: Tensor, threshold: float = 0.95
) -> tuple[Tensor, Tensor]:
    """``(loss, mask)``: cross-entropy of the strong view to the OT label on rows where the
    weak view's probability *of the OT label* is ``>= threshold`` and the sample is
    confident-unlabelled, averaged over all rows (the code's ``L_fix_u``)."""
    probs = torch.softmax(logits_w.detach(), dim=1)
    picked = probs.gather(1, ot_label.view(-1, 1)).squeeze(1)
    mask = picked.ge(threshold) & confident
    ce = -F.log_softmax(logits_s, dim=1).gather(1, ot_label.view(-1, 1)).squeeze(1)
    return torch.mean(mask.to(ce.dtype) * ce), mask


# ---------------------------------------------------------------------------------- streams
def stream(indices: Tensor, per_step: int, steps: int, gen: torch.Generator) -> Tensor:
    """A cycled ``drop_last`` loader's sample sequence over ``steps`` steps: permutations of
    ``indices`` (drawn from ``gen``), each cut to ``(len // per_step) * per_step`` samples,
    concatenated until ``steps * per_step`` (the code's ``iter(loader)`` restarted in
    ``train``'s ``except`` branch)."""
    n = int(indices.numel())
    used = (n // per_step) * per_step
    need = steps * per_step
    out, have = [], 0
    while have < need:
        out.append(indices[torch.randperm(n, generator=gen)[:used]])
        have += used
    return torch.cat(out)[:need]


# ---------------------------------------------------------------------------------- network
class CSOTNetwork(nn.Module):
    """The code's ``Net``: backbone features -> projector ``Linear(D, D)`` (``encoder.head``)
    -> ``z``; classifier: the backbone's ``head`` on ``z`` (``cls``); SimSiam predictor
    ``D -> pred_dim (no bias) -> BN -> ReLU -> D``. ``forward(x)``: logits;
    ``forward(x, heads=True)``: ``(z, logits, predictor(z))``."""

    def __init__(self, model: nn.Module, pred_dim: int = 128) -> None:
        super().__init__()
        d = int(model.num_features)
        self.model = model
        self.projector = nn.Linear(d, d)
        self.predictor = nn.Sequential(
            nn.Linear(d, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, d),
        )

    def features(self, x: Tensor) -> Tensor:
        """``z``: the projected features (the OT's and SimSiam's)."""
        return self.projector(self.model.forward_features(x))

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        z = self.features(x)
        logits = self.model.head(z)
        if not heads:
            return logits
        return z, logits, self.predictor(z)


class _FeaturesAndLogits(nn.Module):
    """``cat(z, logits)`` of a :class:`CSOTNetwork`, for the engine's pass over the training
    set."""

    def __init__(self, net: CSOTNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        z = self.net.features(x)
        return torch.cat([z, self.net.model.head(z)], dim=1)


def _data_parallel(model: nn.Module) -> bool:
    """Whether ``model`` is the engine's DistributedDataParallel wrapper (several processes):
    then a step must give every parameter a gradient, so a step that leaves the SimSiam
    predictor unused (warm-up, no unlabelled rows) adds ``0 * sum(predictor output)``."""
    return isinstance(model, nn.parallel.DistributedDataParallel)


# ---------------------------------------------------------------------------------- method
class CSOT(Method):
    """CSOT with one network (see the module docstring).

    Args:
        batch_size: ``B``, samples per stream per step (the run's ``batch_size``; the code's
            128); the warm-up uses ``2 B``.
        warm_up: cross-entropy warm-up epochs (code: 10 CIFAR-10, 30 CIFAR-100).
        confidence_penalty: add the negative-entropy penalty in warm-up (code: asym noise).
        curriculum_epoch, begin_rate: the budget rises linearly from ``begin_rate`` at
            ``warm_up`` to 1 at ``curriculum_epoch`` (250, 0.3).
        reg_e, reg_feat, reg_lab: entropic, prediction-structure and label-structure weights
            (0.1, 1, 1).
        chunk: samples per OT problem (1024, the code's ``eval_train`` batch).
        chunks_per_solve: chunks solved together (memory: ``chunk^2`` float64 each).
        outer_iters, inner_iters, stop_thr: the GCG's 10 iterations, the scaling's 100, the
            1e-6 relative / absolute stopping threshold.
        max_line_search: cap of the Armijo cubic-interpolation loop (60, see the docstring).
        temperature: sharpening temperature (0.5; the code's argparse ``T`` is unused).
        alpha: MixUp Beta(alpha, alpha) (4).
        threshold: FixMatch confidence threshold (0.95).
        pred_dim: SimSiam predictor's hidden width (128).
        seed: seed of the OT chunks' shuffle (mixed with the epoch).
    """

    views = ("weak", "weak_2", "strong")

    def __init__(  # noqa: PLR0913
        self,
        batch_size: int = 128,
        warm_up: int = 10,
        confidence_penalty: bool = False,
        curriculum_epoch: int = 250,
        begin_rate: float = 0.3,
        reg_e: float = 0.1,
        reg_feat: float = 1.0,
        reg_lab: float = 1.0,
        chunk: int = 1024,
        chunks_per_solve: int = 16,
        outer_iters: int = 10,
        inner_iters: int = 100,
        stop_thr: float = 1e-6,
        max_line_search: int = 60,
        temperature: float = 0.5,
        alpha: float = 4.0,
        threshold: float = 0.95,
        pred_dim: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if int(batch_size) < 2 or int(warm_up) < 0 or int(curriculum_epoch) <= int(warm_up):
            raise UserError(
                f"method.batch_size={batch_size}, warm_up={warm_up}, curriculum_epoch="
                f"{curriculum_epoch}: need batch_size >= 2, warm_up >= 0 and curriculum_epoch > "
                "warm_up (the code: 128, 10, 250)"
            )
        if not 0.0 < float(begin_rate) <= 1.0 or int(chunk) < 2 or float(reg_e) <= 0:
            raise UserError(
                f"method.begin_rate={begin_rate} must be in (0, 1], chunk={chunk} >= 2 and "
                f"reg_e={reg_e} > 0 (the code: 0.3, 1024, 0.1)"
            )
        self.batch_size = int(batch_size)
        self.warm_up = int(warm_up)
        self.confidence_penalty = bool(confidence_penalty)
        self.curriculum_epoch = int(curriculum_epoch)
        self.begin_rate = float(begin_rate)
        self.chunk = int(chunk)
        self.chunks_per_solve = max(int(chunks_per_solve), 1)
        self.solver = {
            "reg_e": float(reg_e),
            "reg_feat": float(reg_feat),
            "reg_lab": float(reg_lab),
            "outer_iters": int(outer_iters),
            "inner_iters": int(inner_iters),
            "stop_thr": float(stop_thr),
            "stop_thr2": float(stop_thr),
            "max_line_search": int(max_line_search),
        }
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.pred_dim = int(pred_dim)
        self.seed = int(seed)
        self.noisy: Tensor
        self.conf: Tensor
        self.ot_label: Tensor
        self.labelled: Tensor
        self.confident: Tensor
        self.semi: Tensor
        self.budget: Tensor

    def network(self, model: nn.Module) -> nn.Module:
        return CSOTNetwork(model, self.pred_dim)

    def setup(self, ctx: MethodContext) -> None:
        """Per-sample buffers of the last division (checkpointed)."""
        super().setup(ctx)
        n, dev = ctx.num_samples, ctx.device
        self.register_buffer("noisy", ctx.noisy_labels.clone(), persistent=False)
        self.register_buffer("conf", torch.ones(n, device=dev))
        self.register_buffer("ot_label", ctx.noisy_labels.clone())
        self.register_buffer("labelled", torch.ones(n, dtype=torch.bool, device=dev))
        self.register_buffer("confident", torch.zeros(n, dtype=torch.bool, device=dev))
        self.register_buffer("semi", torch.zeros((), dtype=torch.bool, device=dev))
        self.register_buffer("budget", torch.zeros((), dtype=torch.float64, device=dev))

    # ------------------------------------------------------------------ the OT division
    def chunk_order(self, epoch: int, n: int) -> Tensor:
        """The epoch's shuffle of the training set into OT chunks (seeded by ``(seed,
        epoch)``; the code: ``eval_train`` loader with ``shuffle=True``)."""
        state = np.random.SeedSequence([self.seed, int(epoch), 23]).generate_state(2, np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
        return torch.randperm(n, generator=gen)

    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """CSOT on the whole training set (``CSOT_PL``) and the three-way split."""
        if epoch < self.warm_up:
            return
        out = evaluate_train(_FeaturesAndLogits(model))
        k = self.num_classes
        feats, logits = out[:, :-k], out[:, -k:]
        budget = curriculum_budget(epoch, self.warm_up, self.curriculum_epoch, self.begin_rate)
        order = self.chunk_order(epoch, out.shape[0])
        selected, label, conf = csot_assign(
            feats,
            logits,
            self.noisy,
            budget,
            order,
            chunk=self.chunk,
            chunks_per_solve=self.chunks_per_solve,
            **self.solver,
        )
        labelled, confident, unselected = split_masks(label, self.noisy, selected)
        self.conf.copy_(conf)
        self.ot_label.copy_(label)
        self.labelled.copy_(labelled)
        self.confident.copy_(confident)
        self.semi.logical_or_(confident.sum() > unselected.sum())
        self.budget.fill_(budget)

    def epoch_plan(self, epoch: int, seed: int) -> EpochPlan | None:
        """Warm-up: one shuffled pass in batches of ``2 B``. Later: the labelled and the
        unlabelled (confident-unlabelled + unselected) streams, ``B`` each per step, cycled,
        ``max(|L| // B, |U| // B)`` steps (the code's two ``drop_last`` loaders)."""
        gen = torch.Generator().manual_seed(int(seed))
        dev = self.labelled.device
        b = self.batch_size
        n = int(self.labelled.numel())
        if epoch < self.warm_up:
            steps = -(-n // (2 * b))
            return EpochPlan(steps, {"warmup": (torch.randperm(n, generator=gen).to(dev), 2 * b)})
        sets = {
            "labelled": torch.nonzero(self.labelled).squeeze(1).cpu(),  # one sync per epoch
            "unlabelled": torch.nonzero(~self.labelled).squeeze(1).cpu(),
        }
        per = {name: min(b, int(idx.numel())) for name, idx in sets.items()}
        per = {name: p for name, p in per.items() if p >= 2}
        if not per:  # fewer than 4 samples: nothing to split, the ordinary epoch
            return None
        steps = max(int(sets[name].numel()) // p for name, p in per.items())
        parts = {name: (stream(sets[name], p, steps, gen).to(dev), p) for name, p in per.items()}
        return EpochPlan(steps, parts)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        if epoch < self.warm_up:
            return {}
        return {
            "budget": self.budget.float(),
            "labelled": self.labelled.float().mean(),
            "confident_unlabelled": self.confident.float().mean(),
            "semi": self.semi.float(),
        }

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if epoch < self.warm_up:
            return self._warm_up(model, batch)
        return self._train(model, batch)

    def _warm_up(self, model: nn.Module, batch: Batch) -> StepOutput:
        if _data_parallel(model):  # every parameter must take part in DDP's backward
            _, logits, pred = model(batch.views["weak"], heads=True)
            loss = F.cross_entropy(logits, batch.target) + 0.0 * pred.sum()
        else:
            logits = model(batch.views["weak"])
            loss = F.cross_entropy(logits, batch.target)
        zero = torch.zeros((), device=logits.device)
        penalty = zero
        if self.confidence_penalty:
            probs = torch.softmax(logits, dim=1)
            penalty = torch.mean(torch.sum(probs.log() * probs, dim=1))
            loss = loss + penalty
        return StepOutput(loss=loss, logits=logits, extras={"penalty": penalty.detach()})

    def _rows(self, batch: Batch, name: str) -> slice:
        return batch.part(name) if any(k == name for k, _ in batch.parts) else slice(0, 0)

    def _train(self, model: nn.Module, batch: Batch) -> StepOutput:
        """The code's ``train`` step: labelled then unlabelled rows, six forward passes in
        the code's order (each its own batch-norm batch)."""
        weak, weak2, strong = batch.views["weak"], batch.views["weak_2"], batch.views["strong"]
        zero = torch.zeros((), device=weak.device)
        lab, unl = self._rows(batch, "labelled"), self._rows(batch, "unlabelled")
        k = self.num_classes
        loss = zero
        extras = {}
        logits_main = []
        if lab.stop > lab.start:
            _, out1, pred = model(weak[lab], heads=True)
            if unl.stop == unl.start and _data_parallel(model):
                loss = loss + 0.0 * pred.sum()  # no SimSiam rows: DDP needs the predictor used
            _, out2, _ = model(weak2[lab], heads=True)
            idx = batch.idx[lab]
            conf = self.conf[idx].view(-1, 1).float()
            onehot = F.one_hot(batch.target[lab], k).float()
            target = refined_targets(out1.float(), out2.float(), onehot, conf, self.temperature)
            inputs = torch.cat([weak[lab], weak2[lab]])
            targets = torch.cat([target, target])
            conc = torch.full((), self.alpha, device=weak.device)
            lam = torch.distributions.Beta(conc, conc, validate_args=False).sample()
            lam = torch.maximum(lam, 1 - lam)
            perm = torch.randperm(inputs.shape[0], device=weak.device)
            mixed = model(lam * inputs + (1 - lam) * inputs[perm]).float()
            lx, penalty = mixup_loss(mixed, lam * targets + (1 - lam) * targets[perm])
            out_s = model(strong[lab]).float()
            fix_target = conf * target + (1 - conf) * torch.softmax(out1.float(), dim=1)
            lfix_x = -torch.mean(torch.sum(F.log_softmax(out_s, dim=1) * fix_target, dim=1))
            loss = loss + lx + penalty + lfix_x
            extras.update(lx=lx.detach(), penalty=penalty.detach(), lfix_x=lfix_x.detach())
            logits_main.append(out1)
        if unl.stop > unl.start:
            z1, out_w, p1 = model(weak[unl], heads=True)
            z2, out_s, p2 = model(strong[unl], heads=True)
            sim = simsiam_loss(z1.float(), z2.float(), p1.float(), p2.float())
            idx = batch.idx[unl]
            lfix_u, mask = fixmatch_loss(
                out_w.float(),
                out_s.float(),
                self.ot_label[idx],
                self.confident[idx],
                self.threshold,
            )
            lfix_u = lfix_u * self.semi.float()  # the code: 0 until semi_flag
            loss = loss + lfix_u + sim
            extras.update(
                simsiam=sim.detach(), lfix_u=lfix_u.detach(), mask=mask.float().mean().detach()
            )
            logits_main.append(out_w)
        for key in ("lx", "penalty", "lfix_x", "simsiam", "lfix_u", "mask"):
            extras.setdefault(key, zero)
        return StepOutput(loss=loss, logits=torch.cat(logits_main), extras=extras)
