"""What the training loop is built from: the loss, the LR schedule, the start weights, and the
check that a resumed state fits the run. Apart from training/loop.py so that the loop reads as
the algorithm of METHOD.md section 4 and each piece can be tested on its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from maskdm_pipeline.training.config import DiffusionConfig

logger = logging.getLogger(__name__)

LossFn = Callable[..., torch.Tensor]


def build_loss(diffusion: DiffusionConfig, masked: bool, device: torch.device) -> tuple[LossFn, int]:
    """(loss, T): MDSM for masked stages, DSM otherwise (METHOD.md section 1); T = 1000."""
    from maskdm_pipeline import diffusion as dm

    schedule = dm.make_schedule(diffusion.schedule).to(device)
    loss_cls = dm.MaskedDenoisingLoss if masked else dm.DenoisingLoss
    return loss_cls(schedule, diffusion.prediction), schedule.num_timesteps


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
    """Resuming needs the same model and diffusion; other stage changes are only reported.

    Raises:
        ValueError: the saved state was trained with another model or diffusion config.
    """
    saved = state.get("config", {})
    for part in ("model", "diffusion"):
        if saved.get(part) != config[part]:
            raise ValueError(
                f"{name}: resume_state was trained with {part} config {saved.get(part)} but this "
                f"run asks for {config[part]}; resume with the same config or start afresh"
            )
    changed = sorted(k for k, v in config["stage"].items()
                     if k != "steps" and saved.get("stage", {}).get(k) != v)
    if changed:
        logger.warning("%s: resuming with changed stage settings %s; the continuation will "
                       "differ from an uninterrupted run", name, changed)
