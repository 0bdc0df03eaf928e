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

Deviation from the code (the Method contract has one loader with one batch order): the
labelled and unlabelled sets are realised *inside each batch*. The code iterates over the
labelled set in batches of B (``|labelled| / B`` steps per epoch), drawing B unlabelled
samples per step cyclically from the unlabelled set, mixing 4B rows (2 views of each); here an
epoch is one pass over all N samples in batches of B, each sample is labelled or unlabelled
by the stored division, and the 2B rows of a batch (two views each) are mixed among
themselves. What changes: (a) the labelled:unlabelled ratio of a step follows the division
(the code: 1:1), so unlabelled samples are seen once per epoch rather than re-drawn, and
``L_x``/``L_u`` are averaged over their own rows (so their scales match the code's);
(b) both networks are updated in the same step (the code trains ``f_1`` for a whole epoch
with ``f_2`` fixed, then ``f_2`` with the updated ``f_1``); (c) one epoch has N / B steps.
The division itself (GMM on the whole training set once per epoch) is the code's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import Batch, Method, MethodContext, StepOutput

__all__ = [
    "DivideMix",
    "LoaderPlan",
    "gmm_clean_probability",
    "in_batch_plan",
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


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """``p^(1/T) / sum_k p_k^(1/T)`` (DivideMix Eq. 4, MixMatch's sharpening)."""
    pt = p.pow(1.0 / temperature)
    return pt / pt.sum(dim=1, keepdim=True)


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
    k = logits.shape[1]
    prior = torch.full((k,), 1.0 / k, device=logits.device)
    penalty = (prior * torch.log(prior / probs.mean(dim=0))).sum()
    return lx, lu, penalty


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
    ) -> None:
        super().__init__()
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
        self.peer = nn.ModuleList()
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
        if epoch < self.warm_up:
            return {}
        labelled = (self.prob > self.p_threshold).float().mean(dim=1)
        return {"labelled_1": labelled[0], "labelled_2": labelled[1]}

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if epoch < self.warm_up:
            return self._warm_up(model, batch)
        return self._semi_supervised(model, batch, epoch)

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
        onehot = F.one_hot(batch.target, k).float()
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
            conc = torch.tensor(self.alpha, device=x1.device)
            lam = torch.distributions.Beta(conc, conc).sample()
            lam = torch.maximum(lam, 1 - lam)
            perm = torch.randperm(inputs.shape[0], device=x1.device)
            mixed_input = lam * inputs + (1 - lam) * inputs[perm]
            mixed_target = lam * targets + (1 - lam) * targets[perm]
            logits = net(mixed_input)
            lx, lu, penalty = mixmatch_loss(logits, mixed_target, rows_labelled)
            total = total + lx + self.lambda_u * ramp * lu + penalty
            lx_sum, lu_sum, pen_sum = (
                lx_sum + lx.detach(),
                lu_sum + lu.detach(),
                pen_sum + penalty.detach(),
            )
            labelled_share = labelled_share + labelled.float().mean() / 2
        extras = {"lx": lx_sum, "lu": lu_sum, "penalty": pen_sum, "labelled": labelled_share}
        return StepOutput(loss=total, logits=first_logits, extras=extras)

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput, epoch: int) -> None:
        self.step.add_(1)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Mean of the two networks' logits (the code sums them: same argmax)."""
        a, b = self._nets(model)
        return (a(images).float() + b(images).float()) / 2
