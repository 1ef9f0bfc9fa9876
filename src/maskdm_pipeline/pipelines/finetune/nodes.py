"""Fine-tuning node (METHOD.md section 4): no masks, starting from the pre-trained weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.params import FinetuneParams
from maskdm_pipeline.train_stage import num_classes, quality_probe, train_stage
from maskdm_pipeline.training.config import DiffusionConfig, ModelParams, TrainerConfig


def finetune(
    primary_train: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    params: FinetuneParams,
    model: ModelParams,
    diffusion: DiffusionConfig,
    trainer: TrainerConfig,
    slot: CheckpointSlot,
    classifier: Mapping[str, Any],
    reference: Mapping[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Fine-tune the raw (or, with ``finetune.init_from: ema``, the EMA) pre-trained weights;
    optimizer and EMA start fresh, as in the official code."""
    classes = num_classes("finetune", primary_train) if model.class_conditional else None
    weights = init_weights_from(pretrained, params.init_from,
                                model.for_images(primary_train["images"], classes).to_dict())
    probe = quality_probe(params, diffusion, classifier, reference, classes)
    return train_stage(
        "finetune", primary_train, params, model, diffusion, trainer, slot, init_weights=weights, eval_fn=probe
    )


def init_weights_from(pretrained: Mapping[str, Any], init_from: str, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the raw (official choice, METHOD.md section 4) or EMA pre-trained weights, after
    checking that the checkpoint was trained with the model this run asks for (before any
    training, so that a mismatch costs nothing).

    Only the model config is compared: pre-training's dense blocks and loss weighting
    (``pretrain.mask.dense_blocks``, ``diffusion.loss_weighting``) shape how the weights were
    trained, not what they are, so weights pre-trained under either start fine-tuning, which
    trains with its own loss (issue 17).

    A class-conditional fine-tuning may start from an unconditional pre-trained model
    (``pretrain.use_labels: false``): the model configs then differ by ``num_classes`` alone, and
    the label embedding starts fresh (``training.builders.load_init_weights``)."""
    saved = dict(pretrained.get("config", {}).get("model", {}))
    if "num_classes" not in saved:  # unconditional weights: a conditional model adds its label table
        wanted = {k: v for k, v in wanted.items() if k != "num_classes"}
    if saved != dict(wanted):
        raise ValueError(
            f"finetune: the pre-trained checkpoint (catalog entry 'pretrained') was trained with model "
            f"{saved}, but this run asks for {dict(wanted)} (model.preset, preprocess.resolution and "
            "channels must match). Rerun `kedro run --pipelines pretrain` with the same settings, or "
            "change them back."
        )
    if init_from == "ema":
        return dict(pretrained["ema"]["model"])
    return dict(pretrained["model"])
