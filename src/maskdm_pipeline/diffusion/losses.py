"""Training objectives: DSM on the whole image and MaskDM's masked DSM (METHOD.md section 1).

The two losses are called as

    DenoisingLoss(...)(model, x0, *, t=None, noise=None, generator=None) -> scalar
    MaskedDenoisingLoss(...)(model, x0, mask, *, t=None, noise=None, generator=None) -> scalar

and draw t ~ U{0..T-1} and eps ~ N(0, I) from ``generator`` only when they are not given.
The training loop gives them explicitly: it draws them for the global batch from one
generator and hands each DDP rank its slice, so the loss does not depend on the process count.
Each sample's loss is a mean over its own elements and the batch loss a mean over samples, so
the mean of the per-rank losses over equal slices equals the whole-batch loss.
"""

from __future__ import annotations

import torch
from torch import nn

from maskdm_pipeline.diffusion.prediction import training_target, validate_prediction
from maskdm_pipeline.diffusion.schedules import NoiseSchedule, draw_noise, draw_timesteps
from maskdm_pipeline.models.patching import keep_visible, patchify


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


class _Loss:
    """Shared state and the draw of (t, eps)."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        self.schedule = schedule
        self.prediction = validate_prediction(prediction)

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

    def _reduce(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over each sample's elements, then over samples; float32 under autocast too.

        ``out`` and ``target`` are (B, ...) of one shape; returns a float32 scalar.
        """
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
        return per_sample.mean()


class DenoisingLoss(_Loss):
    """Denoising score matching on the whole image (fine-tuning and the from-scratch baseline).

        L_dsm = E_{t, x0, eps} || y - F_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2

    with y = eps, x0 or v by ``prediction`` (Ho et al. 2020 eq. 14, "L_simple"); MSE averaged over
    each sample's C*H*W elements, then over the batch; no timestep weighting (METHOD.md 1.7).
    """

    def __call__(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar float32 loss for images ``x0`` (B, C, H, W); ``t`` int (B,) and ``noise`` like
        ``x0`` are drawn from ``generator`` when not given."""
        t, x_t, target = self._noised(x0, t, noise, generator)
        out = model(x_t, t)  # (B, C, H, W)
        return self._reduce(out, target)


class MaskedDenoisingLoss(_Loss):
    """MaskDM's masked denoising score matching (METHOD.md section 1):

        L_mdsm = E_{t, x0, eps} || y_hat - F_theta(sqrt(abar_t) x0_hat + sqrt(1-abar_t) eps_hat, t) ||^2

    where the hat keeps the visible patches only. Noise is added to the whole image first and the
    model drops the masked tokens itself, which is the same because eps is i.i.d. per pixel (1.1).
    The target is patchified in (p1 p2 c) order and reduced to its visible tokens (1.7); the MSE is
    averaged over each sample's visible elements, then over the batch. Masked patches carry no loss
    (no MAE term) and there is no timestep weighting. With an all-False mask (fine-tuning, ratio 0)
    this is exactly :class:`DenoisingLoss` (1.8).

    ``mask`` is bool (B, N) over the patch grid, True = masked, the same count in every row.
    """

    def __call__(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
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
        mask = mask.to(x0.device)
        t, x_t, target = self._noised(x0, t, noise, generator)
        out = model(x_t, t, mask)  # (B, N_visible, p*p*C)
        target = keep_visible(patchify(target, p), mask)  # (B, N_visible, p*p*C)
        if out.shape != target.shape:
            raise ValueError(
                f"model returned {tuple(out.shape)} for visible targets {tuple(target.shape)}"
            )
        return self._reduce(out, target)
