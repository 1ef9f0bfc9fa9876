"""Training loop, EMA, checkpoint state and distributed launch (pure torch, no Kedro)."""

from maskdm_pipeline.fileio import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from maskdm_pipeline.training.config import MaskConfig, StageConfig, TrainerConfig
from maskdm_pipeline.training.ema import EMA
from maskdm_pipeline.training.loop import run_training
from maskdm_pipeline.training.runtime import EvalFn, NonFiniteLossError, TrainingInterrupted

__all__ = [
    "CHECKPOINT_FORMAT",
    "EMA",
    "CheckpointError",
    "EvalFn",
    "MaskConfig",
    "NonFiniteLossError",
    "StageConfig",
    "TrainerConfig",
    "TrainingInterrupted",
    "load_checkpoint",
    "run_training",
    "save_checkpoint",
]
