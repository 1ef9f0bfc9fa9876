"""Masked pre-training nodes (METHOD.md sections 1-2): MDSM on the visible patches only."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.params import PretrainParams
from maskdm_pipeline.train_stage import num_classes, train_stage
from maskdm_pipeline.training.config import DiffusionConfig, ModelParams, TrainerConfig

logger = logging.getLogger(__name__)


def pretrain_data(
    primary_train: Mapping[str, Any],
    pretrain_source: Mapping[str, Any],
    params: PretrainParams,
    class_conditional: bool = False,
) -> Mapping[str, Any]:
    """The images to pre-train on.

    ``class_conditional`` (``model.class_conditional``): the training split must have labels,
    checked here, before pre-training, even when pre-training itself uses none
    (``pretrain.use_labels: false``), so that an unlabelled run stops before any work.

    ``pretrain.data: target`` (default) pre-trains on the training split itself;
    ``source`` on ``raw_pretrain_images``, which preprocessing converted exactly like the target
    (same resolution and channels, so the weights transfer) into the ``pretrain_source`` shards,
    as in the paper's VGGFace2 -> CelebA-HQ transfer runs (METHOD.md section 4.4).

    Raises:
        ValueError: ``source`` is asked for but preprocessing ran with ``target`` (no images).
    """
    if class_conditional:
        num_classes("pretrain", primary_train)  # raises UnlabelledDataError
    if params.data == "target":
        return primary_train
    images = pretrain_source["images"]
    if len(images) == 0:
        where = getattr(images, "folder", "pretrain_source")
        raise ValueError(
            f"pretrain.data=source, but {where} holds no images: preprocessing ran with "
            "pretrain.data=target. Rerun `kedro run --pipelines preprocess --params pretrain.data=source` "
            "(or set it in conf/<env>/parameters.yml) first."
        )
    logger.info("pretrain: %d source images from raw_pretrain_images", len(images))
    return pretrain_source


def pretrain(
    images: Mapping[str, Any],
    params: PretrainParams,
    model: ModelParams,
    diffusion: DiffusionConfig,
    trainer: TrainerConfig,
    slot: CheckpointSlot,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Pre-train with ``pretrain.mask`` masks; returns (checkpoint, history, accounting). A
    class-conditional model is pre-trained with its labels unless ``pretrain.use_labels`` is false."""
    return train_stage("pretrain", images, params, model, diffusion, trainer, slot, mask=params.mask,
                       use_labels=params.use_labels)
