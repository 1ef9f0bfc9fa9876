"""What the network predicts (``diffusion.prediction``) and how to turn any output into (x0, eps).

With a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t) and x_t = a_t x0 + s_t eps
(METHOD.md section 1), the three parameterisations are

    eps : the noise eps                      (Ho et al. 2020; the paper's and configs' choice)
    x0  : the clean image x0                 (the CPU quick start's choice, see DESIGN.md)
    v   : v = a_t eps - s_t x0               (Salimans & Ho 2022, eq. in section 4)

and, because (a_t, s_t) is a rotation (a_t^2 + s_t^2 = 1), the inverses are

    eps -> x0 = (x_t - s_t eps) / a_t
    x0  -> eps = (x_t - a_t x0) / s_t
    v   -> x0 = a_t x_t - s_t v,   eps = s_t x_t + a_t v.
"""

from __future__ import annotations

import torch

from maskdm_pipeline.diffusion.schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")


def validate_prediction(prediction: str) -> str:
    """Return ``prediction`` or raise ValueError naming the ``diffusion.prediction`` parameter."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"diffusion.prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}"
        )
    return prediction


def training_target(
    prediction: str,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """The regression target for ``prediction`` at (x0, eps, t), in x0's dtype."""
    validate_prediction(prediction)
    if prediction == "eps":
        return noise.to(x0.dtype)
    if prediction == "x0":
        return x0
    signal, sigma = schedule.scales(t, x0)
    return signal * noise.to(x0.dtype) - sigma * x0


def to_x0_eps(
    prediction: str,
    schedule: NoiseSchedule,
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model ``output`` of type ``prediction`` at (x_t, t) into (x0_hat, eps_hat).

    Computed in at least float32: under fp16 autocast the model output is half precision
    and eps -> x0 divides by a_t, which is ~6e-3 at t = T-1 on the linear schedule.
    """
    validate_prediction(prediction)
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    out, x = output.to(dtype), x_t.to(dtype)
    signal, sigma = schedule.scales(t, x)
    if prediction == "eps":
        return (x - sigma * out) / signal, out
    if prediction == "x0":
        return out, (x - signal * out) / sigma
    return signal * x - sigma * out, sigma * x + signal * out


def eps_from_x0(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - a_t x0) / s_t: re-derive the noise after x0 was clipped."""
    signal, sigma = schedule.scales(t, x_t)
    return (x_t - signal * x0) / sigma
