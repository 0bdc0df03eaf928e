"""DivideMix: co-divided semi-supervised learning with two networks.

Reference: Li, Socher & Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised
Learning", ICLR 2020 (Algorithm 1); authors' code: github.com/LiJunnan1992/DivideMix
(``Train_cifar.py``: ``warmup``, ``eval_train``, ``train``, ``SemiLoss``, ``NegEntropy``).

Two networks: the engine's model ``f_1`` and ``f_2`` built with ``MethodContext.build_model``
(trained by the engine's optimizer through :meth:`extra_modules`; the loss is the sum of both
networks' losses, which trains each as with its own optimizer of the same settings).

1. Warm-up (epochs ``< warm_up``; code: 10 CIFAR-10, 30 CIFAR-100): cross-entropy on the
   noisy labels for both networks, plus the confidence penalty ``mean sum_k p_k log p_k``
   (the code's ``NegEntropy``) when ``confidence_penalty`` is true (the code: asymmetric
   noise only).
2. Co-divide (every later epoch, before its first step, :meth:`on_epoch_start`): per network,
   per-sample cross-entropy over the training set (eval mode, plain view), min-max
   normalised; optionally averaged over the last ``loss_history`` epochs (the code: 5 for
   90 % noise, else 1); a 2-component 1-D GMM (scikit-learn ``GaussianMixture``,
   ``max_iter=10, tol=1e-2, reg_covar=5e-4``) gives ``w_i`` = posterior of the component with
   the smaller mean (Eq. 1). ``w`` is kept in a registered buffer per network.
3. Each network ``f_j`` is trained on the other network's division: samples with
   ``w_i > p_threshold`` (0.5) are labelled, the others unlabelled.

   * Label co-refinement (Eq. 3-4): ``p = w * y + (1 - w) * mean(softmax f_j(x^1), softmax
     f_j(x^2))``, sharpened ``p^(1/T) / sum`` (T = 0.5).
   * Label co-guessing (unlabelled): mean of the softmax of both networks on both views,
     sharpened the same way; as in the code, ``f_j``'s own outputs come from train mode and
     the other network's from eval mode (no gradient either way).
   * MixMatch (Eq. 5-8): ``lambda ~ Beta(alpha, alpha)``, ``lambda = max(lambda, 1 - lambda)``
     (alpha 4); inputs and targets mixed with a random permutation of all rows;
     ``L_x`` = soft cross-entropy over rows whose own sample is labelled, ``L_u`` = mean
     squared error between softmax and target over the other rows (mean over rows and
     classes, as the code), weight ``lambda_u * clip((e_frac - warm_up) / 16, 0, 1)`` with
     ``e_frac = epoch + step / steps_per_epoch`` (the code's ``linear_rampup``);
     ``lambda_u``: per dataset and noise level from ``conf/baseline_presets.yaml`` (Appendix
     B Table 7: CIFAR-10 0 / 25 / 25 / 50 at sym 20 / 50 / 80 / 90 %, 0 asym; CIFAR-100 25 at
     20 %, 150 from 50 %); the code's argparse default is 25.
   * Regularisation (Eq. 9, the code): ``sum_k pi_k log(pi_k / mean_rows softmax_k)`` with
     the uniform prior ``pi = 1/K``.

4. Prediction: the mean of the two networks' logits (the code sums them; same argmax).

Loaders (``loader``). ``reference`` (the default) is the code's: an epoch laid out by
:meth:`DivideMix.epoch_plan` as ``Train_cifar.py`` draws it, with ``B = batch_size / 2``
(the code's ``--batch_size 64`` is a run's ``batch_size=128``):

* co-training epochs: network 1 first, ``ceil(|L_2| / B)`` steps over its labelled set
  ``L_2`` (network 2's division) in a fresh shuffled order, batches of B with a smaller last
  one, each with the next batch of an iterator over the unlabelled set ``U_2`` in shuffled
  batches of B (its last one smaller) that restarts, reshuffled, when exhausted; then network
  2 the same way on ``L_1`` / ``U_1``, co-guessing with the network 1 it just trained. A step
  trains one network (``batch.step`` says which); the other's parameters get no gradient, so
  the optimizer leaves them as the code's second optimizer does. ``lambda_u`` ramps with the
  code's ``epoch + batch_idx / (|L| // B + 1)``.
* warm-up epochs: network 1 over all N samples in shuffled batches of ``2B`` (the code's
  ``warmup_trainloader``), then network 2 over a fresh order.

The plan's parts keep every batch at its full width (the contract slices each part ``per_step``
rows at a time), so the code's smaller batches are padded with repeated indices that the step
drops again (at most ``B - 1`` rows per network and stream per epoch). With several processes
each process drops the padding of its own share. A last batch of ONE sample is left out of
its pass (BatchNorm cannot normalise one sample in training mode; the code stops with an
error there).

``in_batch`` (this implementation's former realisation): an epoch is one pass over all N
samples in batches of ``batch_size``; each sample is labelled or unlabelled by the stored
division, the rows of a batch (two views each) are mixed among themselves, and both networks
are updated in the same step. What changes: (a) the labelled:unlabelled ratio of a step
follows the division (the code: 1:1), so unlabelled samples are seen once per epoch rather
than re-drawn, and ``L_x``/``L_u`` are averaged over their own rows (so their scales match the
code's); (b) both networks are updated in the same step (the code trains ``f_1`` for a whole
epoch with ``f_2`` fixed, then ``f_2`` with the updated ``f_1``); (c) one epoch has N / B
steps (:func:`reference_plan` / :func:`in_batch_plan` compare the two; docs/baselines.md).
The division itself (GMM on the whole training set once per epoch) is the code's in both.
"""

from __future__ import annotations

import dataclasses
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
    "DivideMix",
    "LoaderPlan",
    "batches_per_pass",
    "gmm_clean_probability",
    "in_batch_plan",
    "loader_stream",
    "mixmatch_loss",
    "reference_plan",
    "sharpen",
]


@dataclasses.dataclass(frozen=True)
class LoaderPlan:
    """What one network sees in one epoch of the co-training phase.

    ``steps``: optimizer steps per network; ``labelled_per_step``: mean labelled samples in a
    step; ``unlabelled_drawn``: unlabelled samples drawn over the epoch (with repeats when the
    iterator restarts); ``unlabelled_coverage``: the share of the unlabelled set seen,
    ``min(1, drawn / |U|)``.
    """

    steps: int
    labelled_per_step: float
    unlabelled_drawn: int
    unlabelled_coverage: float


def reference_plan(labelled: int, total: int, batch_size: int) -> LoaderPlan:
    """The authors' loaders (``Train_cifar.py`` ``train``): one pass over the labelled set in
    shuffled batches of B (``ceil(|L| / B)`` steps; the code prints ``|L| // B + 1``), each
    step with B unlabelled samples from an iterator over the unlabelled set that is restarted
    when exhausted; network 2 trains after network 1's epoch. Perfect division at CIFAR-10
    sym 20 % (``|L| = 41000``, B = 64): 641 steps of 64 labelled + 64 unlabelled."""
    unlabelled = total - labelled
    steps = -(-labelled // batch_size)
    drawn = steps * batch_size if unlabelled > 0 else 0
    coverage = min(1.0, drawn / unlabelled) if unlabelled > 0 else 1.0
    return LoaderPlan(steps, labelled / steps if steps else 0.0, drawn, coverage)


def in_batch_plan(labelled: int, total: int, batch_size: int) -> LoaderPlan:
    """This implementation's default realisation (``loader: in_batch``): one pass over all N
    samples in batches of B, each labelled or not by the stored division, so a step holds
    ``B * |L| / N`` labelled samples on average and every unlabelled sample is seen once."""
    steps = -(-total // batch_size)
    unlabelled = total - labelled
    return LoaderPlan(steps, batch_size * labelled / total, unlabelled, 1.0)


def batches_per_pass(size: int, batch: int) -> int:
    """Batches of one pass of ``DataLoader(batch_size=batch)`` over ``size`` samples, less a
    last batch of ONE sample (see :func:`loader_stream`)."""
    return size // batch + (1 if size % batch > 1 else 0)


def loader_stream(
    order: Callable[[], Tensor], size: int, batch: int, steps: int
) -> tuple[Tensor, list[int]]:
    """``steps`` batches of a shuffled ``DataLoader(batch_size=batch)`` over ``size`` samples
    that is iterated again (``order()``: a fresh permutation of the sample indices) whenever it
    is exhausted, as DivideMix's ``unlabeled_train_iter`` is: each pass yields its batches of
    ``batch``, the last one ``size mod batch`` samples when that is not 0. A last batch of ONE
    sample is left out of its pass (BatchNorm cannot normalise one sample in training mode:
    the code would stop with an error there). Returns the indices, every batch padded to
    ``batch`` rows with repeats of its last index (flat, ``steps * batch``), and each batch's
    real row count. No batch at all (``size`` 0 or 1): ``steps`` empty batches."""
    per_pass = batches_per_pass(size, batch)
    if per_pass == 0 or steps == 0:
        return torch.zeros(steps * batch, dtype=torch.long), [0] * steps
    rest = size % batch if size % batch > 1 else 0
    used = (size // batch) * batch + rest
    pad = per_pass * batch - used
    chunks, counts = [], []
    while len(counts) < steps:
        perm = order().long()[:used]
        if pad:
            perm = torch.cat([perm, perm[-1:].expand(pad)])
        chunks.append(perm)
        counts += [batch] * (size // batch) + ([rest] if rest else [])
    return torch.cat(chunks)[: steps * batch], counts[:steps]


def _one_hot(labels: Tensor, k: int) -> Tensor:
    """Float one-hot rows without ``F.one_hot``'s range check (a host read on a GPU)."""
    return torch.zeros(labels.shape[0], k, device=labels.device).scatter_(1, labels[:, None], 1.0)


def _mix_weight(alpha: float, like: Tensor) -> Tensor:
    """MixMatch's ``lambda ~ Beta(alpha, alpha)`` on ``like``'s device, built without a
    host-to-device copy or the distribution's argument check (host reads on a GPU); the
    caller takes ``max(lambda, 1 - lambda)``."""
    conc = like.new_full((), float(alpha), dtype=torch.float32)
    return torch.distributions.Beta(conc, conc, validate_args=False).sample()


def _local_rows(real: int, width: int) -> int:
    """Of a part of ``width`` rows whose first ``real`` are real, how many fall into this
    process's share (the loader splits every part like ``torch.tensor_split``)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return real
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    size = width // world + (1 if rank < width % world else 0)
    start = rank * (width // world) + min(rank, width % world)
    return max(0, min(size, real - start))


def gmm_clean_probability(
    losses: np.ndarray,
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    random_state: int | None = 0,
) -> np.ndarray:
    """Posterior of the low-mean component of a 2-component GMM fitted to ``losses`` (1-D,
    already normalised), DivideMix Eq. 1 / the code's ``eval_train``."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(
        n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=random_state
    )
    gmm.fit(x)
    return gmm.predict_proba(x)[:, gmm.means_.argmin()]


def mixmatch_loss(
    logits: Tensor, targets: Tensor, labelled: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_x, L_u, penalty)`` of mixed rows: soft cross-entropy over the ``labelled`` rows,
    mean squared error of softmax vs target over the others (mean over rows and classes),
    and the uniform-prior penalty ``sum_k (1/K) log((1/K) / mean_rows softmax_k)``."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=1)
    probs = logp.exp()
    mask = labelled.float()
    lx_rows = -(targets * logp).sum(dim=1)
    lu_rows = ((probs - targets) ** 2).mean(dim=1)
    lx = (lx_rows * mask).sum() / mask.sum().clamp(min=1.0)
    lu = (lu_rows * (1.0 - mask)).sum() / (1.0 - mask).sum().clamp(min=1.0)
    return lx, lu, uniform_prior_penalty(probs)


class DivideMix(Method):
    """DivideMix with two networks (see the module docstring).

    Args:
        warm_up: cross-entropy warm-up epochs (code: 10 CIFAR-10, 30 CIFAR-100).
        p_threshold: clean-probability threshold of the division (0.5).
        temperature: sharpening temperature T (0.5).
        alpha: MixMatch Beta(alpha, alpha) (4).
        lambda_u: weight of the unlabelled loss (25: CIFAR-10 sym 50 %).
        rampup_length: epochs of the linear ramp-up of ``lambda_u`` after warm-up (16).
        confidence_penalty: add the negative-entropy penalty in warm-up (code: asym noise).
        loss_history: epochs of normalised losses averaged for the GMM (code: 5 at 90 %
            noise, else 1).
        gmm_max_iter, gmm_tol, gmm_reg_covar: the GMM's settings (10, 1e-2, 5e-4).
        gmm_seed: ``random_state`` of the GMM's k-means initialisation (the code: NumPy's
            global generator).
        seed: seed of the second network's initialisation (``None``: derived from the run's).
        loader: ``reference`` (the code's labelled / unlabelled loaders, network 2 after
            network 1; default) or ``in_batch`` (the division realised inside each batch of
            an ordinary epoch); see the module docstring.
        batch_size: the run's batch size (``${batch_size}``); with ``loader: reference`` a
            step holds ``batch_size / 2`` labelled and as many unlabelled samples (the code's
            ``--batch_size``), a warm-up step ``batch_size`` samples.
    """

    views = ("weak", "weak_2")

    def __init__(  # noqa: PLR0913
        self,
        warm_up: int = 10,
        p_threshold: float = 0.5,
        temperature: float = 0.5,
        alpha: float = 4.0,
        lambda_u: float = 25.0,
        rampup_length: int = 16,
        confidence_penalty: bool = False,
        loss_history: int = 1,
        gmm_max_iter: int = 10,
        gmm_tol: float = 1e-2,
        gmm_reg_covar: float = 5e-4,
        gmm_seed: int | None = 0,
        seed: int | None = None,
        loader: str = "reference",
        batch_size: int = 128,
    ) -> None:
        super().__init__()
        if loader not in ("reference", "in_batch"):
            raise UserError(
                f"method.loader={loader!r}: choose reference (the authors' loaders) or in_batch"
            )
        if loader == "reference" and (int(batch_size) < 2 or int(batch_size) % 2):
            raise UserError(
                f"method.loader=reference splits each step's batch_size={batch_size} into as "
                "many labelled as unlabelled samples: use an even batch_size >= 2 (the code's "
                "--batch_size 64 is batch_size=128), or method.loader=in_batch"
            )
        if int(warm_up) < 0 or int(loss_history) < 1 or int(rampup_length) < 1:
            raise UserError(
                f"method.warm_up={warm_up}, loss_history={loss_history} and rampup_length="
                f"{rampup_length} must be >= 0, >= 1, >= 1; the code uses 10, 1 and 16"
            )
        if not 0.0 < float(p_threshold) < 1.0 or float(temperature) <= 0 or float(alpha) <= 0:
            raise UserError(
                f"method.p_threshold={p_threshold} must be in (0, 1), temperature={temperature} "
                f"and alpha={alpha} positive; the code uses 0.5, 0.5 and 4"
            )
        self.warm_up = int(warm_up)
        self.p_threshold = float(p_threshold)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.lambda_u = float(lambda_u)
        self.rampup_length = int(rampup_length)
        self.confidence_penalty = bool(confidence_penalty)
        self.loss_history = int(loss_history)
        self.gmm = {
            "max_iter": int(gmm_max_iter),
            "tol": float(gmm_tol),
            "reg_covar": float(gmm_reg_covar),
        }
        self.gmm_seed = gmm_seed
        self.seed = seed
        self.loader = loader
        self.half = int(batch_size) // 2  # B of the code: labelled (= unlabelled) per step
        # The current epoch's layout (Python numbers, from epoch_plan: the steps need them
        # without reading a tensor): per network, (first step, steps, size of its labelled
        # loader's dataset); "x" / "u": the real rows of each step's labelled / unlabelled part.
        self._layout: list[tuple[int, int, int]] = []
        self._real: dict[str, list[int]] = {}
        self.steps_per_epoch = 1
        self.noisy: Tensor
        self.prob: Tensor
        self.losses: Tensor
        self.filled: Tensor
        self.step: Tensor

    def setup(self, ctx: MethodContext) -> None:
        """Second network, division buffers (all samples labelled until the first division)."""
        super().setup(ctx)
        self.peer = nn.ModuleList(ctx.build_models(1, self.seed, "DivideMix"))
        n, dev = ctx.num_samples, ctx.device
        self.steps_per_epoch = max(int(ctx.steps_per_epoch), 1)
        self.register_buffer("noisy", ctx.noisy_labels.clone(), persistent=False)
        self.register_buffer("prob", torch.ones(2, n, device=dev))
        self.register_buffer("losses", torch.zeros(self.loss_history, 2, n, device=dev))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("step", torch.zeros((), dtype=torch.long, device=dev))

    def extra_modules(self) -> list[nn.Module]:
        return list(self.peer)

    def _nets(self, model: nn.Module) -> list[nn.Module]:
        peer = self.peer[0]
        if peer.training != model.training:
            peer.train(model.training)
        return [model, peer]

    # ------------------------------------------------------------------ co-divide
    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """Fit the per-network GMMs on the normalised per-sample losses (the code's
        ``eval_train``) and store the clean probabilities ``w`` in ``self.prob``."""
        if epoch < self.warm_up:
            return
        self.losses.copy_(torch.roll(self.losses, 1, dims=0))
        for j, net in enumerate(self._nets(model)):
            loss = F.cross_entropy(evaluate_train(net), self.noisy, reduction="none")
            span = (loss.max() - loss.min()).clamp(min=1e-12)
            self.losses[0, j] = (loss - loss.min()) / span
        self.filled.add_(1)
        used = min(int(self.filled), self.loss_history)  # one sync per epoch
        inputs = self.losses[:used].mean(dim=0).cpu().numpy()
        for j in range(2):
            seed = None if self.gmm_seed is None else int(self.gmm_seed) + epoch
            prob = gmm_clean_probability(inputs[j], random_state=seed, **self.gmm)
            self.prob[j] = torch.as_tensor(prob, dtype=self.prob.dtype, device=self.prob.device)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        """The share of each network's division labelled clean (co-training epochs) and, with
        the code's loaders, the steps each network took this epoch."""
        out: dict[str, Tensor] = {}
        if self.loader == "reference" and self._layout:
            for j, (_, steps, _) in enumerate(self._layout):
                out[f"steps_{j + 1}"] = torch.tensor(float(steps))
        if epoch < self.warm_up:
            return out
        labelled = (self.prob > self.p_threshold).float().mean(dim=1)
        return {**out, "labelled_1": labelled[0], "labelled_2": labelled[1]}

    # ------------------------------------------------------------------ the code's loaders
    def epoch_plan(self, epoch: int, seed: int) -> EpochPlan | None:
        """``loader: reference``: the epoch as the code's loaders draw it (module docstring).
        A pure function of the division buffer ``prob`` and ``(seed, epoch)``: one read of the
        division per epoch; permutations from a CPU generator seeded with ``seed``."""
        if self.loader != "reference":
            return None
        gen = torch.Generator().manual_seed(int(seed))
        n = int(self.prob.shape[1])
        if epoch < self.warm_up:  # warmup_trainloader: batches of 2B over all samples, per net
            width = 2 * self.half
            steps = batches_per_pass(n, width)
            streams = [
                loader_stream(lambda: torch.randperm(n, generator=gen), n, width, steps)
                for _ in range(2)
            ]
            self._layout = [(0, steps, n), (steps, steps, n)]
            self._real = {"x": streams[0][1] + streams[1][1]}
            flat = torch.cat([streams[0][0], streams[1][0]])
            return EpochPlan(2 * steps, {"x": (flat.to(self.prob.device), width)})
        b = self.half
        labelled = (self.prob > self.p_threshold).cpu()  # one read of the division per epoch
        x_parts, u_parts, x_real, u_real, layout, first = [], [], [], [], [], 0
        for j in range(2):  # network j trains on the other network's division
            pool_l = torch.nonzero(labelled[1 - j]).flatten()
            pool_u = torch.nonzero(~labelled[1 - j]).flatten()
            steps = batches_per_pass(len(pool_l), b)
            if j == 1 and first == 0 and steps == 0:
                steps = 1  # neither division labels anything: one unlabelled-only step
            xs = loader_stream(
                lambda p=pool_l: p[torch.randperm(len(p), generator=gen)], len(pool_l), b, steps
            )
            us = loader_stream(
                lambda p=pool_u: p[torch.randperm(len(p), generator=gen)], len(pool_u), b, steps
            )
            x_parts.append(xs[0])
            u_parts.append(us[0])
            x_real += xs[1]
            u_real += us[1]
            layout.append((first, steps, len(pool_l)))
            first += steps
        self._layout, self._real = layout, {"x": x_real, "u": u_real}
        dev = self.prob.device
        parts = {"x": (torch.cat(x_parts).to(dev), b), "u": (torch.cat(u_parts).to(dev), b)}
        return EpochPlan(first, parts)

    def plan_step(self, step: int) -> tuple[int, int, int, int]:
        """Of the current epoch's planned ``step`` (``loader: reference``, after
        :meth:`epoch_plan`): the network it trains (0: the run's model, 1: the second), the
        step's index within that network's part of the epoch, and its real labelled and
        unlabelled rows (all rows of a warm-up step count as labelled); the rest is padding."""
        for j, (first, steps, _) in enumerate(self._layout):
            if first <= step < first + steps:
                return (
                    j,
                    step - first,
                    self._real["x"][step],
                    self._real.get("u", [0] * (step + 1))[step],
                )
        raise RuntimeError(f"step {step} is outside the epoch's plan {self._layout}")

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if self.loader == "reference":
            if epoch < self.warm_up:
                return self._warm_up_reference(model, batch)
            return self._semi_supervised_reference(model, batch, epoch)
        if epoch < self.warm_up:
            return self._warm_up(model, batch)
        return self._semi_supervised(model, batch, epoch)

    def _warm_up_reference(self, model: nn.Module, batch: Batch) -> StepOutput:
        """The code's ``warmup``: cross-entropy (+ ``NegEntropy`` for asym) of one network on
        its batch of the warm-up loader."""
        j, _, real, _ = self.plan_step(batch.step)
        rows = batch.part("x")
        keep = _local_rows(real, 2 * self.half)
        x = batch.views["weak"][rows][:keep]
        net = self._nets(model)[j]
        logits = net(x).float()
        loss = F.cross_entropy(logits, batch.target[rows][:keep])
        zero = torch.zeros((), device=x.device)
        penalty = zero
        if self.confidence_penalty:
            p = torch.softmax(logits, dim=1)
            penalty = (p.log() * p).sum(dim=1).mean()
            loss = loss + penalty
            penalty = penalty.detach()
        extras = {"lx": zero, "lu": zero, "penalty": penalty, "labelled": zero}
        return StepOutput(loss=loss, logits=logits, extras=extras)

    def _semi_supervised_reference(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        """The code's ``train`` for one step of network ``j``: B labelled (refined labels) and
        B unlabelled (co-guessed) samples, two views each, MixMatch over all 4B rows."""
        j, t, real_x, real_u = self.plan_step(batch.step)
        size = self._layout[j][2]
        o = 1 - j
        nets = self._nets(model)
        net, other = nets[j], nets[o]
        rx, ru = batch.part("x"), batch.part("u")
        nx, nu = _local_rows(real_x, self.half), _local_rows(real_u, self.half)
        xw, xs = batch.views["weak"][rx][:nx], batch.views["weak_2"][rx][:nx]
        uw, us = batch.views["weak"][ru][:nu], batch.views["weak_2"][ru][:nu]
        idx_x = batch.idx[rx][:nx]
        k = self.num_classes
        with torch.no_grad():
            # co-guessing: this network in train mode, the other (fixed) in eval mode
            targets_u = uw.new_zeros((0, k))
            if nu:
                u1, u2 = net(uw).float().softmax(1), net(us).float().softmax(1)
                other.eval()
                v1, v2 = other(uw).float().softmax(1), other(us).float().softmax(1)
                other.train()
                targets_u = sharpen((u1 + u2 + v1 + v2) / 4, self.temperature)
            # co-refinement with the dividing network's clean probability w
            targets_x, seen = xw.new_zeros((0, k)), xw.new_zeros((0, k))
            if nx:
                w = self.prob[o, idx_x][:, None]
                seen = net(xw).float()
                px = (seen.softmax(1) + net(xs).float().softmax(1)) / 2
                px = w * _one_hot(batch.target[rx][:nx], k) + (1 - w) * px
                targets_x = sharpen(px, self.temperature)
        inputs = torch.cat([xw, xs, uw, us])
        targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
        rows_labelled = torch.arange(inputs.shape[0], device=inputs.device) < 2 * nx
        lx, lu, penalty = self._mixmatch(net, inputs, targets, rows_labelled)
        # the code's linear_rampup(epoch + batch_idx / num_iter), num_iter = |L| // B + 1
        current = epoch + t / (size // self.half + 1)
        ramp = min(max((current - self.warm_up) / self.rampup_length, 0.0), 1.0)
        loss = lx + self.lambda_u * ramp * lu + penalty
        share = torch.full((), nx / max(nx + nu, 1), device=inputs.device)
        extras = {
            "lx": lx.detach(),
            "lu": lu.detach(),
            "penalty": penalty.detach(),
            "labelled": share,
        }
        # the labelled samples' own logits (weak view, before mixing) for the epoch's accuracy
        return StepOutput(loss=loss, logits=seen, extras=extras)

    def _warm_up(self, model: nn.Module, batch: Batch) -> StepOutput:
        x = batch.views["weak"]
        losses, first = [], None
        zero = torch.zeros((), device=x.device)
        penalty = zero
        for net in self._nets(model):
            logits = net(x).float()
            first = logits if first is None else first
            loss = F.cross_entropy(logits, batch.target)
            if self.confidence_penalty:
                p = torch.softmax(logits, dim=1)
                neg_entropy = (p.log() * p).sum(dim=1).mean()
                loss = loss + neg_entropy
                penalty = penalty + neg_entropy.detach()
            losses.append(loss)
        extras = {"lx": zero, "lu": zero, "penalty": penalty, "labelled": zero}
        return StepOutput(loss=losses[0] + losses[1], logits=first, extras=extras)

    def _semi_supervised(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        x1, x2 = batch.views["weak"], batch.views["weak_2"]
        nets = self._nets(model)
        k = self.num_classes
        onehot = _one_hot(batch.target, k)
        with torch.no_grad():
            own, other = [], []  # softmax on (x1, x2): train mode / eval mode
            first_logits = None
            for net in nets:
                z1, z2 = net(x1).float(), net(x2).float()
                first_logits = z1 if first_logits is None else first_logits
                own.append((z1.softmax(1), z2.softmax(1)))
            for net in nets:
                net.eval()
                other.append((net(x1).float().softmax(1), net(x2).float().softmax(1)))
                net.train()
        current = self.step.float() / self.steps_per_epoch
        ramp = ((current - self.warm_up) / self.rampup_length).clamp(0.0, 1.0)
        total = torch.zeros((), device=x1.device)
        lx_sum, lu_sum, pen_sum = total.clone(), total.clone(), total.clone()
        labelled_share = total.clone()
        for j, net in enumerate(nets):
            o = 1 - j  # the other network's division trains this one
            w = self.prob[o, batch.idx][:, None]
            labelled = self.prob[o, batch.idx] > self.p_threshold
            with torch.no_grad():
                pu = (own[j][0] + own[j][1] + other[o][0] + other[o][1]) / 4
                px = (own[j][0] + own[j][1]) / 2
                px = w * onehot + (1 - w) * px
                target = torch.where(
                    labelled[:, None], sharpen(px, self.temperature), sharpen(pu, self.temperature)
                )
            inputs = torch.cat([x1, x2])
            targets = torch.cat([target, target])
            rows_labelled = torch.cat([labelled, labelled])
            lx, lu, penalty = self._mixmatch(net, inputs, targets, rows_labelled)
            total = total + lx + self.lambda_u * ramp * lu + penalty
            lx_sum, lu_sum, pen_sum = (
                lx_sum + lx.detach(),
                lu_sum + lu.detach(),
                pen_sum + penalty.detach(),
            )
            labelled_share = labelled_share + labelled.float().mean() / 2
        extras = {"lx": lx_sum, "lu": lu_sum, "penalty": pen_sum, "labelled": labelled_share}
        return StepOutput(loss=total, logits=first_logits, extras=extras)

    def _mixmatch(
        self, net: nn.Module, inputs: Tensor, targets: Tensor, rows_labelled: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """MixMatch (Eq. 5-8): ``lambda ~ Beta(alpha, alpha)``, ``max(lambda, 1 - lambda)``,
        inputs and targets mixed with a random permutation of the rows; :func:`mixmatch_loss`
        of ``net`` on the mixed rows (``rows_labelled``: the rows whose own sample is
        labelled)."""
        lam = _mix_weight(self.alpha, inputs)
        lam = torch.maximum(lam, 1 - lam)
        perm = torch.randperm(inputs.shape[0], device=inputs.device)
        mixed_input = lam * inputs + (1 - lam) * inputs[perm]
        mixed_target = lam * targets + (1 - lam) * targets[perm]
        return mixmatch_loss(net(mixed_input), mixed_target, rows_labelled)

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        self.step.add_(1)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Mean of the two networks' logits (the code sums them: same argmax)."""
        a, b = self._nets(model)
        return (a(images).float() + b(images).float()) / 2
