"""The from-scratch baseline the paper's reviewers asked for: the fine-tuning recipe
(steps, batch, learning rate, schedule) from random weights, so the report can say what the
pre-training bought."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.params import BaselineParams
from maskdm_pipeline.train_stage import num_classes, quality_probe, train_stage
from maskdm_pipeline.training.config import DiffusionConfig, ModelParams, TrainerConfig


def baseline(
    primary_train: Mapping[str, Any],
    params: BaselineParams,
    model: ModelParams,
    diffusion: DiffusionConfig,
    trainer: TrainerConfig,
    slot: CheckpointSlot,
    classifier: Mapping[str, Any],
    reference: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train without masks from random initialisation; returns (checkpoint, history, accounting)."""
    classes = num_classes("baseline", primary_train) if model.class_conditional else None
    probe = quality_probe(params, diffusion, classifier, reference, classes)
    return train_stage("baseline", primary_train, params, model, diffusion, trainer, slot, eval_fn=probe)
