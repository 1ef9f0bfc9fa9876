"""Discrete DDPM noise schedules and the forward process (METHOD.md sections 1 and 4).

The forward process is q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with
abar_t = prod_{s <= t} (1 - beta_s) and integer t in {0, ..., T-1}.

Everything is kept in float64 and only cast to the data dtype after the gather: at t near
T-1 the cosine schedule has abar ~ 1e-9, which float32 products would round badly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving schedule.

    Attributes:
        kind: the name it was built from (``linear`` or ``cosine``).
        betas: float64 ``(T,)``, beta_t for t = 0..T-1.
        alphas_cumprod: float64 ``(T,)``, abar_t = prod_{s<=t} (1 - beta_s).
    """

    kind: str
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete steps."""
        return int(self.betas.shape[0])

    @property
    def log_snr(self) -> torch.Tensor:
        """lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t)), DPM-Solver's half log-SNR."""
        return 0.5 * (self.alphas_cumprod.log() - torch.log1p(-self.alphas_cumprod))

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy on ``device``; stays on CPU for MPS, which has no float64."""
        device = torch.device(device)
        if device.type == "mps":
            device = torch.device("cpu")
        return NoiseSchedule(self.kind, self.betas.to(device), self.alphas_cumprod.to(device))

    def scales(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) gathered at integer ``t`` (B,), shaped to broadcast
        against ``like`` (B, ...) and cast to its dtype and device."""
        abar = _gather(self.alphas_cumprod, t, like.ndim)
        signal = abar.sqrt().to(device=like.device, dtype=like.dtype)
        noise = (1.0 - abar).sqrt().to(device=like.device, dtype=like.dtype)
        return signal, noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4), in x0's dtype."""
        signal, sigma = self.scales(t, x0)
        return signal * x0 + sigma * noise.to(x0.dtype)


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] in float64 on the schedule's device, reshaped to (B, 1, ..., 1) with ``ndim`` dims."""
    out = values[t.to(device=values.device, dtype=torch.long)]
    return out.reshape(-1, *([1] * (ndim - 1)))


def _linear_betas(T: int) -> torch.Tensor:
    # Scaled by 1000/T (improved-diffusion's convention) so that abar_{T-1} ~ 4e-5 for any T;
    # at the paper's T = 1000 this is exactly beta from 1e-4 to 0.02.
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal (2021) eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    # and beta_t = 1 - abar(t+1)/abar(t) clipped at 0.999 to avoid the singularity at t = T.
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_schedule(kind: str, T: int = 1000) -> NoiseSchedule:
    """Build the ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021) schedule
    (METHOD.md section 4) with ``T`` discrete steps.

    Raises:
        ValueError: unknown ``kind`` (the ``diffusion.schedule`` parameter) or T too small.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"diffusion.schedule must be one of {', '.join(SCHEDULES)}; got {kind!r}")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"the number of diffusion steps T must be an integer >= 2; got {T!r}")
    betas = _linear_betas(T) if kind == "linear" else _cosine_betas(T)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"T={T} gives betas outside (0, 1) for the {kind} schedule; use a larger T"
        )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return NoiseSchedule(kind, betas, alphas_cumprod)


def draw_timesteps(
    batch_size: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1} as int64 (B,) on ``device`` (METHOD.md section 1).

    Drawn on the generator's own device and then moved, so a CPU generator gives the same
    numbers whatever the training device is.
    """
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """The seed of sample ``index`` of a run seeded with ``seed``: a 64-bit value from NumPy's
    ``SeedSequence([seed, index])``, so (seed, index) pairs never share a stream (``seed + index``
    would: seed 1's sample 0 would be seed 0's sample 1). ``stream`` k > 0 gives the sample's k-th
    other stream, ``SeedSequence([seed, index, k])`` (the masks of sparse guidance), so drawing
    from it leaves the sample's noise untouched."""
    key = [int(seed), int(index)] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


class PerSampleGenerator:
    """One CPU ``torch.Generator`` per sample, seeded by :func:`sample_seed` (EDM's
    ``StackedRandomGenerator``, Karras et al. 2022, ``generate.py``).

    Noise drawn through it is the row-wise stack of each sample's own draws, so sample ``i`` gets
    the same x_T and the same per-step noise whichever batch (or process) it is drawn in: results
    do not depend on the batch size or on how the N samples are sharded. Drawn on the CPU and then
    moved, so the noise is the same on any device.
    """

    def __init__(self, seed: int, indices: range | list[int], stream: int = 0) -> None:
        self.seed = int(seed)
        self.indices = list(indices)
        self.stream = int(stream)
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i, stream)) for i in self.indices]
        self.device = torch.device("cpu")

    def other_stream(self, stream: int) -> PerSampleGenerator:
        """The same samples' ``stream``-th other generators (:func:`sample_seed`)."""
        return PerSampleGenerator(self.seed, self.indices, stream)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """float32 ``shape`` = (B, ...) with B = ``len(self)``; row i from generator i."""
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} samples asked of a generator for {len(self)}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])


# What the samplers draw their noise from: one generator for the batch, or one per sample.
Generator = torch.Generator | PerSampleGenerator


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """eps ~ N(0, I) of ``shape``; drawn in float32 on the generator's device, then moved/cast.

    A :class:`PerSampleGenerator` draws each row from its own sample's generator.
    """
    if isinstance(generator, PerSampleGenerator):
        z = generator.randn(tuple(shape))
    else:
        gen_device = generator.device if generator is not None else device
        z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return z.to(device=device if device is not None else z.device, dtype=dtype)
