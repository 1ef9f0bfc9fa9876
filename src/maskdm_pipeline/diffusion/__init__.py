"""Diffusion math (pure torch): schedules, prediction targets, DSM/MDSM losses, samplers, guidance."""

from maskdm_pipeline.diffusion.guidance import (
    GUIDANCE_MODES,
    Guidance,
    GuidedDenoiser,
    noise_levels,
    sampling_flops,
)
from maskdm_pipeline.diffusion.losses import (
    LOSS_WEIGHTINGS,
    DenoisingLoss,
    MaskedDenoisingLoss,
    loss_weights,
    validate_weighting,
)
from maskdm_pipeline.diffusion.prediction import (
    PREDICTIONS,
    to_x0_eps,
    training_target,
    validate_prediction,
)
from maskdm_pipeline.diffusion.samplers import (
    SAMPLERS,
    call_times,
    ddim,
    ddpm,
    dpmpp_2m,
    get_sampler,
    sample,
    solver_time_grid,
    time_grid,
    validate_sampling,
)
from maskdm_pipeline.diffusion.schedules import (
    SCHEDULES,
    NoiseSchedule,
    PerSampleGenerator,
    draw_noise,
    draw_timesteps,
    make_schedule,
    sample_seed,
)

__all__ = [
    "GUIDANCE_MODES",
    "LOSS_WEIGHTINGS",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "DenoisingLoss",
    "Guidance",
    "GuidedDenoiser",
    "MaskedDenoisingLoss",
    "NoiseSchedule",
    "PerSampleGenerator",
    "call_times",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "draw_noise",
    "draw_timesteps",
    "get_sampler",
    "loss_weights",
    "make_schedule",
    "noise_levels",
    "sample",
    "sample_seed",
    "sampling_flops",
    "solver_time_grid",
    "time_grid",
    "to_x0_eps",
    "training_target",
    "validate_prediction",
    "validate_sampling",
    "validate_weighting",
]
