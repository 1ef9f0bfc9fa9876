"""Training objectives: DSM on the whole image and MaskDM's masked DSM (METHOD.md section 1).

The two losses are called as

    DenoisingLoss(...)(model, x0, *, t=None, noise=None, generator=None, labels=None) -> scalar
    MaskedDenoisingLoss(...)(model, x0, mask, *, t=None, noise=None, generator=None, labels=None) -> scalar

and draw t ~ U{0..T-1} and eps ~ N(0, I) from ``generator`` only when they are not given.
The training loop gives them explicitly: it draws them for the global batch from one
generator and hands each DDP rank its slice, so the loss does not depend on the process count.
Each sample's loss is a mean over its own elements, times its timestep weight w(t), and the
batch loss a mean over samples, so the mean of the per-rank losses over equal slices equals the
whole-batch loss. ``labels`` (int64 (B,), a class-conditional model's classes after label
dropout) reach the model as ``model(..., labels=labels)``; None calls the model without them, the
plain model contract.

Timestep weighting (``weighting``, the ``diffusion.loss_weighting`` parameter):

- ``"none"``: w(t) = 1, MaskDM's and DDPM's "L_simple" (METHOD.md 1.7).
- ``"min_snr"``: Min-SNR-gamma (Hang et al., "Efficient Diffusion Training via Min-SNR
  Weighting Strategy", ICCV 2023), see :func:`loss_weights`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maskdm_pipeline.diffusion.prediction import training_target, validate_prediction
from maskdm_pipeline.diffusion.schedules import NoiseSchedule, draw_noise, draw_timesteps
from maskdm_pipeline.models.patching import keep_visible, patchify

LOSS_WEIGHTINGS = ("none", "min_snr")


def validate_weighting(weighting: str, min_snr_gamma: float) -> None:
    """Raise ValueError naming ``diffusion.loss_weighting`` or ``diffusion.min_snr_gamma``.

    gamma is checked whatever the weighting, so a bad value never waits for the day it is used.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"diffusion.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}"
        )
    if (
        isinstance(min_snr_gamma, bool)
        or not isinstance(min_snr_gamma, (int, float))
        or not math.isfinite(min_snr_gamma)
        or min_snr_gamma <= 0
    ):
        raise ValueError(
            "diffusion.min_snr_gamma must be a positive finite number (Hang et al. use 5); "
            f"got {min_snr_gamma!r}"
        )


def loss_weights(
    schedule: NoiseSchedule, prediction: str, weighting: str, min_snr_gamma: float = 5.0
) -> torch.Tensor:
    """w(t) for t = 0..T-1: float64 (T,) on the schedule's device; multiplies each sample's MSE.

    ``"none"`` gives ones. ``"min_snr"`` is Min-SNR-gamma (Hang et al., ICCV 2023), which the
    paper defines on the x0-space loss, with SNR(t) = abar_t / (1 - abar_t)::

        w_x0(t) ||x0 - x0_hat||^2,   w_x0(t) = min(SNR(t), gamma)

    With a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t), x_t = a_t x0 + s_t eps and the inverses of
    ``prediction.py``, the x0 error is a fixed multiple of each target's error:

        eps: x0_hat = (x_t - s_t eps_hat) / a_t  =>  x0 - x0_hat = (s_t / a_t)(eps_hat - eps)
             ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR
             w_eps = min(SNR, gamma) / SNR        = min(1, gamma / SNR)
        x0:  w_x0  = min(SNR, gamma)
        v:   x0_hat = a_t x_t - s_t v_hat, x0 = a_t x_t - s_t v  =>  x0 - x0_hat = s_t (v_hat - v)
             ||x0 - x0_hat||^2 = s_t^2 ||v - v_hat||^2 = ||v - v_hat||^2 / (SNR + 1)
             w_v = min(SNR, gamma) / (SNR + 1)    = min(SNR, gamma) (1 - abar_t)

    (1 / (SNR + 1) = 1 - abar_t because a_t^2 + s_t^2 = 1; v's weight is *not* eps's, the slip
    a widely used library made more than once.) Computed in float64 in the right-hand forms,
    which stay finite for every abar in [0, 1): the cosine schedule's abar_{T-1} ~ 2e-9 gives
    w_eps = 1, w_x0 = SNR ~ 2e-9, w_v ~ 2e-9; SNR(0) ~ 1e4 (linear) or 2.4e4 (cosine) gives
    w_eps = gamma / SNR, w_x0 = gamma, w_v = gamma (1 - abar_0).

    Raises:
        ValueError: unknown ``prediction``, ``weighting`` or a gamma <= 0 (naming the parameter).
    """
    validate_prediction(prediction)
    validate_weighting(weighting, min_snr_gamma)
    abar = schedule.alphas_cumprod.to(torch.float64)
    if weighting == "none":
        return torch.ones_like(abar)
    snr = abar / (1.0 - abar)
    if prediction == "eps":
        return (min_snr_gamma / snr).clamp(max=1.0)
    clipped = snr.clamp(max=min_snr_gamma)  # min(SNR, gamma)
    return clipped if prediction == "x0" else clipped * (1.0 - abar)


def _patch_size(model: nn.Module) -> int:
    """The model's patch size, looking through DDP (.module) and torch.compile (._orig_mod)."""
    inner: object = model
    while not hasattr(inner, "patch_size"):
        if hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        elif hasattr(inner, "module"):
            inner = inner.module
        else:
            raise AttributeError(f"{type(model).__name__} has no patch_size attribute")
    return int(inner.patch_size)


def _label_kwargs(labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``{"labels": labels}`` for a conditional model, ``{}`` otherwise (any model without a
    ``labels`` argument keeps working)."""
    return {} if labels is None else {"labels": labels}


class _Loss:
    """Shared state, the draw of (t, eps) and the weighted reduction.

    Args:
        schedule: the noise schedule (its device is where the weights live).
        prediction: the network's target, one of ``PREDICTIONS`` (``prediction.py``).
        weighting: one of ``LOSS_WEIGHTINGS`` (module docstring).
        min_snr_gamma: gamma of ``"min_snr"``, > 0 (checked for any weighting).

    Attributes:
        weights: float64 (T,) w(t) from :func:`loss_weights`, or None for ``"none"``: no
            multiply at all, so the unweighted loss stays bitwise MaskDM's.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        self.schedule = schedule
        self.prediction = validate_prediction(prediction)
        validate_weighting(weighting, min_snr_gamma)
        self.weighting = weighting
        self.weights = (
            None
            if weighting == "none"
            else loss_weights(schedule, prediction, weighting, min_snr_gamma)
        )

    def _noised(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | None,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, x_t, target) with x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps on the whole image."""
        b = x0.shape[0]
        if t is None:
            t = draw_timesteps(
                b, self.schedule.num_timesteps, generator=generator, device=x0.device
            )
        elif t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        if noise is None:
            noise = draw_noise(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}"
            )
        t = t.to(device=x0.device, dtype=torch.long)
        noise = noise.to(device=x0.device, dtype=x0.dtype)
        x_t = self.schedule.q_sample(x0, t, noise)
        return t, x_t, training_target(self.prediction, self.schedule, x0, noise, t)

    def _reduce(self, out: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mean_b w(t_b) * mean_elements (out_b - target_b)^2; float32 under autocast too.

        ``out`` and ``target`` are (B, ...) of one shape, ``t`` int (B,); returns a float32
        scalar. The weights are gathered in float64 and cast to float32 for the product.
        """
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
        if self.weights is not None:
            w = self.weights[t.to(self.weights.device)]  # (B,) float64
            per_sample = per_sample * w.to(per_sample)
        return per_sample.mean()


class DenoisingLoss(_Loss):
    """Denoising score matching on the whole image (fine-tuning and the from-scratch baseline).

        L_dsm = E_{t, x0, eps} || y - F_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2

    with y = eps, x0 or v by ``prediction`` (Ho et al. 2020 eq. 14, "L_simple"); MSE averaged over
    each sample's C*H*W elements, times w(t) of ``weighting`` (1 by default, METHOD.md 1.7;
    :func:`loss_weights`), then averaged over the batch. Arguments as :class:`_Loss`.
    """

    def __call__(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar float32 loss for images ``x0`` (B, C, H, W); ``t`` int (B,) and ``noise`` like
        ``x0`` are drawn from ``generator`` when not given; ``labels`` int64 (B,) or None."""
        t, x_t, target = self._noised(x0, t, noise, generator)
        out = model(x_t, t, **_label_kwargs(labels))  # (B, C, H, W)
        return self._reduce(out, target, t)


class MaskedDenoisingLoss(_Loss):
    """MaskDM's masked denoising score matching (METHOD.md section 1):

        L_mdsm = E_{t, x0, eps} || y_hat - F_theta(sqrt(abar_t) x0_hat + sqrt(1-abar_t) eps_hat, t) ||^2

    where the hat keeps the visible patches only. Noise is added to the whole image first and the
    model drops the masked tokens itself, which is the same because eps is i.i.d. per pixel (1.1).
    The target is patchified in (p1 p2 c) order and reduced to its visible tokens (1.7); the MSE is
    averaged over each sample's visible elements, times w(t) of ``weighting`` (1 by default, as in
    MaskDM; the same :func:`loss_weights` as the whole-image loss), then over the batch. Masked
    patches carry no loss (no MAE term). With an all-False mask (fine-tuning, ratio 0) this is
    exactly :class:`DenoisingLoss` (1.8).

    ``mask`` is bool (B, N) over the patch grid, True = masked, the same count in every row.

    Args:
        dense_blocks: k of dense-first masking, handed to the model as
            ``model(x_t, t, mask, dense_blocks=k)`` (``models/uvit.py``; checked there against the
            model's depth). k = 0 calls ``model(x_t, t, mask)``, the plain model contract, so any
            model with ``forward(x_t, t, mask=None)`` still works.
        schedule, prediction, weighting, min_snr_gamma: as :class:`_Loss`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        dense_blocks: int = 0,
        weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__(schedule, prediction, weighting=weighting, min_snr_gamma=min_snr_gamma)
        self.dense_blocks = dense_blocks

    def __call__(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mask is None:
            raise ValueError(
                "MaskedDenoisingLoss needs a mask (B, N); use an all-False one for ratio 0"
            )
        p = _patch_size(model)
        n = (x0.shape[-2] // p) * (x0.shape[-1] // p)
        if mask.dtype != torch.bool or mask.shape != (x0.shape[0], n):
            raise ValueError(
                f"mask must be bool of shape ({x0.shape[0]}, {n}); got {mask.dtype} {tuple(mask.shape)}"
            )
        # The mask stays where it was drawn (the CPU in the training loop): the model and
        # keep_visible take the visible positions from it without waiting for the GPU.
        t, x_t, target = self._noised(x0, t, noise, generator)
        dense = {"dense_blocks": self.dense_blocks} if self.dense_blocks else {}
        out = model(x_t, t, mask, **dense, **_label_kwargs(labels))  # (B, N_visible, p*p*C)
        target = keep_visible(patchify(target, p), mask)  # (B, N_visible, p*p*C)
        if out.shape != target.shape:
            raise ValueError(
                f"model returned {tuple(out.shape)} for visible targets {tuple(target.shape)}"
            )
        return self._reduce(out, target, t)
