"""Masked pre-training node (METHOD.md sections 1-2): MDSM on the visible patches only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.pipelines.training_nodes import train_stage


def pretrain(
    primary_train: Mapping[str, Any],
    params: Mapping[str, Any],
    model: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    trainer: Mapping[str, Any],
    slot: CheckpointSlot,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Pre-train with ``pretrain.mask_*`` masks; returns (checkpoint, history, accounting)."""
    return train_stage("pretrain", primary_train, params, model, diffusion, trainer, slot)
