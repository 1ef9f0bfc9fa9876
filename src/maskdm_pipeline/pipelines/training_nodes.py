"""Node bodies shared by the ``pretrain``, ``finetune`` and ``baseline`` pipelines.

Thin: they turn catalog inputs and parameter blocks into the pure training engine's configs
(:mod:`maskdm_pipeline.training`), run it, and split its final state into the catalog outputs
(the checkpoint, a per-step history table and a time-accounting record).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.evaluation import QualityProbe
from maskdm_pipeline.training.checkpoint import CheckpointError
from maskdm_pipeline.training.config import StageConfig, TrainerConfig
from maskdm_pipeline.training.loop import EvalFn, run_training

logger = logging.getLogger(__name__)

# Stage parameters that steer the node rather than the training engine.
NODE_KEYS = ("resume", "eval_num_samples", "init_from")
MODEL_OVERRIDES = ("patch_size", "embed_dim", "depth", "num_heads")


def model_config(model_params: Mapping[str, Any], images: torch.Tensor) -> dict[str, Any]:
    """The ``build_uvit`` config: the preset, the data's size and channels, explicit overrides."""
    config: dict[str, Any] = {
        "preset": model_params["preset"],
        "img_size": int(images.shape[-1]),
        "in_chans": int(images.shape[1]),
    }
    config.update({k: model_params[k] for k in MODEL_OVERRIDES if model_params.get(k) is not None})
    return config


def stage_config(name: str, stage_params: Mapping[str, Any]) -> StageConfig:
    return StageConfig.from_dict({k: v for k, v in stage_params.items() if k not in NODE_KEYS}, name=name)


def _resume_state(name: str, stage_params: Mapping[str, Any], slot: CheckpointSlot) -> dict[str, Any] | None:
    if not stage_params.get("resume", True) or not slot.exists():
        return None
    try:
        state = slot.load()
    except CheckpointError as exc:
        raise CheckpointError(
            f"{name}: cannot resume: {exc} To start {name} afresh instead, delete {slot.path} "
            f"or run with --params {name}.resume=false."
        ) from exc
    logger.info("%s: resuming from %s at step %d", name, slot.path, state["step"])
    return state


def train_stage(
    name: str,
    train: Mapping[str, Any],
    stage_params: Mapping[str, Any],
    model_params: Mapping[str, Any],
    diffusion_params: Mapping[str, Any],
    trainer_params: Mapping[str, Any],
    slot: CheckpointSlot,
    *,
    init_weights: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Run one training stage; returns (checkpoint, history table, time accounting)."""
    images = torch.from_numpy(train["images"])
    stage = stage_config(name, stage_params)
    trainer = TrainerConfig.from_dict(trainer_params)
    resume_state = _resume_state(name, stage_params, slot)
    try:
        state = run_training(
            images,
            model_config=model_config(model_params, images),
            diffusion_config={"schedule": diffusion_params["schedule"], "prediction": diffusion_params["prediction"]},
            stage=stage,
            trainer=trainer,
            init_weights=init_weights,
            resume_state=resume_state,
            periodic_checkpoint_path=slot.path,
            eval_fn=eval_fn,
            name=name,
        )
    except ValueError as exc:
        if resume_state is not None and "resume_state" in str(exc):
            raise ValueError(f"{exc} (resume checkpoint: {slot.path}; --params {name}.resume=false starts afresh)") from exc
        raise
    return state, history_table(state), accounting(name, state)


def quality_probe(
    stage_params: Mapping[str, Any],
    diffusion_params: Mapping[str, Any],
    classifier: Mapping[str, Any],
    reference: Mapping[str, Any],
) -> QualityProbe | None:
    """The periodic fd_clf probe for the report's quality-vs-compute curves, when possible."""
    if not stage_params.get("eval_every") or not reference.get("available", False):
        return None
    return QualityProbe(
        classifier,
        (reference["mu"].numpy(), reference["sigma"].numpy()),
        schedule=diffusion_params["schedule"],
        prediction=diffusion_params["prediction"],
        num_samples=int(stage_params.get("eval_num_samples", 256)),
        seed=int(stage_params.get("seed", 0)),
    )


def history_table(state: Mapping[str, Any]) -> pd.DataFrame:
    """Per-step history (step, loss, lr, img/s, elapsed) with the periodic evaluations merged in."""
    history = pd.DataFrame(state.get("history", []))
    evals = pd.DataFrame(state.get("evals", []))
    if history.empty or evals.empty:
        return history
    extra = evals.drop(columns=[c for c in ("elapsed_s", "images_seen") if c in evals], errors="ignore")
    return history.merge(extra, on="step", how="outer").sort_values("step").reset_index(drop=True)


def accounting(name: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """What the stage cost: wall time, images and tokens processed, throughput, and its config."""
    return {
        "stage": name,
        "stats": dict(state.get("stats", {})),
        "evals": list(state.get("evals", [])),
        "config": dict(state.get("config", {})),
    }


def init_weights_from(
    pretrained: Mapping[str, Any], init_from: str, model_cfg: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Pick the raw (official choice, METHOD.md section 4) or EMA pre-trained weights, after
    checking that the checkpoint was trained with the model this run asks for."""
    saved = dict(pretrained.get("config", {}).get("model", {}))
    wanted = dict(model_cfg)
    if saved != wanted:
        raise ValueError(
            f"finetune: the pre-trained checkpoint {source} was trained with model {saved}, but this "
            f"run asks for {wanted} (model.preset, preprocess.resolution and channels must match). "
            "Rerun `kedro run --pipelines pretrain` with the same settings, or change them back."
        )
    if init_from == "ema":
        return dict(pretrained["ema"]["model"])
    return dict(pretrained["model"])
