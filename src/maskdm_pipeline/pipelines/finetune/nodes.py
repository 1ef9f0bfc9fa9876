"""Fine-tuning node (METHOD.md section 4): no masks, starting from the pre-trained weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.pipelines.training_nodes import (
    init_weights_from,
    model_config,
    quality_probe,
    train_stage,
)


def finetune(
    primary_train: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    params: Mapping[str, Any],
    model: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    trainer: Mapping[str, Any],
    slot: CheckpointSlot,
    classifier: Mapping[str, Any],
    reference: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Fine-tune the raw (or, with ``finetune.init_from: ema``, the EMA) pre-trained weights;
    optimizer and EMA start fresh, as in the official code."""
    cfg = model_config(model, torch.from_numpy(primary_train["images"][:1]))
    weights = init_weights_from(pretrained, params.get("init_from", "raw"), cfg, "data/06_models/pretrained.pt")
    probe = quality_probe(params, diffusion, classifier, reference)
    return train_stage(
        "finetune", primary_train, params, model, diffusion, trainer, slot, init_weights=weights, eval_fn=probe
    )
