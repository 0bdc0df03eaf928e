"""OT-Filter: sample selection by optimal transport, then MixMatch.

Reference: Feng, Ren & Xie, "OT-Filter: An Optimal Transport Filter for Learning with Noisy
Labels", CVPR 2023, pp. 16164-16174; authors' code: github.com/ryl0427/Code-for-OT-Filter
(``Train_CIFAR.py``: ``OT_Filter``, ``MixMatch``, ``SemiLoss``, ``train_CE``; ``opt.py``:
``k_barycenter``, ``label_reg``, ``label_propagation_analysis``; ``model.py``: ``ResNet``).

One network whose head is ``512 -> 128 -> K`` (two linear layers, no non-linearity between
them, the code's ``linear1`` / ``linear2``); the 128-d output of the first layer is the
feature the transport is computed on (:class:`OTFilterNet`, returned by :meth:`OTFilter.network`).

1. Warm-up (epochs ``< warm_up``; the code: 10 CIFAR-10, 30 CIFAR-100): cross-entropy on the
   noisy labels, the ordinary epoch over all N samples (weak view).
2. Filter (every later epoch, before its first step, :meth:`OTFilter.on_epoch_start`):
   features ``f_i`` (128-d) of the whole training set; class barycenters ``c_k`` (one per
   class, the code's ``barycenter_number=1``); cost ``M_ki = ||c_k - f_i||_2``; the
   label-regularised Sinkhorn :func:`label_regularised_sinkhorn` (``a = 1/K``, ``b = 1/N``,
   entropic weight ``lambd = 10``, five majorisation rounds with the group penalty
   ``p (sum_group T + eps)^(p-1)``, ``p = 0.5``, ``eps = 1e-6``) gives a plan ``T``; the OT
   label of sample ``i`` is ``argmax_k T_ki``. Samples whose OT label equals their given label
   define the *clean* barycenters (class means of those samples), a second transport from the
   clean barycenters to all samples gives the final OT labels, and samples whose final OT
   label equals the given label are labelled, the others unlabelled.
3. MixMatch epoch (:meth:`OTFilter.epoch_plan`): ``|L| // B`` steps; each step takes B
   labelled samples (one shuffled pass over the labelled set, the last partial batch dropped)
   and B unlabelled samples (an iterator over the shuffled unlabelled set, last partial batch
   dropped, restarted when exhausted), as the code's two loaders (``drop_last=True``).
   Labelled targets: one-hot given labels, two strong views (AutoAugment); unlabelled targets:
   the sharpened (T = 0.5) mean softmax of two weak views (train mode, no gradient), two
   strong views as inputs. All ``4B`` rows are mixed with one ``lambda ~ Beta(4, 4)``,
   ``lambda = max(lambda, 1 - lambda)``, and one random permutation; loss
   ``L_x + lambda_u L_u`` with ``L_x`` the soft cross-entropy of the ``2B`` labelled rows and
   ``L_u`` the mean squared error of softmax vs target over the ``2B`` unlabelled rows and the
   K classes (``lambda_u = 25``, no ramp-up: the code's ``rampup_length`` is 0; no prior
   penalty and no interleaving, neither is in the code's ``MixMatch``).

Optimal transport here: :func:`sinkhorn` is POT's ``ot.sinkhorn`` (``sinkhorn_knopp``, the
function the code calls with ``numItermax=1000, stopThr=1e-9``) written in torch: the same
updates and the same stopping rule (the marginal violation is checked after iteration 1, 11,
21, ...), batched over leading dimensions, on the training device, float64 (the code runs
NumPy's float64; the group penalty reaches ``0.5 / sqrt(1e-6) = 500``, so ``exp(-C / 10)``
spans ``e^-50`` and more). The only host synchronisation is one flag read per check (every 10
iterations). POT is not a runtime dependency: the code uses two of its functions (plain
Sinkhorn and, through ``label_reg``, a five-round majorisation loop around it), both of which
are a few lines of torch; depending on POT would move the ``K x N`` problem to NumPy on the
host every epoch (the code's cost) and add a package with compiled extensions for no gain.
POT is the tests' second implementation (``ot.sinkhorn``, ``ot.da.sinkhorn_lpl1_mm``).

Deviations from the code (each kept on purpose):

* Barycenters are the exact class means. The code's ``k_barycenter`` with one support point
  starts from a random sample ``x_r`` of the class and iterates ``H <- H/2 + mean/2`` (the
  transport from one point is ``b`` itself) until a step is ``<= 0.01``, so its result is
  ``mean + 2^-n (x_r - mean)``, within Euclidean distance 0.01 of the mean; the mean is that
  iteration's fixed point, and needs no random draw. Only ``barycenter_number = 1`` (the
  code's default and only used value) is implemented.
* A class with no sample (the first round: no sample carries the label; the second round:
  none of its samples kept its label) makes the code fail (``random.randint(0, -1)``); here
  its first-round barycenter is the mean of all features, its second-round barycenter the
  first-round one.
* Features come from the plain (un-augmented) view in eval mode (``evaluate_train``); the code
  runs its training loader (random crop + flip) in eval mode. The plain view makes the filter
  deterministic, hence identical after a resume and on every process.
* The code's two loaders become one :class:`noisybench.method.EpochPlan` with the same
  sequence structure; an unlabelled set smaller than B (the code fails: its ``drop_last``
  loader is empty) is cycled without dropping, an empty one gives steps without ``L_u``; a
  labelled set smaller than B (the code: no step at all) gives one step of all of it.
* During MixMatch epochs ``train/acc_given`` is the agreement of the weak-view predictions
  of the step's unlabelled rows with their given labels (the only unmixed forward pass).
* Strong views are noisybench's ``strong`` kind (crop, flip, batched AutoAugment, Random
  Erasing): ``experiment=ref_otfilter`` sets the PIL ``CIFAR10Policy`` ranges and no erasing,
  as the code's ``transform_strong_10``; other protocols keep their own setting. Warm-up
  epochs draw the same four views (the method's view set is fixed) and use ``weak`` only.
* Under several processes each process mixes its own share of a step's rows (one ``lambda``
  and one permutation per process), as the engine does for MixUp; the filter itself runs on
  the gathered features and is the same on every process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, EpochPlan, Method, MethodContext, StepOutput, sharpen

__all__ = [
    "OTFilter",
    "OTFilterNet",
    "class_barycenters",
    "filter_labels",
    "label_regularised_sinkhorn",
    "mixmatch_loss",
    "ot_assignment",
    "sharpen",
    "sinkhorn",
    "streams",
]


# ----------------------------------------------------------------------------- transport
def sinkhorn(  # noqa: PLR0913
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    check_every: int = 10,
) -> Tensor:
    """Entropic OT plan ``diag(u) exp(-cost / reg) diag(v)`` by Sinkhorn-Knopp, batched.

    POT's ``ot.sinkhorn(a, b, M, reg)`` (method ``sinkhorn_knopp``) in torch: ``u = 1/n``,
    ``v = 1/m``; each iteration ``v = b / K^T u``, ``u = 1 / ((K / a) v)``; the marginal
    violation ``||sum_rows plan - b||_2`` is measured after iterations 1, 1 + k, 1 + 2k, ...
    (POT: k = 10) and a problem stops once it is below ``tol``; a problem whose update
    produces a zero, NaN or infinity keeps its previous scaling and stops (POT's "numerical
    errors" branch). Stopped problems of a batch stay frozen while the others go on; the loop
    reads one flag from the device per check, never per iteration.

    Args:
        a: ``(..., n)`` source weights (positive, summing to 1).
        b: ``(..., m)`` target weights.
        cost: ``(..., n, m)`` cost matrices; computed in the dtype of ``cost`` (use float64
            for the code's numbers).
        reg: entropic regularisation (POT's ``reg``, OT-Filter's ``lambd``).
        max_iter, tol: POT's ``numItermax`` (1000) and ``stopThr`` (1e-9).
        check_every: iterations between two checks of the stopping rule (POT: 10).

    Returns:
        ``(..., n, m)`` transport plans.
    """
    dtype = cost.dtype
    a = a.to(dtype)
    b = b.to(dtype)
    n, m = cost.shape[-2], cost.shape[-1]
    batch = cost.shape[:-2]
    kernel = torch.exp(cost / -reg)
    kernel_a = kernel / a.unsqueeze(-1)
    u = torch.full((*batch, n), 1.0 / n, dtype=dtype, device=cost.device)
    v = torch.full((*batch, m), 1.0 / m, dtype=dtype, device=cost.device)
    done = torch.zeros(batch, dtype=torch.bool, device=cost.device)
    it = 0
    while it < max_iter:
        block = 1 if it == 0 else min(check_every, max_iter - it)
        for _ in range(block):
            kt_u = (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
            v_new = b / kt_u
            u_new = 1.0 / (kernel_a @ v_new.unsqueeze(-1)).squeeze(-1)
            bad = (
                (kt_u == 0).any(-1)
                | ~torch.isfinite(u_new).all(-1)
                | ~torch.isfinite(v_new).all(-1)
            )
            keep = done | bad
            u = torch.where(keep.unsqueeze(-1), u, u_new)
            v = torch.where(keep.unsqueeze(-1), v, v_new)
            done = keep
        it += block
        marginal = (u.unsqueeze(-1) * kernel * v.unsqueeze(-2)).sum(-2)
        done = done | (torch.linalg.vector_norm(marginal - b, dim=-1) < tol)
        if bool(done.all()):  # one host read per check
            break
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


def label_regularised_sinkhorn(  # noqa: PLR0913
    a: Tensor,
    b: Tensor,
    cost: Tensor,
    row_class: Tensor,
    num_classes: int,
    reg: float,
    *,
    p: float = 0.5,
    eps: float = 1e-6,
    rounds: int = 5,
    eta: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> Tensor:
    """OT-Filter's label-regularised transport (the code's ``opt.label_reg``).

    Majorisation-minimisation of ``<T, M> - reg H(T) + eta sum_{j, c} (sum_{i in c} T_ij)^p``
    (a concave group penalty that favours plans whose column ``j`` is fed by one class): start
    with ``G = 0``; each of ``rounds`` rounds solves :func:`sinkhorn` on ``M + G`` and sets
    ``G_ij = eta p (sum_{i' : class(i') = class(i)} T_i'j + eps)^(p-1)``. Returns the last
    round's plan. The same iteration as POT's ``ot.da.sinkhorn_lpl1_mm`` (whose ``eps`` is
    fixed at 1e-3; OT-Filter's is 1e-6).

    Args:
        a, b, cost: as :func:`sinkhorn` (``cost``: ``(..., R, N)``, rows = barycenters).
        row_class: ``(R,)`` class of every row (barycenter).
        num_classes: K.
        reg: entropic regularisation (the code's ``lambd``, 10).
        p, eps, rounds, eta: the code's ``p=0.5, epsilon=1e-6, iters=5, eta=1``.
    """
    group = F.one_hot(row_class.long(), num_classes).to(cost.dtype)  # (R, K)
    penalty = torch.zeros_like(cost)
    plan = cost
    for _ in range(rounds):
        plan = sinkhorn(a, b, cost + penalty, reg, max_iter=max_iter, tol=tol)
        per_class = group.transpose(0, 1) @ plan  # (..., K, N)
        penalty = eta * p * (group @ per_class + eps).pow(p - 1.0)
    return plan


def ot_assignment(plan: Tensor, row_class: Tensor, num_classes: int) -> Tensor:
    """The OT label of every column: the class receiving the most mass (``argmax_k
    sum_{i in k} T_ij``, the code's ``label_propagation_analysis``; first maximum on ties)."""
    group = F.one_hot(row_class.long(), num_classes).to(plan.dtype)
    return (group.transpose(0, 1) @ plan).argmax(dim=-2)


def class_barycenters(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    fallback: Tensor,
    keep: Tensor | None = None,
) -> Tensor:
    """``(K, D)`` class means of ``features`` by ``labels`` (float64) over the samples where
    ``keep`` is true (all when None); a class without a sample takes its row of ``fallback``
    (``(K, D)``; see the module docstring)."""
    x = features.to(torch.float64)
    onehot = F.one_hot(labels.long(), num_classes).to(torch.float64)  # (N, K)
    if keep is not None:
        onehot = onehot * keep.to(torch.float64).unsqueeze(1)
    counts = onehot.sum(dim=0)
    sums = onehot.transpose(0, 1) @ x
    means = sums / counts.clamp(min=1.0).unsqueeze(1)
    return torch.where((counts > 0).unsqueeze(1), means, fallback.to(torch.float64))


def filter_labels(  # noqa: PLR0913
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    reg: float = 10.0,
    p: float = 0.5,
    eps: float = 1e-6,
    rounds: int = 5,
) -> tuple[Tensor, Tensor]:
    """OT-Filter's two transport rounds (the code's ``OT_Filter`` up to the loaders).

    Returns ``(first, second)``: the ``(N,)`` OT labels of the first round (barycenters of all
    samples by given label) and of the second (barycenters of the samples whose first OT label
    equals the given label). Samples with ``second == labels`` are the labelled set.
    """
    x = features.to(torch.float64)
    n = x.shape[0]
    k = int(num_classes)
    rows = torch.arange(k, device=x.device)
    a = torch.full((k,), 1.0 / k, dtype=torch.float64, device=x.device)
    b = torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)

    def assign(centres: Tensor) -> Tensor:
        cost = torch.cdist(centres, x)
        plan = label_regularised_sinkhorn(a, b, cost, rows, k, reg, p=p, eps=eps, rounds=rounds)
        return ot_assignment(plan, rows, k)

    overall = x.mean(dim=0, keepdim=True).expand(k, -1)
    centres = class_barycenters(x, labels, k, overall)
    first = assign(centres)
    clean = class_barycenters(x, labels, k, centres, keep=first == labels)
    return first, assign(clean)


# ----------------------------------------------------------------------------- MixMatch
def mixmatch_loss(logits: Tensor, targets: Tensor, labelled_rows: int) -> tuple[Tensor, Tensor]:
    """``(L_x, L_u)`` of the mixed rows (the code's ``SemiLoss``): soft cross-entropy averaged
    over the first ``labelled_rows`` rows, squared error of softmax vs target averaged over the
    other rows and all K classes (0 when there are none)."""
    logits = logits.float()
    lx = -(targets[:labelled_rows] * F.log_softmax(logits[:labelled_rows], dim=1)).sum(1).mean()
    rest = logits[labelled_rows:]
    if rest.shape[0] == 0:
        return lx, torch.zeros((), device=logits.device)
    lu = ((torch.softmax(rest, dim=1) - targets[labelled_rows:]) ** 2).mean()
    return lx, lu


def streams(
    labelled: Tensor, unlabelled: Tensor, batch_size: int, generator: torch.Generator
) -> tuple[int, Tensor, Tensor]:
    """The code's two loaders as index streams: ``(steps, labelled_rows, unlabelled_rows)``.

    ``steps = |L| // B`` (at least 1); the labelled stream is one permutation of ``labelled``
    cut to ``steps * B`` (``drop_last``); the unlabelled stream is a concatenation of
    permutations of ``unlabelled``, each cut to a multiple of B (``drop_last``; restarted when
    exhausted), ``steps * B`` long. Deviations for small sets: see the module docstring.
    Permutations are drawn from ``generator`` on the CPU, labelled first.
    """
    b = int(batch_size)
    n_l, n_u = int(labelled.numel()), int(unlabelled.numel())
    steps = max(n_l // b, 1)
    order = labelled[torch.randperm(n_l, generator=generator)]
    rows_l = order[: steps * b] if n_l >= b else order
    if n_u == 0:
        return steps, rows_l, unlabelled[:0]
    per_pass = (n_u // b) * b if n_u >= b else n_u
    need = steps * b
    chunks, total = [], 0
    while total < need:
        chunks.append(unlabelled[torch.randperm(n_u, generator=generator)][:per_pass])
        total += per_pass
    return steps, rows_l, torch.cat(chunks)[:need]


# ----------------------------------------------------------------------------- the method
class OTFilterNet(nn.Module):
    """The code's network: the backbone, then ``linear1: D -> 128`` (the OT feature), then
    ``linear2: 128 -> K`` with nothing in between (``model.py``, ``ResNet.forward``).

    ``linear1`` takes the place of the backbone's own head (so the backbone's dropout, for
    the models that have one, stays before it); ``forward`` returns the logits.
    """

    def __init__(self, model: nn.Module, feature_dim: int = 128) -> None:
        super().__init__()
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise UserError(
                f"method=otfilter replaces the model's final nn.Linear `head`, which "
                f"{type(model).__name__} does not have; pick a noisybench model"
            )
        model.head = nn.Linear(head.in_features, int(feature_dim))
        self.backbone = model
        self.classifier = nn.Linear(int(feature_dim), head.out_features)

    def features(self, x: Tensor) -> Tensor:
        """The ``feature_dim``-d feature the transport is computed on (the code's ``feature``)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))


class _Features(nn.Module):
    """``evaluate_train`` runs a module's ``forward``; this one's is the OT feature."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)


class OTFilter(Method):
    """OT-Filter (see the module docstring).

    Args:
        warm_up: cross-entropy epochs before the first filter (code: 10 CIFAR-10, 30
            CIFAR-100).
        batch_size: B of the labelled and unlabelled streams (the run's ``batch_size``; code
            128).
        temperature: sharpening T of the unlabelled targets (0.5).
        alpha: MixMatch Beta(alpha, alpha) (4).
        lambda_u: weight of the unlabelled loss (25).
        feature_dim: width of the OT feature layer (128).
        reg: entropic regularisation of the transport (the code's ``lambd``, 10).
        penalty_p, penalty_eps, rounds: the label regularisation's ``p``, ``epsilon`` and
            ``iters`` (0.5, 1e-6, 5).
    """

    views = ("weak", "weak_2", "strong", "strong_2")

    def __init__(  # noqa: PLR0913
        self,
        warm_up: int = 10,
        batch_size: int = 128,
        temperature: float = 0.5,
        alpha: float = 4.0,
        lambda_u: float = 25.0,
        feature_dim: int = 128,
        reg: float = 10.0,
        penalty_p: float = 0.5,
        penalty_eps: float = 1e-6,
        rounds: int = 5,
    ) -> None:
        super().__init__()
        if int(warm_up) < 0 or int(batch_size) < 1 or int(feature_dim) < 1 or int(rounds) < 1:
            raise UserError(
                f"method.warm_up={warm_up}, batch_size={batch_size}, feature_dim={feature_dim} "
                f"and rounds={rounds} must be >= 0, >= 1, >= 1, >= 1; the code uses 10, 128, "
                "128 and 5"
            )
        if min(float(temperature), float(alpha), float(reg), float(penalty_eps)) <= 0:
            raise UserError(
                f"method.temperature={temperature}, alpha={alpha}, reg={reg} and penalty_eps="
                f"{penalty_eps} must be positive; the code uses 0.5, 4, 10 and 1e-6"
            )
        self.warm_up = int(warm_up)
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.lambda_u = float(lambda_u)
        self.feature_dim = int(feature_dim)
        self.ot = {"reg": float(reg), "p": float(penalty_p), "eps": float(penalty_eps)}
        self.rounds = int(rounds)
        self.noisy: Tensor
        self.conc: Tensor
        self.labelled: Tensor
        self.ot_first: Tensor
        self.ot_label: Tensor

    def network(self, model: nn.Module) -> nn.Module:
        """The ``D -> 128 -> K`` head around the run's backbone (:class:`OTFilterNet`)."""
        return OTFilterNet(model, self.feature_dim)

    def setup(self, ctx: MethodContext) -> None:
        """The division (everything labelled until the first filter) and both rounds' OT
        labels, in registered buffers: a checkpoint written mid-epoch carries the epoch's
        division, and :meth:`epoch_plan` rebuilds the same streams from it."""
        super().setup(ctx)
        n, dev = ctx.num_samples, ctx.device
        self.register_buffer("noisy", ctx.noisy_labels.clone(), persistent=False)
        self.register_buffer("conc", torch.full((), self.alpha, device=dev), persistent=False)
        self.register_buffer("labelled", torch.ones(n, dtype=torch.bool, device=dev))
        self.register_buffer("ot_first", ctx.noisy_labels.clone().long())
        self.register_buffer("ot_label", ctx.noisy_labels.clone().long())

    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """The filter: features of the whole training set, two transport rounds, the
        division ``labelled = (second OT label == given label)``."""
        if epoch < self.warm_up:
            return
        feats = evaluate_train(_Features(model))
        first, second = filter_labels(
            feats, self.noisy, self.num_classes, rounds=self.rounds, **self.ot
        )
        self.ot_first.copy_(first)
        self.ot_label.copy_(second)
        self.labelled.copy_(second == self.noisy)

    def epoch_plan(self, epoch: int, seed: int) -> EpochPlan | None:
        """The code's two loaders (:func:`streams`) from the stored division, shuffled by a
        CPU generator seeded with the engine's ``(run seed, epoch)`` seed; None (the ordinary
        epoch) during warm-up."""
        if epoch < self.warm_up:
            return None
        labelled = self.labelled.cpu()  # once per epoch
        generator = torch.Generator().manual_seed(int(seed))
        steps, rows_l, rows_u = streams(
            labelled.nonzero().flatten(),
            (~labelled).nonzero().flatten(),
            self.batch_size,
            generator,
        )
        dev = self.labelled.device
        b = self.batch_size
        return EpochPlan(
            steps, {"unlabelled": (rows_u.to(dev), b), "labelled": (rows_l.to(dev), b)}
        )

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        if epoch < self.warm_up:
            return {}
        return {
            "labelled": self.labelled.float().mean(),
            "ot_agrees_first": (self.ot_first == self.noisy).float().mean(),
        }

    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if epoch < self.warm_up or not batch.parts:
            logits = model(batch.views["weak"]).float()
            return StepOutput(loss=F.cross_entropy(logits, batch.target), logits=logits)
        return self._mixmatch(model, batch)

    def _draw(self, rows: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """MixMatch's ``lambda = max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)``, and the row
        permutation (the code: ``np.random.beta`` and ``torch.randperm``)."""
        # a device buffer and no argument validation: no host copy or read per step
        lam = torch.distributions.Beta(self.conc, self.conc, validate_args=False).sample()
        return torch.maximum(lam, 1 - lam), torch.randperm(rows, device=device)

    def _mixmatch(self, model: nn.Module, batch: Batch) -> StepOutput:
        lab, unl = batch.part("labelled"), batch.part("unlabelled")
        strong, strong_2 = batch.views["strong"], batch.views["strong_2"]
        with torch.no_grad():  # the code guesses in train mode, one forward per weak view
            z1 = model(batch.views["weak"][unl]).float()
            z2 = model(batch.views["weak_2"][unl]).float()
            guess = sharpen((z1.softmax(1) + z2.softmax(1)) / 2, self.temperature)
        onehot = F.one_hot(batch.target[lab], self.num_classes).float()
        inputs = torch.cat([strong[lab], strong_2[lab], strong[unl], strong_2[unl]])
        targets = torch.cat([onehot, onehot, guess, guess])
        lam, perm = self._draw(inputs.shape[0], inputs.device)
        mixed = lam * inputs + (1 - lam) * inputs[perm]
        mixed_targets = lam * targets + (1 - lam) * targets[perm]
        logits = model(mixed)
        rows_l = 2 * onehot.shape[0]
        lx, lu = mixmatch_loss(logits, mixed_targets, rows_l)
        if rows_l == 0:  # a process's share without labelled rows
            lx = torch.zeros((), device=logits.device)
        loss = lx + self.lambda_u * lu
        extras = {"lx": lx.detach(), "lu": lu.detach()}
        return StepOutput(loss=loss, logits=z1, extras=extras)
