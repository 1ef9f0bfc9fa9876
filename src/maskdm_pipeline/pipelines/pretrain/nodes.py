"""Masked pre-training nodes (METHOD.md sections 1-2): MDSM on the visible patches only."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.imaging import convert_images
from maskdm_pipeline.params import PretrainParams
from maskdm_pipeline.train_stage import train_stage
from maskdm_pipeline.training.config import DiffusionConfig, ModelParams

logger = logging.getLogger(__name__)


def pretrain_data(
    primary_train: Mapping[str, Any],
    raw_pretrain_images: Mapping[str, Any],
    params: PretrainParams,
    preprocess: Mapping[str, Any],
) -> dict[str, Any]:
    """The images to pre-train on.

    ``pretrain.data: target`` (default) pre-trains on the training split itself;
    ``source`` pre-trains on the catalog entry ``raw_pretrain_images``, converted exactly like
    the target (same resolution and channels, so the weights transfer), as in the paper's
    VGGFace2 -> CelebA-HQ transfer runs (METHOD.md section 4.4).
    """
    if params.data == "target":
        return dict(primary_train)
    converted = convert_images(raw_pretrain_images, preprocess)
    logger.info("pretrain: %d source images from raw_pretrain_images (%s)", len(converted["images"]),
                converted["source"])
    return {"images": converted["images"], "labels": converted["labels"]}


def pretrain(
    images: Mapping[str, Any],
    params: PretrainParams,
    model: ModelParams,
    diffusion: DiffusionConfig,
    trainer: Mapping[str, Any],
    slot: CheckpointSlot,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Pre-train with ``pretrain.mask_*`` masks; returns (checkpoint, history, accounting)."""
    return train_stage("pretrain", images, params, model, diffusion, trainer, slot)
