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
  from the engine's per-epoch seed (exact resume).
* A labelled or unlabelled set with fewer than ``B`` samples is drawn whole each step (the code
  crashes: an empty ``drop_last`` loader); one with fewer than 2 samples is left out (batch
  norm needs 2).
* The code's cosine schedule starts one epoch late (created after epoch 0); the engine's
  cosine decays from epoch 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
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
        px = c * onehot + (1 - c) * px
        pt = px ** (1 / temperature)
        return pt / pt.sum(dim=1, keepdim=True)


def mixup_loss(logits: Tensor, mixed_target: Tensor) -> tuple[Tensor, Tensor]:
    """``(soft cross-entropy, prior penalty)`` of the mixed rows (the code's
    ``mixmatch_loss``): ``-mean sum t log softmax`` and ``sum_k pi_k log(pi_k / mean p_k)``
    with ``pi = 1/K``."""
    loss = -torch.mean(torch.sum(F.log_softmax(logits, dim=1) * mixed_target, dim=1))
    k = logits.shape[1]
    prior = torch.full((k,), 1.0 / k, device=logits.device, dtype=logits.dtype)
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    return loss, torch.sum(prior * torch.log(prior / pred_mean))


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
