"""Samplers for the discrete VP diffusion (METHOD.md section 5), all with one signature:

    sampler(model, x_T, *, schedule, prediction, steps, eta, generator, clip) -> x_0

- ``ddpm``: ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2, with the posterior
  variance beta~_t); ``steps`` must be None or T, ``eta`` is ignored (it is always 1).
- ``ddim``: the official respaced sampler (Song et al. 2021, eq. 12), time grid
  trunc(linspace(-1, T-1, steps+1)); eta = 1 is the paper's setting, eta = 0 is deterministic.
- ``dpm++2m``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), second-order multistep in the data
  prediction, deterministic; ``eta`` is ignored. Its grid (``solver_time_grid``) is uniform in
  lambda = log-SNR / 2 from t = T-1 down to t = 0, the lowest noise level the model was trained on,
  the DPM-Solver authors' advice for low-resolution images; the last of the ``steps`` model calls
  (at t = 0) only denoises. Uniform-in-t grids (including DDIM's, which jumps from t = T/steps - 1
  straight to the clean image) were measured on Gaussian data, whose exact ODE map is known, to be
  about 10x less accurate at 10-20 steps: they leave a large lambda gap at the low-noise end.

Every sampler walks from t = T-1 down to the "clean" time t = -1 (abar = 1) and its last step
returns the denoised x0_hat, like the official sampler. The model is called with integer
timesteps (B,). With ``clip`` the predicted x0 is clamped to [-1, 1] at every step (static
thresholding) and eps is re-derived from the clamped x0, so that DDIM with eta = 1 on the full
grid is exactly DDPM's posterior step. All randomness comes from ``generator``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from maskdm_pipeline.diffusion.prediction import eps_from_x0, to_x0_eps, validate_prediction
from maskdm_pipeline.diffusion.schedules import Generator, NoiseSchedule, draw_noise

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


class Sampler(Protocol):
    """The signature every sampler shares (k-diffusion style)."""

    def __call__(
        self,
        model: nn.Module,
        x_T: torch.Tensor,
        *,
        schedule: NoiseSchedule,
        prediction: str,
        steps: int | None,
        eta: float,
        generator: Generator | None,
        clip: bool = True,
    ) -> torch.Tensor: ...


def validate_sampling(
    sampler: str, steps: int | None, num_timesteps: int, eta: float = 1.0
) -> None:
    """Refuse bad ``sample.*`` parameters before any work, naming the parameter."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if sampler == "ddpm":
        if steps is not None and steps != num_timesteps:
            raise ValueError(
                f"sample.steps must be null or T={num_timesteps} for the ddpm sampler, which runs "
                f"every step; got {steps!r} (use ddim or dpm++2m for fewer steps)"
            )
    elif isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= num_timesteps:
        raise ValueError(f"sample.steps must be an integer in [1, {num_timesteps}]; got {steps!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"sample.eta must lie in [0, 1]; got {eta!r}")


def time_grid(num_timesteps: int, steps: int) -> list[int]:
    """trunc(linspace(-1, T-1, steps+1)), descending: T-1, ..., -1 (official DDIM grid, METHOD.md 5).

    Computed in exact integer arithmetic: -1 + i*T/steps >= 0 for i >= 1 since steps <= T, so its
    truncation is floor(i*T/steps) - 1, and float rounding cannot shift a grid point.
    """
    return [(i * num_timesteps) // steps - 1 for i in range(steps, -1, -1)]


def solver_time_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """``steps`` integer times from T-1 down to 0, uniform in lambda = log(alpha/sigma), then -1.

    Each lambda target is rounded to the nearest integer t; two passes then make the grid strictly
    decreasing with t_0 = T-1 and t_{steps-1} = 0 where rounding collides (near t = 0 on the linear
    schedule, near T-1 on the cosine one, where lambda moves fastest per integer step).
    """
    T = schedule.num_timesteps
    if steps == 1:
        return [T - 1, -1]
    lam = schedule.log_snr.cpu()
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    grid = [int((lam - v).abs().argmin()) for v in targets]
    for i in range(steps - 2, -1, -1):  # leave room below: t_i >= t_{i+1} + 1
        grid[i] = max(grid[i], grid[i + 1] + 1)
    grid[0] = T - 1
    for i in range(1, steps):  # and above: t_i <= t_{i-1} - 1
        grid[i] = min(grid[i], grid[i - 1] - 1)
    return grid + [-1]


def call_times(sampler: str, schedule: NoiseSchedule, steps: int | None) -> list[int]:
    """The integer times at which ``sampler`` calls the model, in order: one call each, so their
    count is the sampler's network evaluations per sample (what guidance multiplies).

    Raises:
        ValueError: an unknown sampler.
    """
    T = schedule.num_timesteps
    if sampler == "ddpm":
        return list(range(T - 1, -1, -1))
    if sampler == "ddim":
        return time_grid(T, T if steps is None else steps)[:-1]
    if sampler == "dpm++2m":
        return solver_time_grid(schedule, T if steps is None else steps)[:-1]
    raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")


def _alpha_bars(schedule: NoiseSchedule) -> list[float]:
    """abar_t as Python floats, read once per run so steps do not sync with the device."""
    return schedule.alphas_cumprod.tolist()


def _abar(abars: list[float], t: int) -> float:
    """abar_t, with abar_{-1} = 1 (the clean end of the grid)."""
    return abars[t] if t >= 0 else 1.0


def _denoise(
    model: nn.Module,
    x: torch.Tensor,
    t: int,
    schedule: NoiseSchedule,
    prediction: str,
    clip: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from one model call at integer time ``t``."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0, eps = to_x0_eps(prediction, schedule, model(x, tt), x, tt)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = eps_from_x0(schedule, x0, x, tt)
    return x0, eps


@torch.inference_mode()
def ddpm(
    model: nn.Module,
    x_T: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    prediction: str,
    steps: int | None = None,
    eta: float = 1.0,
    generator: Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM: x_{t-1} = mu~_t(x_t, x0_hat) + sqrt(beta~_t) z (Ho et al. 2020, eqs. 6-7),
    over all T steps; the t = 0 step returns mu~_0 = x0_hat. ``steps``/``eta`` are not used."""
    abars, betas = _alpha_bars(schedule), schedule.betas.tolist()
    x = x_T.float()
    for t in range(schedule.num_timesteps - 1, -1, -1):
        x0, _ = _denoise(model, x, t, schedule, prediction, clip)
        if t == 0:
            return x0
        abar, abar_prev, beta = abars[t], abars[t - 1], betas[t]
        # Posterior q(x_{t-1} | x_t, x0) mean coefficients and variance (DDPM eq. 7).
        c_x0 = beta * math.sqrt(abar_prev) / (1.0 - abar)
        c_xt = (1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar)
        var = beta * (1.0 - abar_prev) / (1.0 - abar)
        z = draw_noise(x.shape, generator=generator, device=x.device)
        x = c_x0 * x0 + c_xt * x + math.sqrt(var) * z
    return x


@torch.inference_mode()
def ddim(
    model: nn.Module,
    x_T: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    prediction: str,
    steps: int | None = 250,
    eta: float = 1.0,
    generator: Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """DDIM on the respaced grid (Song et al. 2021 eq. 12; METHOD.md section 5). For t -> t':

        sigma = eta sqrt((1 - abar/abar') (1 - abar') / (1 - abar))
        x'    = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma z

    and the last step (t' = -1) returns x0_hat. No noise is drawn when eta = 0.
    """
    T = schedule.num_timesteps
    grid = time_grid(T, T if steps is None else steps)
    abars = _alpha_bars(schedule)
    x = x_T.float()
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x0, eps = _denoise(model, x, t, schedule, prediction, clip)
        if t_next < 0:
            return x0
        abar, abar_next = _abar(abars, t), _abar(abars, t_next)
        sigma = eta * math.sqrt((1.0 - abar / abar_next) * (1.0 - abar_next) / (1.0 - abar))
        x = math.sqrt(abar_next) * x0 + math.sqrt(max(1.0 - abar_next - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * draw_noise(x.shape, generator=generator, device=x.device)
    return x


@torch.inference_mode()
def dpmpp_2m(
    model: nn.Module,
    x_T: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    prediction: str,
    steps: int | None = 20,
    eta: float = 0.0,
    generator: Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the discrete schedule.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and
    h_i = lambda_{t_i} - lambda_{t_{i-1}}, each step is

        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i,
        D_i = (1 + 1/(2 r_i)) x0_hat(t_{i-1}) - 1/(2 r_i) x0_hat(t_{i-2}),  r_i = h_{i-1} / h_i,

    first order (D_1 = x0_hat, i.e. DDIM with eta = 0) on the first step, on the grid of
    :func:`solver_time_grid`. The last step goes from t = 0 to t = -1 where sigma = 0 and
    lambda = +inf; there the update reduces to x0_hat, which is returned.
    Deterministic: ``eta`` and ``generator`` are not used.
    """
    T = schedule.num_timesteps
    grid = solver_time_grid(schedule, T if steps is None else steps)
    abars = _alpha_bars(schedule)

    def lam(t: int) -> float:
        abar = abars[t]
        return 0.5 * (math.log(abar) - math.log1p(-abar))

    x = x_T.float()
    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x0, _ = _denoise(model, x, t, schedule, prediction, clip)
        if t_next < 0:
            return x0
        abar, abar_next = _abar(abars, t), _abar(abars, t_next)
        h = lam(t_next) - lam(t)
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
        sigma_ratio = math.sqrt((1.0 - abar_next) / (1.0 - abar))
        x = sigma_ratio * x - math.sqrt(abar_next) * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


_SAMPLER_FNS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "dpm++2m": dpmpp_2m}


def get_sampler(name: str) -> Sampler:
    """The sampler function registered under ``name`` (one of SAMPLERS)."""
    if name not in _SAMPLER_FNS:
        raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return _SAMPLER_FNS[name]


def sample(
    model: nn.Module,
    shape: tuple[int, ...],
    *,
    schedule: NoiseSchedule,
    prediction: str,
    sampler: str,
    steps: int | None,
    eta: float = 1.0,
    generator: Generator | None = None,
    device: torch.device | str | None = None,
    clip: bool = True,
    check: bool = True,
) -> torch.Tensor:
    """Draw x_T ~ N(0, I) of ``shape`` (B, C, H, W) from ``generator`` and run ``sampler``.

    ``device`` defaults to the model's parameters' device. The model is called under
    ``torch.inference_mode`` and as it is (put it in eval mode and pick EMA weights first).
    Returns float32 (B, C, H, W) clamped to [-1, 1]; the same generator seed gives the same
    samples. ``check=False`` skips :func:`validate_sampling`, for a caller that checked the
    settings once for many batches (``generation.generate``).

    Raises:
        ValueError: an unknown prediction, sampler, or steps/eta outside what it takes.
    """
    validate_prediction(prediction)
    if check:
        validate_sampling(sampler, steps, schedule.num_timesteps, eta)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    schedule = schedule.to(device)  # gathers then stay on the device, no per-step host sync
    x_T = draw_noise(shape, generator=generator, device=device)
    fn = get_sampler(sampler)
    x0 = fn(
        model,
        x_T,
        schedule=schedule,
        prediction=prediction,
        steps=steps,
        eta=eta,
        generator=generator,
        clip=clip,
    )
    return x0.clamp(-1.0, 1.0)
