"""What the training loop is built from: the loss, the LR schedule, the start weights, and the
check that a resumed state fits the run. Apart from training/loop.py so that the loop reads as
the algorithm of METHOD.md section 4 and each piece can be tested on its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from maskdm_pipeline.training.config import (
    DIFFUSION_MODEL_KEYS,
    DiffusionConfig,
    MaskConfig,
    saved_stage_with_defaults,
)

logger = logging.getLogger(__name__)

LossFn = Callable[..., torch.Tensor]


def build_loss(diffusion: DiffusionConfig, mask: MaskConfig | None,
               device: torch.device) -> tuple[LossFn, int]:
    """(loss, T): MDSM for a mask that drops tokens, with its dense blocks; DSM otherwise
    (METHOD.md section 1); both with ``diffusion.loss_weighting``. T = 1000."""
    from maskdm_pipeline import diffusion as dm

    schedule = dm.make_schedule(diffusion.schedule).to(device)
    weighting = {"weighting": diffusion.loss_weighting, "min_snr_gamma": diffusion.min_snr_gamma}
    if mask is not None and mask.drops_tokens:
        loss = dm.MaskedDenoisingLoss(schedule, diffusion.prediction, dense_blocks=mask.dense_blocks,
                                      **weighting)
    else:
        loss = dm.DenoisingLoss(schedule, diffusion.prediction, **weighting)
    return loss, schedule.num_timesteps


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """LR of the ``step``-th update (1-based): lr * min(step / warmup, 1), then constant.

    METHOD.md section 4: linear warm-up, no decay. Counting from 1 makes the first update
    use lr / warmup instead of wasting a step at lr 0.
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(step / warmup_steps, 1.0)


def load_init_weights(model: nn.Module, weights: Mapping[str, Any], name: str) -> None:
    """Load fine-tuning start weights strictly; a checkpoint dict gives its raw ``model``.

    Raises:
        ValueError: the weights do not fit the model (another preset, size or channels).
    """
    state_dict = weights["model"] if "format" in weights and "model" in weights else weights
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: init_weights do not fit the model built from the model config (same preset, "
            f"image size and channels as the stage that produced them?): {exc}"
        ) from exc


def check_resume_config(state: Mapping[str, Any], config: Mapping[str, Any], name: str) -> None:
    """Resuming needs the same model, schedule and prediction target; other changes (the stage's
    recipe, the loss weighting) are only reported.

    The loss weighting is a training choice like the learning rate, not a property of the
    network: a state trained under one weighting is a valid start for another (the resumed run
    then differs from an uninterrupted one, as the warning says). Keys a checkpoint written
    before they existed lacks count as their defaults, which is what it was trained with.

    Raises:
        ValueError: the saved state was trained with another model, schedule or prediction.
    """
    saved = state.get("config", {})
    saved_diffusion = {**DiffusionConfig().to_dict(), **saved.get("diffusion", {})}
    wanted = {"model": config["model"],
              "diffusion": {k: config["diffusion"][k] for k in DIFFUSION_MODEL_KEYS}}
    found = {"model": saved.get("model"),
             "diffusion": {k: saved_diffusion[k] for k in DIFFUSION_MODEL_KEYS}}
    for part in ("model", "diffusion"):
        if found[part] != wanted[part]:
            raise ValueError(
                f"{name}: resume_state was trained with {part} config {found[part]} but this "
                f"run asks for {wanted[part]}; resume with the same config or start afresh"
            )
    saved_stage = saved_stage_with_defaults(saved.get("stage", {}))
    changed = sorted(k for k, v in config["stage"].items()
                     if k != "steps" and saved_stage.get(k) != v)
    changed += sorted(f"diffusion.{k}" for k, v in config["diffusion"].items()
                      if saved_diffusion[k] != v)
    if changed:
        logger.warning("%s: resuming with changed stage settings %s; the continuation will "
                       "differ from an uninterrupted run", name, changed)
