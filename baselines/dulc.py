"""DULC: dynamic and uniform label correction with a normalised Jensen-Shannon weight.

Reference: Xu, Niu, Yang, Su, Zhang, Liu & Drew, "Revisiting Interpolation for Noisy Label
Correction", AAAI 2025 (equation numbers below are the paper's). The paper names its code at
github.com/kovelxyz/DULC; no content of that repository could be read, so this implementation
follows the paper's text. The contrastive loss is UNICON's (Karim et al., CVPR 2022,
github.com/nazmul-karim170/UNICON-Noisy-Label: ``Contrastive_loss.py`` ``SupConLoss``,
``Train_cifar.py`` ``train``; its projection head in ``PreResNet_cifar.py``).

What the paper defines, as implemented:

1. Jensen-Shannon divergence between the one-hot noisy label and the prediction, Eq. 5
   (Theorem 0.2): ``JSD(y~, p) = 1/2 p log p - 1/2 (1 + p) log(1 + p) + 1`` with
   ``p = p_{y~}``, logarithms in base 2 (so that JSD lies in [0, 1] as the paper says).
   :func:`js_divergence_to_label`.
2. Per-class min-max normalisation at the beginning of every epoch, Eq. 7-8: ``JSD_norm =
   (JSD - min_c) / (max_c - min_c)`` over the samples whose noisy label is ``c``.
   :func:`classwise_minmax`.
3. The decaying floor, Eq. 10-11: ``alpha = (1 - beta_t) JSD_norm + gamma beta_t`` with
   ``beta_t = 1{t <= N} a (1 - t / N)``. :func:`decay_beta`, :func:`correction_weight`.
4. The corrected target, Eq. 6 / 9: ``y^ = alpha p^ + (1 - alpha) y~`` with ``p^`` the
   prediction on the WEAK view sharpened with temperature T, Eq. 4 (the network is trained on
   the STRONG views; "Augmentation and Sharpening"). :func:`corrected_target`.
5. MixUp (Zhang et al. 2018) of the strong views and their corrected targets, cross-entropy
   Eq. 2 on the mixed rows. :func:`mix`.
6. ``L = L_ce + lambda L_c`` (Eq. 12) with ``L_c`` UNICON's contrastive loss: the SimCLR form
   of ``SupConLoss`` (no labels, ``contrast_mode='all'``) on the L2-normalised projections of
   two strong views, temperature 0.05 (= its ``base_temperature``). :func:`unicon_contrastive_loss`.
   The projection head is UNICON's ``Linear(D, 128)`` followed by ``BatchNorm1d(128)`` on the
   pooled features, owned by this method through :meth:`DULC.network` (:class:`DULCNetwork`).

Ambiguities of the paper and the choices made here (each also in docs/baselines.md):

* **Where alpha comes from.** Eq. 7 computes the class minima and maxima "at the beginning of
  each training epoch"; we compute JSD, the class range and ``alpha_i`` for every sample in
  that same pass (eval mode, plain view: the engine's ``evaluate_train``; UNICON's
  ``Calculate_JSD`` runs on its un-augmented ``eval_train`` loader the same way) and keep
  ``alpha`` in a registered buffer for the epoch. So the normalisation is exact (no value of
  ``JSD_norm`` outside [0, 1]) and a checkpoint written mid-epoch carries it. The sharpened
  prediction ``p^`` is taken on the step's weak view (train mode, no gradient, as UNICON's
  label refinement), as the paper's "predictions on the weak augmentation set".
* **p vs p^ in Eq. 9.** Eq. 9 writes ``p_i``, Eq. 6 and the text ``p^_i``; we use the
  sharpened ``p^_i`` (otherwise the ablation "w/o sharpening (T = 1)" of Table 5 would
  change nothing).
* **a, gamma, N of Eq. 10-11.** The text gives only "a smaller range in the early stage,
  [a, b] (e.g., [0.2, 0.8])"; at ``t = 0`` Eq. 10 spans ``[gamma a, 1 - a + gamma a]``, so
  [0.2, 0.8] means ``a = 0.4, gamma = 0.5`` (the defaults). N (``decay_epochs``) is not
  stated in the main text (its Appendix B.4 could not be read): default 100, a guess.
  ``t`` is the run's 0-based epoch.
* **A class whose JSD values are all equal** (``max_c = min_c``, e.g. one sample): Eq. 8 is
  0 / 0; we set ``JSD_norm = 0`` there (the noisy label is kept, up to the floor).
* **Warm-up.** Not in the main text. The predictions of an untrained network carry no
  information about label cleanliness, and UNICON's code (which DULC compares with and whose
  contrastive loss it uses) warms up with cross-entropy on the weak view for 10 (CIFAR-10) /
  30 (CIFAR-100) epochs: ``warm_up`` (conf/baseline_presets.yaml), no correction before it.
* **MixUp's alpha and lambda**: Beta(4, 4), ``lambda = max(lambda, 1 - lambda)``, one
  ``lambda`` and one permutation of all 2B strong rows per step, as UNICON's ``train``.
  The main text gives no value.
* **T** = 0.5 and **lambda (contrastive)** = 0.025: UNICON's defaults (``--T``,
  ``--lambda_c``); not stated in the main text.

Deviations from UNICON's code in the contrastive part: the two strong views go through the
network in one concatenated forward (UNICON: two calls, so BatchNorm statistics are per view);
UNICON's guards that replace ``inf`` by 1 inside ``SupConLoss`` never trigger on finite
inputs and are omitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisybench.errors import UserError
from noisybench.method import (
    Batch,
    Method,
    MethodContext,
    StepOutput,
    sharpen,
    soft_cross_entropy,
)
from noisybench.method import uniform_prior_penalty as prior_penalty

__all__ = [
    "DULC",
    "DULCNetwork",
    "classwise_minmax",
    "corrected_target",
    "correction_weight",
    "decay_beta",
    "js_divergence_to_label",
    "mix",
    "sharpen",
    "unicon_contrastive_loss",
    "uniform_prior_penalty",
]

_LN2 = math.log(2.0)


def js_divergence_to_label(probs: Tensor, labels: Tensor) -> Tensor:
    """Per-sample ``JSD(one_hot(labels), probs)`` in bits, Eq. 5 (depends only on ``p_{y~}``):
    ``1/2 p log2 p - 1/2 (1 + p) log2(1 + p) + 1``; 1 when ``p_{y~} = 0``, 0 when it is 1."""
    p = probs.float().gather(1, labels[:, None].long())[:, 0].clamp(0.0, 1.0)
    return 1.0 + 0.5 * torch.xlogy(p, p) / _LN2 - 0.5 * (1.0 + p) * torch.log2(1.0 + p)


def classwise_minmax(values: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Eq. 7-8: ``(v_i - min_c) / (max_c - min_c)`` with the minimum and maximum over the
    samples of ``i``'s class ``c = labels[i]``; 0 where ``max_c == min_c``."""
    labels = labels.long()
    fill = values.new_full((num_classes,), float("inf"))
    low = fill.scatter_reduce(0, labels, values, reduce="amin")
    high = (-fill).scatter_reduce(0, labels, values, reduce="amax")
    span = (high - low)[labels]
    norm = (values - low[labels]) / span.clamp(min=torch.finfo(values.dtype).tiny)
    return torch.where(span > 0, norm, torch.zeros_like(norm))


def decay_beta(epoch: int, a: float, decay_epochs: int) -> float:
    """Eq. 11: ``beta_t = 1{t <= N} a (1 - t / N)``."""
    if decay_epochs <= 0 or epoch > decay_epochs:
        return 0.0
    return a * (1.0 - epoch / decay_epochs)


def correction_weight(jsd_norm: Tensor, beta: float, gamma: float) -> Tensor:
    """Eq. 10: ``alpha = (1 - beta) JSD_norm + gamma beta`` (``gamma beta``: the floor)."""
    return (1.0 - beta) * jsd_norm + gamma * beta


def corrected_target(alpha: Tensor, p_hat: Tensor, labels: Tensor) -> Tensor:
    """Eq. 6 / 9: ``y^ = alpha p^ + (1 - alpha) one_hot(y~)``; ``alpha`` of shape ``(B,)``."""
    onehot = F.one_hot(labels.long(), p_hat.shape[1]).to(p_hat.dtype)
    a = alpha.to(p_hat.dtype)[:, None]
    return a * p_hat + (1.0 - a) * onehot


def mix(x: Tensor, y: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """MixUp (Zhang et al. 2018, Eq. 1): ``lam x + (1 - lam) x[perm]`` and the same for
    ``y``; ``lam`` a 0-d tensor."""
    lx, ly = lam.to(x.dtype), lam.to(y.dtype)
    return lx * x + (1.0 - lx) * x[perm], ly * y + (1.0 - ly) * y[perm]


def unicon_contrastive_loss(z1: Tensor, z2: Tensor, temperature: float = 0.05) -> Tensor:
    """UNICON's unsupervised contrastive loss (``SupConLoss`` without labels, mode ``all``,
    ``base_temperature == temperature``) of two views' projections ``(B, d)``: the rows are
    L2-normalised, each of the 2B rows is an anchor whose positive is its other view and whose
    contrast set is every other row; the loss is the mean of ``-log softmax`` of the positive."""
    f = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = f @ f.t() / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=f.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(f.device)
    return F.cross_entropy(sim, positive)


def uniform_prior_penalty(logits: Tensor) -> Tensor:
    """UNICON's / DivideMix's regulariser ``sum_k pi_k log(pi_k / mean_rows softmax_k)`` with
    the uniform prior ``pi = 1/K`` (``Train_cifar.py`` ``train``: ``penalty``). Not in DULC's
    Eq. 12; used only with ``prior_penalty: true``."""
    return prior_penalty(logits.float().softmax(dim=1))


class DULCNetwork(nn.Module):
    """The run's network plus UNICON's projection head (``Linear(D, 128)``, ``BatchNorm1d``).

    ``forward(x)`` returns the logits of ``model`` unchanged; ``forward(x, heads=True)`` returns
    ``(logits, projection)`` from one pass, the projection taken on the input of the model's
    final linear layer ``model.head`` (the pooled features, as UNICON's ``projection_head``),
    read by a forward pre-hook on ``head``: the model's own forward runs unchanged (the small
    models apply their dropout, if any, between ``forward_features`` and ``head``, so
    ``head(forward_features(x))`` would not be their logits), and one pass gives both.
    """

    def __init__(self, model: nn.Module, proj_dim: int = 128) -> None:
        super().__init__()
        self.model = model
        self.projection = nn.Sequential(
            nn.Linear(int(model.num_features), proj_dim), nn.BatchNorm1d(proj_dim)
        )
        self._capturing = False
        self._captured: list[Tensor] = []
        model.head.register_forward_pre_hook(self._capture)

    def _capture(self, _module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if self._capturing:
            self._captured.append(args[0])

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if not heads:
            return self.model(x)
        self._capturing, self._captured = True, []
        try:
            logits = self.model(x)
        finally:
            self._capturing = False
        (features,) = self._captured
        self._captured = []
        return logits, self.projection(features)


class DULC(Method):
    """Dynamic and uniform label correction (see the module docstring for the equations and
    the choices where the paper is silent).

    Args:
        warm_up: epochs of cross-entropy on the weak view before label correction (UNICON's
            code: 10 CIFAR-10, 30 CIFAR-100).
        temperature: sharpening temperature T, Eq. 4 (0.5).
        decay_a: ``a`` of Eq. 11, the initial ``beta`` (0.4).
        gamma: ``gamma`` of Eq. 10, the floor's scale (0.5; with ``a = 0.4`` the paper's
            example range [0.2, 0.8] at t = 0).
        decay_epochs: ``N`` of Eq. 11 (100; not stated in the main text).
        mixup_alpha: MixUp's Beta(alpha, alpha) (4, UNICON's).
        lambda_c: weight of the contrastive loss, Eq. 12 (0.025, UNICON's ``lambda_c``).
        contrastive_temperature: UNICON ``SupConLoss`` temperature (0.05).
        proj_dim: width of the projection (128).
        prior_penalty: add UNICON's uniform-prior penalty on the mixed rows' mean prediction
            (:func:`uniform_prior_penalty`); not in the paper's Eq. 12, so off by default. On
            digits at 80 % noise it keeps the network from collapsing onto one class
            (docs/baselines.md).
    """

    views = ("weak", "strong", "strong_2")

    def __init__(  # noqa: PLR0913
        self,
        warm_up: int = 10,
        temperature: float = 0.5,
        decay_a: float = 0.4,
        gamma: float = 0.5,
        decay_epochs: int = 100,
        mixup_alpha: float = 4.0,
        lambda_c: float = 0.025,
        contrastive_temperature: float = 0.05,
        proj_dim: int = 128,
        prior_penalty: bool = False,
    ) -> None:
        super().__init__()
        if int(warm_up) < 0 or int(decay_epochs) < 0 or int(proj_dim) < 1:
            raise UserError(
                f"method.warm_up={warm_up}, decay_epochs={decay_epochs} and proj_dim={proj_dim} "
                "must be >= 0, >= 0 and >= 1; e.g. 10, 100 and 128"
            )
        if not (0.0 <= float(decay_a) <= 1.0 and 0.0 <= float(gamma) <= 1.0):
            raise UserError(
                f"method.decay_a={decay_a} and method.gamma={gamma} must lie in [0, 1] (so "
                "that alpha stays in [0, 1]); e.g. 0.4 and 0.5"
            )
        if min(float(temperature), float(mixup_alpha), float(contrastive_temperature)) <= 0:
            raise UserError(
                f"method.temperature={temperature}, mixup_alpha={mixup_alpha} and "
                f"contrastive_temperature={contrastive_temperature} must be positive; "
                "e.g. 0.5, 4 and 0.05"
            )
        if float(lambda_c) < 0:
            raise UserError(f"method.lambda_c={lambda_c} must be >= 0; e.g. 0.025")
        self.warm_up = int(warm_up)
        self.temperature = float(temperature)
        self.decay_a = float(decay_a)
        self.gamma = float(gamma)
        self.decay_epochs = int(decay_epochs)
        self.mixup_alpha = float(mixup_alpha)
        self.lambda_c = float(lambda_c)
        self.contrastive_temperature = float(contrastive_temperature)
        self.proj_dim = int(proj_dim)
        self.prior_penalty = bool(prior_penalty)
        self.noisy: Tensor
        self.alpha: Tensor

    def network(self, model: nn.Module) -> nn.Module:
        """The run's model with UNICON's projection head (:class:`DULCNetwork`)."""
        return DULCNetwork(model, self.proj_dim)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.register_buffer("noisy", ctx.noisy_labels.clone(), persistent=False)
        self.register_buffer("alpha", torch.zeros(ctx.num_samples, device=ctx.device))

    # ------------------------------------------------------------------ Eq. 5-11, per epoch
    @torch.no_grad()
    def weights(self, logits: Tensor, epoch: int) -> Tensor:
        """``alpha_i`` of every sample (Eq. 5, 7, 8, 10, 11) from the ``(N, K)`` logits."""
        jsd = js_divergence_to_label(logits.float().softmax(dim=1), self.noisy)
        norm = classwise_minmax(jsd, self.noisy, self.num_classes)
        beta = decay_beta(epoch, self.decay_a, self.decay_epochs)
        return correction_weight(norm, beta, self.gamma)

    @torch.no_grad()
    def on_epoch_start(
        self, model: nn.Module, epoch: int, evaluate_train: Callable[[nn.Module], Tensor]
    ) -> None:
        """One pass over the training set (eval mode, plain view) gives every ``alpha_i``."""
        if epoch < self.warm_up:
            return
        self.alpha.copy_(self.weights(evaluate_train(model), epoch))

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> dict[str, Tensor]:
        if epoch < self.warm_up:
            return {}
        return {"alpha_mean": self.alpha.mean()}

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        if epoch < self.warm_up:
            return self._warm_up(model, batch)
        return self._correct(model, batch)

    def _warm_up(self, model: nn.Module, batch: Batch) -> StepOutput:
        """Cross-entropy on the weak view (UNICON's ``warmup_standard``). The projection is
        computed and added with weight 0 so that every parameter is in the graph (data-parallel
        training requires it)."""
        logits, proj = model(batch.views["weak"], heads=True)
        loss = F.cross_entropy(logits.float(), batch.target) + 0.0 * proj.float().sum()
        zero = torch.zeros((), device=logits.device)
        return StepOutput(loss=loss, logits=logits, extras={"l_ce": loss.detach(), "l_c": zero})

    def _correct(self, model: nn.Module, batch: Batch) -> StepOutput:
        xw, xs1, xs2 = batch.views["weak"], batch.views["strong"], batch.views["strong_2"]
        with torch.no_grad():
            weak_logits = model(xw)
            p_hat = sharpen(weak_logits.float().softmax(dim=1), self.temperature)
            target = corrected_target(self.alpha[batch.idx], p_hat, batch.target)
        n = xs1.shape[0]
        _, proj = model(torch.cat([xs1, xs2]), heads=True)
        l_c = unicon_contrastive_loss(proj[:n], proj[n:], self.contrastive_temperature)
        inputs, targets = torch.cat([xs1, xs2]), torch.cat([target, target])
        lam = self._sample_lam(xs1.device)
        perm = torch.randperm(inputs.shape[0], device=xs1.device)
        mixed_x, mixed_y = mix(inputs, targets, lam, perm)
        mixed_logits = model(mixed_x).float()
        l_ce = soft_cross_entropy(mixed_logits, mixed_y)
        loss = l_ce + self.lambda_c * l_c
        extras = {"l_ce": l_ce.detach(), "l_c": l_c.detach()}
        if self.prior_penalty:
            penalty = uniform_prior_penalty(mixed_logits)
            loss = loss + penalty
            extras["penalty"] = penalty.detach()
        return StepOutput(loss=loss, logits=weak_logits, extras=extras)

    def _sample_lam(self, device: torch.device) -> Tensor:
        """``lambda ~ Beta(a, a)``, ``max(lambda, 1 - lambda)`` (UNICON), on the device."""
        conc = torch.full((2,), self.mixup_alpha, device=device)
        lam = torch.distributions.Beta(conc[0], conc[1], validate_args=False).sample()
        return torch.maximum(lam, 1.0 - lam)
