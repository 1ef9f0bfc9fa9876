"""Fine-tuning node (METHOD.md section 4): no masks, starting from the pre-trained weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.params import FinetuneParams
from maskdm_pipeline.train_stage import InputsDoNotFit, num_classes, quality_probe, train_stage
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
                                model.for_images(primary_train["images"], classes).to_dict(), diffusion.to_dict())
    probe = quality_probe(params, diffusion, classifier, reference, classes)
    return train_stage(
        "finetune", primary_train, params, model, diffusion, trainer, slot, init_weights=weights, eval_fn=probe
    )


def init_weights_from(pretrained: Mapping[str, Any], init_from: str, wanted: Mapping[str, Any],
                      diffusion: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pick the raw (official choice, METHOD.md section 4) or EMA pre-trained weights, after
    checking that the checkpoint was trained with the model this run asks for (``wanted``: the
    checkpoint's ``config.model`` form) and the same schedule and prediction target (the
    quantity the network computes), before any training, so that a mismatch costs nothing.

    Pre-training's dense blocks and loss weighting (``pretrain.mask.dense_blocks``,
    ``diffusion.loss_weighting``) shape how the weights were trained, not what they are, so
    weights pre-trained under either start fine-tuning, which trains with its own loss (issue
    17). Raises :class:`~maskdm_pipeline.train_stage.InputsDoNotFit` naming each setting that
    differs, by its parameter, with both values. The cache refuses the same runs before anything
    starts when the checkpoint's fingerprint record is there (caching/fit.py); this check also
    holds for a checkpoint copied in by hand.

    A class-conditional fine-tuning may start from an unconditional pre-trained model
    (``pretrain.use_labels: false``): the model configs then differ by ``num_classes`` alone, and
    the label embedding starts fresh (``training.builders.load_init_weights``)."""
    config = pretrained.get("config", {})
    saved = dict(config.get("model", {}))
    if "num_classes" not in saved:  # unconditional weights: a conditional model adds its label table
        wanted = {k: v for k, v in wanted.items() if k != "num_classes"}
    differ = _differences(saved, dict(wanted), _model_parameter)
    if diffusion is not None and config.get("diffusion"):
        saved, asked = dict(config["diffusion"]), dict(diffusion)
        differ += _differences({k: saved.get(k) for k in _WHAT_IT_COMPUTES},
                               {k: asked.get(k) for k in _WHAT_IT_COMPUTES}, lambda k: f"diffusion.{k}")
    if differ:
        raise InputsDoNotFit(
            f"finetune: the pre-trained checkpoint (catalog entry 'pretrained') was made with other settings "
            f"(made with -> this run: {', '.join(differ)}). Pre-train it with these settings first: `kedro run "
            "--pipelines pretrain,finetune` with this run's --env and --params; nothing was trained."
        )
    if init_from == "ema":
        return dict(pretrained["ema"]["model"])
    return dict(pretrained["model"])


_WHAT_IT_COMPUTES = ("schedule", "prediction")  # of the diffusion block; params.MODEL_DEFINING


def _model_parameter(key: str) -> str:
    """The parameter that sets a key of a checkpoint's ``config.model``: the image geometry
    comes from the preprocessed images (``ModelParams.for_images``)."""
    return {"img_size": "preprocess.resolution", "in_chans": "preprocess.channels",
            "num_classes": "model.class_conditional (classes)"}.get(key, f"model.{key}")


def _differences(saved: Mapping[str, Any], asked: Mapping[str, Any], parameter: Any) -> list[str]:
    """``<parameter> <saved> -> <asked>`` for each key whose value differs; a model override that
    one side leaves to the preset (``to_dict`` drops it) is shown as such."""
    def shown(values: Mapping[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(the preset's)"

    return [f"{parameter(k)} {shown(saved, k)} -> {shown(asked, k)}"
            for k in sorted({*saved, *asked}) if saved.get(k, ...) != asked.get(k, ...)]
