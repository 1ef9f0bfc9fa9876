"""Guidance: one denoiser made of two passes of the same network (pure torch, no Kedro).

Every mode combines a strong and a weak prediction the way DiT (``sample.py``,
``forward_with_cfg``: ``uncond + s (cond - uncond)``) and EDM2 (``generate_images.py``: the
guiding network's output moved towards the main one's, ``lerp`` by w) do::

    D_w = D_weak + w (D_strong - D_weak)

w = 1 is no guidance (only the strong pass runs) and w = 0 the weak branch alone. U-ViT writes
``cond + s (cond - uncond)`` (``eval_ldm_discrete.py``), so its scale s is w - 1 here: its
ImageNet-256 setting s = 0.4 is w = 1.4.

The strong pass is the network on every token with the asked label (no label at all for an
unconditional model). The weak pass (``mode``):

- ``cfg``, classifier-free guidance (Ho & Salimans 2021): the same network with the "no label"
  class (``UViT.null_class``), which label dropout trained. Needs a class-conditional model.
- ``sparse``, sparse guidance (Krause et al., "Guiding Token-Sparse Diffusion Models", CVPR 2026):
  the same network with the same label on a random (1 - r) of its patch tokens, r =
  ``sparse_mask_ratio``. MaskDM's network has no decoder, so the weak pass predicts its visible
  patches only: guidance acts on those, and the masked patches keep the strong prediction (w = 1
  there). Every step draws a new mask, so each patch is guided on about (1 - r) of the steps, and
  the weak pass costs about (1 - r) of a forward pass (:func:`sampling_flops`). Masks are of the
  ``patch`` kind (uniform over the grid, exactly floor(r N) masked: block masks leave few choices on
  small grids, 4 blocks at 16 tokens, and can realise less than r), drawn from each sample's own
  generator stream (:meth:`~maskdm_pipeline.diffusion.PerSampleGenerator.other_stream`), so they
  do not depend on the batch and do not shift the sample's noise. For an unconditional model this
  is autoguidance in EDM2's sense (Karras et al., NeurIPS 2024: guiding a model with a bad version
  of itself), the bad version here being the same weights on fewer tokens.

``interval`` = (lo, hi]: guidance acts only at steps whose noise level sigma_t =
sqrt((1 - abar_t) / abar_t) lies in it, and elsewhere the strong pass runs alone, as Kynkäänniemi
et al. (NeurIPS 2024, "Applying guidance in a limited interval") do on EDM2. The unit is EDM's
sigma and not the timestep because sigma is the noise level itself: a timestep window would mean
other noise levels under the linear and the cosine schedules, and the published intervals (in
sigma) carry over as they are. None: every step.

The combination is made on the network's output, whatever it predicts: at fixed x_t and t, eps, x0
and v are affine functions of each other with the same coefficients for both branches, so
``weak + w (strong - weak)`` is the same guided denoiser in every parameterisation (DiT combines
eps, EDM2 the denoised image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from maskdm_pipeline.diffusion.schedules import NoiseSchedule, PerSampleGenerator
from maskdm_pipeline.masking import draw_masks, mask_count
from maskdm_pipeline.models.flops import uvit_flops
from maskdm_pipeline.models.patching import keep_visible, patchify, unpatchify

__all__ = ["GUIDANCE_MODES", "Guidance", "GuidedDenoiser", "noise_levels", "sampling_flops"]

GUIDANCE_MODES = ("cfg", "sparse")
MASK_STREAM = 1  # the per-sample generator stream of sparse guidance's masks (stream 0: the noise)


@dataclass(frozen=True)
class Guidance:
    """How to guide: ``scale`` w >= 0 (1: none), ``mode`` (module docstring), ``interval``
    (lo, hi] of sigma or None (every step), ``sparse_mask_ratio`` r in [0, 1) for ``sparse``."""

    scale: float = 1.0
    mode: str = "cfg"
    interval: tuple[float, float] | None = None
    sparse_mask_ratio: float = 0.75

    @property
    def active(self) -> bool:
        """Whether a weak pass runs at all (w != 1)."""
        return self.scale != 1.0

    def check(self, model: nn.Module, prefix: str = "sample") -> None:
        """Refuse settings this model cannot take, naming the parameter (``<prefix>.guidance`` ...).

        Raises:
            ValueError: an unknown mode, w < 0, a bad interval, ``cfg`` guidance of an
                unconditional model, or a sparse ratio that leaves no patch visible.
        """
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"{prefix}.guidance must be one of {', '.join(GUIDANCE_MODES)}; got {self.mode!r}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"{prefix}.guidance_scale must be a finite number >= 0 (1: no guidance); "
                             f"got {self.scale!r}")
        if self.interval is not None:
            lo, hi = self.interval
            if not 0 <= lo < hi:
                raise ValueError(f"{prefix}.guidance_interval must be [lo, hi] with 0 <= lo < hi (noise levels "
                                 f"sigma); got {list(self.interval)}")
        if self.active and self.mode == "cfg" and not getattr(model, "conditional", False):
            raise ValueError(f"{prefix}.guidance=cfg with {prefix}.guidance_scale={self.scale:g} needs a "
                             "class-conditional model (its weak branch is the 'no label' pass); this one is "
                             f"unconditional: use {prefix}.guidance=sparse, or {prefix}.guidance_scale=1")
        if self.mode == "sparse":
            self.check_ratio(int(model.grid_size), prefix)

    def check_ratio(self, grid_size: int, prefix: str = "sample") -> None:
        """Refuse a sparse ratio that leaves no patch of the ``grid_size`` x ``grid_size`` grid
        visible (masking.py's count rule).

        Raises:
            ValueError: naming ``<prefix>.sparse_mask_ratio``.
        """
        try:
            mask_count("patch", grid_size, self.sparse_mask_ratio)
        except ValueError:
            raise ValueError(f"{prefix}.sparse_mask_ratio={self.sparse_mask_ratio!r} must be in [0, 1) and leave "
                             f"at least one patch of the {grid_size}x{grid_size} grid visible") from None

    def guided_at(self, sigma: float) -> bool:
        """Whether a step at noise level ``sigma`` is guided (w != 1 and sigma in the interval)."""
        if not self.active:
            return False
        return self.interval is None or self.interval[0] < sigma <= self.interval[1]


def noise_levels(schedule: NoiseSchedule) -> list[float]:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1: EDM's noise level of each VP step
    (Karras et al. 2022, the VP -> VE change of variables), read once as Python floats."""
    return [math.sqrt((1.0 - abar) / abar) for abar in schedule.alphas_cumprod.tolist()]


class GuidedDenoiser(nn.Module):
    """``denoiser(x, t) -> prediction``: the model's guided output for one batch, a drop-in for the
    model in every sampler (they call ``model(x, t)``; diffusion/samplers.py).

    Args:
        model: the U-ViT (any module with ``forward(x, t, mask=None, *, labels=None)``,
            ``conditional``, ``null_class``, ``patch_size``, ``in_chans`` and ``grid_size``).
        guidance: the settings (checked here against the model, :meth:`Guidance.check`).
        schedule: the noise schedule (for the interval's sigma).
        labels: int64 (B,) classes of a conditional model's samples, or None (unconditional).
        generator: the batch's per-sample generators; sparse guidance draws its masks from their
            mask stream. Needed for ``sparse`` only.
    """

    def __init__(self, model: nn.Module, guidance: Guidance, schedule: NoiseSchedule,
                 labels: torch.Tensor | None = None, generator: PerSampleGenerator | None = None) -> None:
        super().__init__()
        guidance.check(model)
        self.model, self.guidance, self.labels = model, guidance, labels
        self.sigmas = noise_levels(schedule)
        self.masks = None
        if guidance.mode == "sparse" and guidance.active:
            if generator is None:
                raise ValueError("sparse guidance draws its masks from the samples' own generators: pass generator")
            self.masks = generator.other_stream(MASK_STREAM)

    def _pass(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
              labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, t, mask, **({} if labels is None else {"labels": labels}))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), t int64 (B,) -> the guided prediction (B, C, H, W)."""
        strong = self._pass(x, t, labels=self.labels)  # (B, C, H, W)
        inside = torch.tensor([self.guidance.guided_at(self.sigmas[int(s)]) for s in t.tolist()], device=x.device)
        if not bool(inside.any()):
            return strong
        w = self.guidance.scale
        if self.guidance.mode == "cfg":
            null = torch.full((x.shape[0],), self.model.null_class, dtype=torch.long, device=x.device)
            weak = self._pass(x, t, labels=null)
            guided = weak + w * (strong - weak)
        else:
            guided = self._sparse(x, t, strong, w)
        return torch.where(inside[:, None, None, None], guided, strong)

    def _sparse(self, x: torch.Tensor, t: torch.Tensor, strong: torch.Tensor, w: float) -> torch.Tensor:
        """Guide the patches the weak pass sees (module docstring); the others keep ``strong``."""
        assert self.masks is not None
        grid, p = int(self.model.grid_size), int(self.model.patch_size)
        mask = torch.cat([draw_masks("patch", grid, 1, ratio=self.guidance.sparse_mask_ratio, block_size=None,
                                     crop_size=None, generator=g) for g in self.masks.generators]).to(x.device)
        weak = self._pass(x, t, mask, labels=self.labels)  # (B, N_vis, p*p*C)
        tokens = patchify(strong, p)  # (B, N, p*p*C)
        visible = keep_visible(tokens, mask)  # (B, N_vis, p*p*C)
        tokens = tokens.clone()
        tokens[~mask] = (weak + w * (visible - weak)).reshape(-1, tokens.shape[-1]).to(tokens.dtype)
        return unpatchify(tokens, p, int(self.model.in_chans))


def sampling_flops(model: nn.Module, times: list[int], schedule: NoiseSchedule, guidance: Guidance) -> int:
    """Forward-pass FLOPs per sample of a sampler that calls the model at ``times``
    (``samplers.call_times``): a full pass at every call (``models.flops.uvit_flops``), plus the
    weak pass at the guided ones: a second full pass for ``cfg``, a pass on the (1 - r) N visible
    patches for ``sparse``."""
    full = uvit_flops(model).forward
    weak = full
    if guidance.mode == "sparse":
        n = int(model.num_patches)
        weak = uvit_flops(model, n - mask_count("patch", int(model.grid_size), guidance.sparse_mask_ratio)).forward
    sigmas = noise_levels(schedule)
    guided = sum(guidance.guided_at(sigmas[t]) for t in times)
    return len(times) * full + guided * weak
