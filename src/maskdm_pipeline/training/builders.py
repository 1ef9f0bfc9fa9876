"""What the training loop is built from: the loss, the LR schedule and the start weights. Apart
from training/loop.py so that the loop reads as the algorithm of METHOD.md section 4 and each
piece can be tested on its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from maskdm_pipeline.models.uvit import LABEL_EMBEDDING
from maskdm_pipeline.training.config import DiffusionConfig, MaskConfig

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

    One exception to strictness: a class-conditional model may start from an unconditional model's
    weights, which lack only its label table (``models.uvit.LABEL_EMBEDDING``, the one weight
    the two differ by); that table then keeps its fresh initialisation (``pretrain.use_labels:
    false``, docs/method-in-code.md).

    Raises:
        ValueError: the weights do not fit the model (another preset, size or channels).
    """
    state_dict = weights["model"] if "format" in weights and "model" in weights else weights
    if LABEL_EMBEDDING not in state_dict and LABEL_EMBEDDING in model.state_dict():
        state_dict = {**state_dict, LABEL_EMBEDDING: model.state_dict()[LABEL_EMBEDDING]}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: init_weights do not fit the model built from the model config (same preset, "
            f"image size and channels as the stage that produced them?): {exc}"
        ) from exc
