"""CSOT (baselines/csot.py) against POT and against the authors' code transcribed below.

The reference functions are transcribed from changwxx/CSOT-for-LNL (``plabel_allocator.py``,
``utils.py``) with only the device made a parameter (the code hard-codes ``cuda``) and the
loops of ``CSOT_PL`` / ``train`` reduced to the pieces under test. POT (``pot``, the ``dev``
extra) is the independent solver of the entropic partial OT problem.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from noisybench.baselines import CODE_DEFAULTS, csot

from noisybench.build import build
from noisybench.config import compose, instantiate, without_name
from noisybench.data.loader import plan_seed
from noisybench.engine import _EpochSums
from noisybench.errors import UserError
from noisybench.method import MethodContext

# the transcribed line search clips with torch.tensor(alpha) on a tensor, as the code does
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor")


# ------------------------------------------------------------------ transcription (reference)
def ref_entropic_cot_fast(a, b, M, reg, numItermax=1000):
    device = M.device
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    M = M.to(torch.float64)
    dim_a, dim_b = M.shape
    dx = torch.ones(dim_a, dtype=torch.float64).to(device)
    dy = torch.ones(dim_b, dtype=torch.float64).to(device)
    K = torch.exp(M / (-reg))
    Kp = torch.matmul(torch.diag(1 / a), K)
    Kq = torch.matmul(torch.diag(1 / b), K.T)
    cpt = 0
    u = dx
    v = dy
    while cpt < numItermax:
        temp = torch.div(dx, torch.matmul(Kp, v))
        u = torch.minimum(temp, dx)
        v = torch.div(dy, torch.matmul(Kq, u))
        cpt = cpt + 1
    Kprev = torch.matmul(torch.diag(u), K)
    Kprev = torch.matmul(Kprev, torch.diag(v))
    return Kprev


def ref_scalar_search_armijo(phi, phi0, derphi0, c1=1e-4, alpha0=1, amin=0):
    phi_a0 = phi(alpha0)
    if phi_a0 <= phi0 + c1 * alpha0 * derphi0:
        return alpha0, phi_a0
    alpha1 = -(derphi0) * alpha0**2 / 2.0 / (phi_a0 - phi0 - derphi0 * alpha0)
    phi_a1 = phi(alpha1)
    if phi_a1 <= phi0 + c1 * alpha1 * derphi0:
        return alpha1, phi_a1
    while alpha1 > amin:
        factor = alpha0**2 * alpha1**2 * (alpha1 - alpha0)
        a = alpha0**2 * (phi_a1 - phi0 - derphi0 * alpha1) - alpha1**2 * (
            phi_a0 - phi0 - derphi0 * alpha0
        )
        a = a / factor
        b = -(alpha0**3) * (phi_a1 - phi0 - derphi0 * alpha1) + alpha1**3 * (
            phi_a0 - phi0 - derphi0 * alpha0
        )
        b = b / factor
        alpha2 = (-b + torch.sqrt(abs(b**2 - 3 * a * derphi0))) / (3.0 * a)
        phi_a2 = phi(alpha2)
        if phi_a2 <= phi0 + c1 * alpha2 * derphi0:
            return alpha2, phi_a2
        if (alpha1 - alpha2) > alpha1 / 2.0 or (1 - alpha2 / alpha1) < 0.96:
            alpha2 = alpha1 / 2.0
        alpha0 = alpha1
        alpha1 = alpha2
        phi_a0 = phi_a1
        phi_a1 = phi_a2
    return None, phi_a1


def ref_line_search_armijo(
    f, xk, pk, gfk, old_fval, c1=1e-4, alpha0=0.99, alpha_min=None, alpha_max=None
):
    def phi(alpha1):
        return f(xk + alpha1 * pk)

    phi0 = phi(0.0) if old_fval is None else old_fval
    derphi0 = torch.sum(pk * gfk)
    alpha, phi1 = ref_scalar_search_armijo(phi, phi0, derphi0, c1=c1, alpha0=alpha0)
    if alpha is None:
        return 0.0, 0, phi0
    if alpha_min is not None or alpha_max is not None:
        alpha = torch.clip(torch.tensor(alpha), alpha_min, alpha_max)
    return float(alpha), 0, phi1


def ref_entropic_cot_gcg(
    a, b, M, reg1, reg2, f, df, numItermax=10, numInnerItermax=200, stopThr=1e-9, stopThr2=1e-9
):
    loop = 1
    G = torch.outer(a, b)

    def cost(G):
        return torch.sum(M * G) + reg1 * torch.sum(G * torch.log(G)) + reg2 * f(G)

    f_val = cost(G)
    it = 0
    while loop:
        it += 1
        old_fval = f_val
        Mi = M + reg2 * df(G)
        Gc = ref_entropic_cot_fast(a, b, Mi, reg1, numInnerItermax)
        if torch.any(torch.isnan(Gc)) or torch.any(torch.isinf(Gc)):
            break
        deltaG = Gc - G
        dcost = Mi + reg1 * (1 + torch.log(G))
        alpha, _fc, f_val = ref_line_search_armijo(
            cost, G, deltaG, dcost, f_val, alpha_min=0.0, alpha_max=1.0
        )
        G = G + alpha * deltaG
        if it >= numItermax:
            loop = 0
        abs_delta_fval = abs(f_val - old_fval)
        relative_delta_fval = abs_delta_fval / abs(f_val)
        if relative_delta_fval < stopThr or abs_delta_fval < stopThr2:
            loop = 0
    return G


def ref_omega(S, M, Q):
    temp = torch.mul(M, Q)
    temp1 = torch.matmul(temp, temp.t())
    temp2 = torch.mul(S, temp1)
    return torch.sum(temp2)


def ref_omega_df(S, M, Q):
    temp = torch.mul(M, Q)
    return 2 * torch.mul(torch.matmul(S, temp), M)


def ref_curriculum_structure_aware_pl(features, P, top_percent, L, reg_feat, reg_lab, reg_e):
    S = torch.matmul(features, features.t())
    mask = torch.eye(S.size(0), S.size(0)).bool()
    S.masked_fill_(mask, 0)
    S = S.to(torch.float64)

    def f(Q):
        return -(reg_feat * ref_omega(S, P, Q) + reg_lab * ref_omega(S, L, Q))

    def df(Q):
        return -(reg_feat * ref_omega_df(S, P, Q) + reg_lab * ref_omega_df(S, L, Q))

    a = torch.ones((P.shape[0],), dtype=torch.float64) / P.shape[0]
    top_percent = min(torch.sum(a).item(), top_percent)
    b = torch.ones((P.shape[1],), dtype=torch.float64) / P.shape[1] * top_percent
    coupling = ref_entropic_cot_gcg(
        a, b, -P, reg_e, 1.0, f, df, numItermax=10, numInnerItermax=100, stopThr=1e-6, stopThr2=1e-6
    )
    total = features.size(0)
    max_values, _ = torch.max(coupling, 1)
    topk_num = int(total * top_percent)
    _, topk_indices = torch.topk(max_values, topk_num)
    selected_mask = torch.zeros((total,), dtype=torch.bool)
    selected_mask[topk_indices] = True
    return coupling, selected_mask


def ref_csot_pl_chunk(feat, out, labels, budget, num_class, reg_e=0.1):
    """The body of ``CSOT_PL``'s loop for one eval batch (Pmode logP, sup_label None)."""
    L = torch.eye(num_class, dtype=torch.float64)[labels]
    P = F.log_softmax(out, dim=1)
    norm_feat = F.normalize(feat)
    couplings, selected_mask = ref_curriculum_structure_aware_pl(
        norm_feat, P, top_percent=budget, L=L, reg_feat=1.0, reg_lab=1.0, reg_e=reg_e
    )
    max_value, argmax_plabels = torch.max(couplings, axis=1)
    conf = max_value / (1 / couplings.size(0))
    conf = torch.clip(conf, min=0, max=1.0)
    return couplings, selected_mask, argmax_plabels, conf


def ref_curriculum_scheduler(t, T, begin=0, end=1, mode=None):
    pho = t / T
    ratio = pho if mode == "linear" else 1 - math.exp(-4 * pho)
    return begin + ratio * (end - begin), pho


def ref_budget(epoch, warm_up=10, curriculum_epoch=250):
    if epoch < curriculum_epoch:
        budget, _ = ref_curriculum_scheduler(
            epoch - warm_up, curriculum_epoch - warm_up, 0.3, 1, "linear"
        )
    else:
        budget = 1.0
    return budget


# ------------------------------------------------------------------ fixtures
def _problem(n: int, k: int, d: int = 16, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    clean = torch.randint(0, k, (n,), generator=g)
    feat = centres[clean] + torch.randn(n, d, generator=g, dtype=torch.float64)
    logits = scale * (feat[:, :k] + torch.randn(n, k, generator=g, dtype=torch.float64) / 3)
    noisy = torch.where(
        torch.rand(n, generator=g) < 0.4, torch.randint(0, k, (n,), generator=g), clean
    )
    return feat, logits, noisy


def assert_same_selection(ours: torch.Tensor, ref: torch.Tensor, coupling: torch.Tensor) -> None:
    """Equal selections, except among rows tied (to 1e-9 relative) at the cut: rows whose
    coupling saturates at ``a_i`` share one maximum, and which of them ``topk`` keeps is
    arbitrary in the code too."""
    assert int(ours.sum()) == int(ref.sum())
    top = coupling.max(dim=1).values
    cut = top[ref].min()
    tied = (top - cut).abs() <= 1e-9 * cut
    assert torch.equal(ours[~tied], ref[~tied])


# ------------------------------------------------------------------ inner solver
def test_inner_solver_matches_the_code_and_pot() -> None:
    """The batched scaling iterations vs ``entropic_COT_fast`` (100 iterations, the code's
    count) and vs POT's ``entropic_partial_wasserstein`` (Dykstra projections, another
    algorithm for the same problem) run to convergence."""
    ot = pytest.importorskip("ot")  # pot, the dev extra
    n, k, reg, mass = 60, 5, 0.1, 0.6
    g = torch.Generator().manual_seed(3)
    costs = -F.log_softmax(torch.randn(3, n, k, generator=g, dtype=torch.float64) * 2, dim=2)
    a = torch.full((3, n), 1.0 / n, dtype=torch.float64)
    b = torch.full((3, k), mass / k, dtype=torch.float64)
    ours = csot.entropic_partial_ot(a, b, costs, reg, 100)
    for j in range(3):
        ref = ref_entropic_cot_fast(a[j], b[j], costs[j], reg, 100)
        torch.testing.assert_close(ours[j], ref, rtol=1e-12, atol=1e-15)
    # to convergence: the same optimum as POT's
    ours = csot.entropic_partial_ot(a, b, costs, reg, 3000)
    worst = 0.0
    for j in range(3):
        pot = ot.partial.entropic_partial_wasserstein(
            a[j].numpy(),
            b[j].numpy(),
            costs[j].numpy(),
            reg,
            m=mass,
            numItermax=20000,
            stopThr=1e-15,
        )
        worst = max(worst, float(np.abs(ours[j].numpy() - pot).max() / pot.max()))
    assert worst < 1e-6, worst
    # constraints: columns exact, rows at most a
    torch.testing.assert_close(ours.sum(1), b, rtol=1e-10, atol=0)
    assert bool((ours.sum(2) <= a * (1 + 1e-9)).all())


# ------------------------------------------------------------------ whole solver
@pytest.mark.parametrize("budget", [0.3, 0.65, 1.0])
def test_coupling_matches_the_code(budget: float) -> None:
    """``csot_coupling`` (batched GCG) vs the transcribed ``curriculum_structure_aware_PL``
    per chunk: coupling, selection, OT label, confidence. The three chunks take different
    paths (logit scales 1, 0.5, 3: at budget 1 the first needs the cubic line search and ends
    with no step, the third stops on a non-finite direction at its second iteration, the
    second runs all 10 iterations)."""
    n, k = 96, 6
    chunks = [_problem(n, k, seed=0, scale=s) for s in (1.0, 0.5, 3.0)]
    feats = torch.stack([F.normalize(c[0]) for c in chunks])
    sim = torch.bmm(feats, feats.transpose(1, 2))
    sim.diagonal(dim1=1, dim2=2).zero_()
    logp = torch.stack([F.log_softmax(c[1], dim=1) for c in chunks])
    onehot = torch.stack([F.one_hot(c[2], k).double() for c in chunks])
    mass = csot.chunk_mass(n, budget)
    coupling = csot.csot_coupling(sim, logp, onehot, mass)
    selected, label, conf = csot.csot_select(coupling, mass)
    for j, (feat, logits, noisy) in enumerate(chunks):
        ref_c, ref_sel, ref_lab, ref_conf = ref_csot_pl_chunk(feat, logits, noisy, budget, k)
        torch.testing.assert_close(coupling[j], ref_c, rtol=1e-9, atol=1e-14)
        assert_same_selection(selected[j], ref_sel, ref_c)
        assert torch.equal(label[j], ref_lab)
        torch.testing.assert_close(conf[j], ref_conf, rtol=1e-9, atol=1e-12)


def test_assign_over_shuffled_chunks_matches_the_code() -> None:
    """``csot_assign`` on N = 300 in chunks of 128 (two full chunks solved together, the short
    last one alone) vs the transcription chunk by chunk in the same order."""
    n, k, chunk, budget = 300, 5, 128, 0.5
    feat, logits, noisy = _problem(n, k, seed=7)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    selected, label, conf = csot.csot_assign(feat, logits, noisy, budget, order, chunk=chunk)
    for start in range(0, n, chunk):
        rows = order[start : start + chunk]
        ref_c, ref_sel, ref_lab, ref_conf = ref_csot_pl_chunk(
            feat[rows], logits[rows], noisy[rows], budget, k
        )
        assert_same_selection(selected[rows], ref_sel, ref_c)
        assert torch.equal(label[rows], ref_lab)
        torch.testing.assert_close(conf[rows], ref_conf, rtol=1e-9, atol=1e-12)
    labelled, conf_u, unselected = csot.split_masks(label, noisy, selected)
    assert int(selected.sum()) == 2 * int(128 * 0.5) + int(44 * 0.5)
    assert torch.equal(labelled | conf_u, selected) and torch.equal(unselected, ~selected)
    assert not bool((labelled & conf_u).any())


def test_chunk_mass_reproduces_the_float64_sum() -> None:
    """The code's ``min(sum(a), budget)``: 1 for a 1024 chunk, just below 1 for some sizes."""
    for size in (1024, 848, 44, 128):
        a = torch.ones((size,), dtype=torch.float64) / size
        assert csot.chunk_mass(size, 1.0) == min(torch.sum(a).item(), 1.0)
        assert csot.chunk_mass(size, 0.4) == 0.4


# ------------------------------------------------------------------ curriculum and split
@pytest.mark.parametrize("warm_up", [10, 30])
def test_curriculum_budget_matches_the_code(warm_up: int) -> None:
    for epoch in range(warm_up, 451):
        assert abs(csot.curriculum_budget(epoch, warm_up) - ref_budget(epoch, warm_up)) < 1e-15
    assert csot.curriculum_budget(warm_up, warm_up) == pytest.approx(0.3)
    assert csot.curriculum_budget(250, warm_up) == 1.0


def ref_get_masks(argmax_plabels, noisy_labels, selected_mask):
    equal_label_mask = torch.eq(noisy_labels, argmax_plabels)
    conf_l_mask = torch.logical_and(selected_mask, equal_label_mask)
    conf_u_mask = torch.logical_and(selected_mask, ~equal_label_mask)
    lowconf_u_mask = ~selected_mask
    return conf_l_mask, conf_u_mask, lowconf_u_mask


def test_split_matches_get_masks() -> None:
    g = torch.Generator().manual_seed(0)
    lab, noisy = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    sel = torch.rand(200, generator=g) < 0.5
    for ours, ref in zip(
        csot.split_masks(lab, noisy, sel), ref_get_masks(lab, noisy, sel), strict=True
    ):
        assert torch.equal(ours, ref)


# ------------------------------------------------------------------ losses (the code's train)
def _logits(seed: int, rows: int = 32, k: int = 10) -> torch.Tensor:
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)) * 3


def test_refined_targets_and_strong_view_target_match_the_code() -> None:
    out1, out2 = _logits(1), _logits(2)
    labels = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(3))
    conf = torch.rand(32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # the code
    target_x = torch.eye(10, dtype=torch.float64)[labels]
    conf_x = conf.view(-1, 1).type(torch.FloatTensor)
    px = (torch.softmax(out1, dim=1) + torch.softmax(out2, dim=1)) / 2
    px = conf_x * target_x + (1 - conf_x) * px
    ptx = px ** (1 / 0.5)
    ref = ptx / ptx.sum(dim=1, keepdim=True)
    ours = csot.refined_targets(out1, out2, F.one_hot(labels, 10).float(), conf.float())
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_mixup_loss_and_prior_penalty_match_the_code() -> None:
    logits = _logits(5, rows=64)
    target = torch.softmax(_logits(6, rows=64), dim=1)
    ref_loss = -torch.mean(torch.sum(F.log_softmax(logits, dim=1) * target, dim=1))
    prior = torch.ones(10) / 10
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    ref_pen = torch.sum(prior * torch.log(prior / pred_mean))
    loss, pen = csot.mixup_loss(logits, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pen, ref_pen, rtol=1e-6, atol=1e-7)


def test_simsiam_loss_matches_the_code() -> None:
    z1, z2, p1, p2 = (_logits(s, k=24) for s in range(10, 14))
    criterion = torch.nn.CosineSimilarity(dim=1)
    ref = -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5
    torch.testing.assert_close(csot.simsiam_loss(z1, z2, p1, p2), ref, rtol=1e-6, atol=1e-7)


def test_fixmatch_loss_matches_the_code() -> None:
    out_uw, out_us = _logits(20) * 3, _logits(21)
    g = torch.Generator().manual_seed(22)
    u_plabels = torch.where(
        torch.rand(32, generator=g) < 0.7,
        out_uw.argmax(1),
        torch.randint(0, 10, (32,), generator=g),
    )
    u_conf_mask = torch.rand(32, generator=g) < 0.6
    pu_w = torch.softmax(out_uw, dim=1)
    max_probs = pu_w[torch.ones(32, dtype=torch.bool), u_plabels]
    mask = max_probs.ge(0.95) & u_conf_mask
    targets_u = torch.eye(10, dtype=torch.float64)[u_plabels]
    ref = -torch.mean(mask.float() * torch.sum(F.log_softmax(out_us, dim=1) * targets_u, dim=1))
    loss, ours_mask = csot.fixmatch_loss(out_uw, out_us, u_plabels, u_conf_mask, 0.95)
    assert 0 < int(mask.sum()) < 32 and torch.equal(ours_mask, mask)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ one whole step
class TinyBackbone(torch.nn.Module):
    """A backbone with the noisybench model interface and batch norm (so the order and the
    grouping of the forward passes matter)."""

    def __init__(self, d_in: int = 12, d: int = 16, k: int = 5) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(d_in, d), torch.nn.BatchNorm1d(d), torch.nn.ReLU()
        )
        self.num_features = d
        self.head = torch.nn.Linear(d, k)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def ref_ssl_forward(net: csot.CSOTNetwork, x0: torch.Tensor, x1: torch.Tensor):
    """``Net.forward(x, ssl=True)``: encoder on both views, classifier, predictor."""
    z1 = net.features(x0)
    z2 = net.features(x1)
    out1 = net.model.head(z1)
    out2 = net.model.head(z2)
    p1 = net.predictor(z1)
    p2 = net.predictor(z2)
    return z1, z2, out1, out2, p1, p2


def ref_train_step(
    net,
    xw,
    xw2,
    xs,
    labels_x,
    conf_x,
    uw,
    us,
    u_plabels,
    u_conf_mask,
    semi_flag,
    num_class,
    lam,
    perm,
):
    """The body of the code's ``train`` loop for one labelled and one unlabelled batch
    (``np.random.beta`` / ``torch.randperm`` replaced by the given ``lam`` and ``perm``)."""
    temp = 0.5
    _, _, out1, out2, _, _ = ref_ssl_forward(net, xw, xw2)
    target_x = torch.eye(num_class, dtype=torch.float64)[labels_x]
    conf_x = conf_x.view(-1, 1).type(torch.FloatTensor)
    with torch.no_grad():
        px = (torch.softmax(out1, dim=1) + torch.softmax(out2, dim=1)) / 2
        px = conf_x * target_x + (1 - conf_x) * px
        ptx = px ** (1 / temp)
        target_x = ptx / ptx.sum(dim=1, keepdim=True)
        target_x = target_x.detach()
    mixed_inputs = torch.cat([xw, xw2], dim=0)
    mixed_targets = torch.cat([target_x, target_x], dim=0)
    l = max(lam, 1 - lam)  # noqa: E741
    mixed_input = l * mixed_inputs + (1 - l) * mixed_inputs[perm]
    mixed_target = l * mixed_targets + (1 - l) * mixed_targets[perm]
    mixed_logits = net(mixed_input)
    Lx = -torch.mean(torch.sum(F.log_softmax(mixed_logits, dim=1) * mixed_target, dim=1))
    prior = torch.ones(num_class) / num_class
    pred_mean = torch.softmax(mixed_logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    out_xs = net(xs)
    px_w = torch.softmax(out1, dim=1)
    target_x = conf_x * target_x + (1 - conf_x) * px_w
    L_fix_x = -torch.mean(torch.sum(F.log_softmax(out_xs, dim=1) * target_x, dim=1))
    z1, z2, out_uw, out_us, p1, p2 = ref_ssl_forward(net, uw, us)
    criterion = torch.nn.CosineSimilarity(dim=1)
    loss_rep_unlab = -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5
    if semi_flag:
        pu_w = torch.softmax(out_uw, dim=1)
        max_probs = pu_w[torch.ones((pu_w.size(0),), dtype=torch.bool), u_plabels]
        mask = max_probs.ge(0.95) & u_conf_mask
        targets_u = torch.eye(num_class, dtype=torch.float64)[u_plabels]
        L_fix_u = -torch.mean(
            mask.float() * torch.sum(F.log_softmax(out_us, dim=1) * targets_u, dim=1)
        )
    else:
        L_fix_u = torch.tensor([0])
    return Lx + penalty + L_fix_x + L_fix_u + loss_rep_unlab


@pytest.mark.parametrize("semi", [False, True])
def test_a_whole_training_step_matches_the_code(semi: bool) -> None:
    """``CSOT.training_step`` on a planned batch (8 labelled + 8 unlabelled rows) vs the
    transcribed ``train`` body on a copy of the same network and the same MixUp draw: the
    loss, every gradient and the batch-norm running statistics after the step."""
    from noisybench.method import Batch

    k, n = 5, 40
    torch.manual_seed(0)
    net = csot.CSOTNetwork(TinyBackbone(k=k), pred_dim=8)
    with torch.no_grad():
        net.model.head.weight.mul_(40.0)  # confident enough for some p >= 0.95
    ref_net = copy.deepcopy(net)
    m = csot.CSOT(batch_size=8, warm_up=0)
    noisy = torch.arange(n) % k
    m.setup(MethodContext(n, k, noisy, 5, 5, torch.device("cpu")))
    g = torch.Generator().manual_seed(1)
    m.conf.copy_(torch.rand(n, generator=g))
    logits_scale = torch.randn(n, k, generator=g)
    m.ot_label.copy_(logits_scale.argmax(1))
    m.confident.copy_(torch.rand(n, generator=g) < 0.7)
    m.semi.fill_(semi)
    idx = torch.cat([torch.arange(0, 8), torch.arange(20, 28)])
    views = {name: torch.randn(16, 12, generator=g) * 3 for name in ("weak", "weak_2", "strong")}
    batch = Batch(idx, noisy[idx], views, parts=(("labelled", 8), ("unlabelled", 8)))
    with torch.no_grad():  # OT labels = the weak view's argmax, so the mask can pass
        m.ot_label[idx[8:]] = copy.deepcopy(net)(views["weak"][8:]).argmax(1)
    net.train(), ref_net.train()
    torch.manual_seed(7)
    out = m.training_step(net, batch, 3)
    out.loss.backward()
    torch.manual_seed(7)
    lam = torch.distributions.Beta(
        torch.tensor(4.0), torch.tensor(4.0), validate_args=False
    ).sample()
    perm = torch.randperm(16)
    lab, unl = slice(0, 8), slice(8, 16)
    ref = ref_train_step(
        ref_net,
        views["weak"][lab],
        views["weak_2"][lab],
        views["strong"][lab],
        noisy[idx[lab]],
        m.conf[idx[lab]].double(),
        views["weak"][unl],
        views["strong"][unl],
        m.ot_label[idx[unl]],
        m.confident[idx[unl]],
        semi,
        k,
        float(lam),
        perm,
    )
    ref.sum().backward()
    if semi:
        assert 0.0 < float(out.extras["mask"]) < 1.0  # FixMatch rows on and off
        assert float(out.extras["lfix_u"]) > 0
    torch.testing.assert_close(out.loss.double(), ref.sum().double(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), c in zip(net.named_buffers(), ref_net.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("penalty", [False, True])
def test_warm_up_step_matches_the_code(penalty: bool) -> None:
    """``warmup``: cross-entropy of the weak view, plus ``NegEntropy`` (``mean sum p log p``)
    for asymmetric noise."""
    from noisybench.method import Batch

    torch.manual_seed(0)
    net = csot.CSOTNetwork(TinyBackbone(), pred_dim=8)
    m = csot.CSOT(batch_size=8, warm_up=2, confidence_penalty=penalty)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 5
    batch = Batch(torch.arange(16), y, {"weak": x, "weak_2": x, "strong": x})
    ref_net = copy.deepcopy(net)
    out = m.training_step(net, batch, 1)
    ref_out = ref_net(x)
    ref = torch.nn.CrossEntropyLoss()(ref_out, y)
    if penalty:
        probs = F.softmax(ref_out, dim=1)
        ref = ref + torch.mean(torch.sum(probs.log() * probs, dim=1))
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ streams and the plan
def test_stream_is_a_cycled_drop_last_loader() -> None:
    """Each restart is a fresh permutation cut to whole batches (10 samples, B = 4: 8 of each
    permutation), as ``iter(DataLoader(..., drop_last=True))`` restarted in ``train``."""
    idx = torch.arange(100, 110)
    gen = torch.Generator().manual_seed(5)
    flat = csot.stream(idx, 4, 5, gen)
    assert flat.shape == (20,)
    gen = torch.Generator().manual_seed(5)
    perms = [idx[torch.randperm(10, generator=gen)[:8]] for _ in range(3)]
    assert torch.equal(flat, torch.cat(perms)[:20])
    for cycle in (flat[:8], flat[8:16]):
        assert len(set(cycle.tolist())) == 8  # no repeat within one pass


def _method(n: int = 300, k: int = 4, **kwargs) -> csot.CSOT:

    m = csot.CSOT(batch_size=16, warm_up=1, **kwargs)
    noisy = torch.arange(n) % k
    m.setup(MethodContext(n, k, noisy, 5, 10, torch.device("cpu")))
    return m


def test_epoch_plan_lays_out_warm_up_and_the_two_streams() -> None:
    m = _method()
    warm = m.epoch_plan(0, 11)
    ((flat, per),) = warm.parts.values()
    assert (
        per == 32
        and warm.steps == math.ceil(300 / 32)
        and sorted(flat.tolist()) == list(range(300))
    )
    m.labelled.copy_(torch.arange(300) < 70)  # |L| = 70, |U| = 230, B = 16
    plan = m.epoch_plan(3, 11)
    assert plan.steps == max(70 // 16, 230 // 16) == 14
    lab, per_l = plan.parts["labelled"]
    unl, per_u = plan.parts["unlabelled"]
    assert per_l == per_u == 16 and lab.shape == unl.shape == (14 * 16,)
    assert bool((lab < 70).all()) and bool((unl >= 70).all())
    again = m.epoch_plan(3, 11)  # a pure function of the buffers and the seed (resume)
    assert torch.equal(again.parts["labelled"][0], lab) and torch.equal(
        again.parts["unlabelled"][0], unl
    )
    m.labelled.copy_(torch.arange(300) < 5)  # fewer than B: drawn whole each step
    plan = m.epoch_plan(3, 11)
    assert plan.parts["labelled"][1] == 5 and plan.steps == 295 // 16


def test_on_epoch_start_divides_as_the_code_and_keeps_the_flag() -> None:
    """The division stored by ``on_epoch_start`` equals the transcription's on the same
    chunks (the method's own shuffle), and FixMatch's flag, once set, stays set."""
    n, k = 300, 4
    feat, logits, noisy = _problem(n, k, d=12, seed=4, scale=2.0)
    m = _method(n, k, chunk=128)
    m.noisy.copy_(noisy)
    out = torch.cat([feat, logits], dim=1).float()
    m.on_epoch_start(None, 5, lambda module: out)
    order = m.chunk_order(5, n)
    budget = ref_budget(5, warm_up=1)
    for start in range(0, n, 128):
        rows = order[start : start + 128]
        _, ref_sel, ref_lab, ref_conf = ref_csot_pl_chunk(
            feat[rows].float(), logits[rows].float().double(), noisy[rows], budget, k
        )
        l_ref, u_ref, _ = ref_get_masks(ref_lab, noisy[rows], ref_sel)
        assert torch.equal(m.ot_label[rows], ref_lab)
        torch.testing.assert_close(m.conf[rows], ref_conf.float(), rtol=1e-5, atol=1e-6)
        tied = ~torch.eq(m.labelled[rows] | m.confident[rows], ref_sel)
        assert int(tied.sum()) <= 2  # only saturated rows tied at the cut may differ
        assert torch.equal(m.labelled[rows][~tied], l_ref[~tied])
        assert torch.equal(m.confident[rows][~tied], u_ref[~tied])
    m.semi.fill_(True)
    m.on_epoch_start(None, 6, lambda module: out)
    assert bool(m.semi)


# ------------------------------------------------------------------ through the engine
def _digits(*extra: str):

    return build(
        compose(
            [
                "experiment=quickstart",
                "method=csot",
                "method.warm_up=1",
                "method.confidence_penalty=false",
                "epochs=3",
                "batch_size=64",
                "model=small_mlp",
                "progress=false",
                "logger=[]",
                "device=cpu",
                *extra,
            ]
        )
    )


@pytest.fixture
def _torch_globals(restore_torch_globals: None) -> None:
    """build() sets torch's thread count and determinism (conftest)."""


@pytest.mark.slow  # an end-to-end run through the engine
@pytest.mark.usefixtures("_torch_globals")
def test_digits_run_trains_its_network_and_heads() -> None:
    exp = _digits()
    assert isinstance(exp.model, csot.CSOTNetwork)
    before = exp.model.predictor[0].weight.detach().clone()
    records = exp.trainer().fit()
    assert not torch.equal(exp.model.predictor[0].weight, before)  # SimSiam head trained
    assert records[-1]["test/acc"] > 0.5  # 10 classes, sym 50 %: chance is 0.1
    assert records[-1]["train/lx"] > 0 and records[-1]["train/simsiam"] < 0
    assert 0 < float(exp.method.labelled.float().mean()) < 1


@pytest.mark.slow  # an end-to-end run through the engine
@pytest.mark.usefixtures("_torch_globals")
def test_digits_run_resumes_mid_epoch_exactly() -> None:
    """Epoch 1 (after warm-up: the OT division, the two streams, MixUp's draws) trained whole
    vs stopped after 2 steps, checkpointed, the division clobbered, restored and finished."""

    exp = _digits("epochs=2")
    trainer = exp.trainer()
    trainer.train_epoch(0)
    start = copy.deepcopy(trainer.state_dict(1))
    trainer.train_epoch(1)
    whole = {k: v.clone() for k, v in exp.model.state_dict().items()}
    division = exp.method.labelled.clone()
    trainer.load_state_dict(start)
    exp.method.on_epoch_start(exp.model, 1, trainer.evaluate_train)
    assert torch.equal(exp.method.labelled, division)
    plan = exp.method.epoch_plan(1, plan_seed(exp.source.seed, 1))
    assert plan.steps > 2
    sums = _EpochSums.zeros(exp.device)
    trainer.epoch_steps = plan.steps
    trainer.model.train()
    batches = iter(exp.source.epoch(1, 0, plan))
    for step in range(2):
        trainer.train_step(next(batches), 1, step, sums)
    state = copy.deepcopy(trainer.state_dict(1, 2, sums))
    exp.method.labelled.zero_()  # the checkpoint must carry the division
    exp.method.conf.zero_()
    _, _, restored = trainer.load_state_dict(state)
    trainer.train_epoch(1, 2, restored)
    for key, value in exp.model.state_dict().items():
        assert torch.equal(value, whole[key]), key


# ------------------------------------------------------------------ presets
@pytest.mark.parametrize(
    ("dataset", "noise", "expected"),
    [  # main_cifar.py: warm_up = 10 (cifar10) / 30 (cifar100); NegEntropy iff noise_mode asym
        ("cifar10", "sym20", (10, False)),
        ("cifar10", "sym80", (10, False)),
        ("cifar10", "asym40", (10, True)),
        ("cifar100", "sym50", (30, False)),
        ("cifar100", "asym40_c100pair", (30, True)),
    ],
)
def test_presets_follow_the_code(dataset: str, noise: str, expected: tuple[int, bool]) -> None:

    cfg = compose(["method=csot", f"dataset={dataset}", f"noise={noise}"]).method
    m = instantiate(without_name(cfg), "method")
    assert (m.warm_up, m.confidence_penalty) == expected
    assert (m.batch_size, m.chunk, m.curriculum_epoch, m.begin_rate) == (128, 1024, 250, 0.3)


def test_digits_without_values_is_refused_and_code_defaults_run() -> None:

    with pytest.raises(UserError) as err:
        instantiate(
            without_name(compose(["method=csot", "experiment=quickstart"]).method), "method"
        )
    assert "\n" not in str(err.value) and "method.warm_up=" in str(err.value)
    cfg = compose(["method=csot", "experiment=quickstart", *CODE_DEFAULTS["csot"]]).method
    assert instantiate(without_name(cfg), "method").warm_up == 10


@pytest.mark.parametrize(
    "bad",
    ["method.batch_size=1", "method.curriculum_epoch=5", "method.begin_rate=0", "method.reg_e=0"],
)
def test_bad_settings_are_refused_in_one_line(bad: str) -> None:

    cfg = compose(["method=csot", "experiment=quickstart", *CODE_DEFAULTS["csot"], bad]).method
    with pytest.raises(UserError) as err:
        instantiate(without_name(cfg), "method")
    assert "\n" not in str(err.value)


@pytest.mark.usefixtures("_torch_globals")
def test_after_the_division_every_parameter_learns_and_the_step_reads_nothing_back() -> None:
    """A step of the semi-supervised stage (after warm-up and the first OT division): every
    parameter, the SimSiam predictor and projector included, gets a non-zero gradient; and the
    step path reads nothing back from the device (the engine's host-sync counter)."""
    from test_engine_host_sync import SyncCounter

    exp = _digits("epochs=2")
    trainer = exp.trainer()
    trainer.train_epoch(0)
    exp.method.on_epoch_start(exp.model, 1, trainer.evaluate_train)
    plan = exp.method.epoch_plan(1, plan_seed(exp.source.seed, 1))
    assert set(plan.parts) == {"labelled", "unlabelled"}
    batches = iter(exp.source.epoch(1, 0, plan))
    exp.model.train()
    batch = next(batches)
    out = exp.method.training_step(exp.model, batch, 1)
    exp.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    for name, param in exp.model.named_parameters():
        assert param.grad is not None and bool((param.grad != 0).any()), name
    assert out.logits.shape == (batch.size, 10)
    sums = _EpochSums.zeros(exp.device)
    trainer.epoch_steps = plan.steps
    trainer.train_step(next(batches), 1, 1, sums)  # not counted: lazy first-step state
    counter = SyncCounter()
    counter.host_tensors = {  # the optimizer's step counters live on the host (no sync)
        id(state["step"])
        for state in exp.optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor) and state["step"].dim() == 0
    }
    with counter.patched():
        for step in range(2, 5):
            batch = next(batches)
            with counter.counting():
                trainer.train_step(batch, 1, step, sums)
    assert sum(counter.counts.values()) == 0, dict(counter.counts)


# ------------------------------------------------------------------ two processes
@pytest.mark.cli
@pytest.mark.slow
def test_two_processes_divide_as_one(tmp_path) -> None:
    """Two gloo processes on the CPU (``tests/_ddp_worker.py``): both hold the same division
    and the same network bit for bit (the OT pass runs on the gathered matrix on every
    process), and the division made after the warm-up equals the single-process run's. The
    semi-supervised epoch itself is not compared: the SimSiam predictor's batch norm sees
    each process's half batch (SyncBatchNorm has no CPU kernel)."""
    from test_distributed import _torchrun

    root = __import__("pathlib").Path(__file__).resolve().parent
    spec = (
        "experiment=quickstart model=small_mlp dataset.augment.crop_padding=0 progress=false "
        "logger=[] method=csot method.warm_up=1 method.confidence_penalty=false batch_size=64 "
        "epochs=2"
    )
    done = _torchrun([str(root / "_ddp_worker.py"), str(tmp_path), spec], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0 = torch.load(tmp_path / "0.rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "0.rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    for key in r0["method"]:
        assert torch.equal(r0["method"][key], r1["method"][key]), key
    for key in r0["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    exp = build(compose(spec.split()))
    exp.trainer().fit()
    one = exp.method.state_dict()
    for key in ("labelled", "confident", "ot_label", "semi", "budget"):
        assert torch.equal(one[key], r0["method"][key]), key
    torch.testing.assert_close(one["conf"], r0["method"]["conf"], rtol=1e-5, atol=1e-6)


def test_network_is_the_codes_net_without_its_unused_parts() -> None:
    """``PreResNet.Net`` on DivideMix's PreAct ResNet-18: the encoder's convolutions, its
    ``head`` Linear(512, 512) (our projector: 512 * 512 + 512 = 262,656), ``cls``
    Linear(512, 10) (the backbone's own head) and the predictor (512 * 128 without bias +
    BN 2 * 128 + 128 * 512 + 512 = 131,840); the code's never-trained ``encoder.linear`` and
    ``conhead`` are left out. Logits from ``forward``, (z, logits, p) with ``heads=True``."""
    from noisybench.models.preact_resnet import preact_resnet18_dividemix

    torch.manual_seed(0)
    backbone = preact_resnet18_dividemix(num_classes=10)
    bare = sum(p.numel() for p in backbone.parameters())
    net = csot.CSOTNetwork(backbone)
    assert sum(p.numel() for p in net.parameters()) == bare + 262_656 + 131_840
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    z, logits, pred = net(x, heads=True)
    assert z.shape == pred.shape == (2, 512) and logits.shape == (2, 10)
    assert torch.equal(net(x), logits)
