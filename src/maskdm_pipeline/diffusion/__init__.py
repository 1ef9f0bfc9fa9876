"""Diffusion math (pure torch): schedules, prediction targets, DSM/MDSM losses and samplers."""

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
    "LOSS_WEIGHTINGS",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "DenoisingLoss",
    "MaskedDenoisingLoss",
    "NoiseSchedule",
    "PerSampleGenerator",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "draw_noise",
    "draw_timesteps",
    "get_sampler",
    "loss_weights",
    "make_schedule",
    "sample",
    "sample_seed",
    "solver_time_grid",
    "time_grid",
    "to_x0_eps",
    "training_target",
    "validate_prediction",
    "validate_sampling",
    "validate_weighting",
]
