"""The training engine (pure torch, no Kedro): a :class:`TrainJob` in, a full training state out.

``config.py`` the typed configs; ``job.py`` the job; ``run.py`` the entry (``run_training``);
``distributed.py`` the DDP launch; ``multinode.py`` what several machines agree on;
``loop.py`` the loop of one process; ``builders.py``, ``process.py``, ``streams.py`` and
``ema.py`` its parts; ``resume.py`` a saved state read back (older checkpoints, the resume
policy). Checkpoint files: ``fileio.py``.
"""

from maskdm_pipeline.fileio import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from maskdm_pipeline.training.config import (
    DiffusionConfig,
    MaskConfig,
    ModelConfig,
    ModelParams,
    StageConfig,
    TrainerConfig,
)
from maskdm_pipeline.training.job import EvalFn, NonFiniteLossError, TrainingInterrupted, TrainJob
from maskdm_pipeline.training.run import run_training

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DiffusionConfig",
    "EvalFn",
    "MaskConfig",
    "ModelConfig",
    "ModelParams",
    "NonFiniteLossError",
    "StageConfig",
    "TrainJob",
    "TrainerConfig",
    "TrainingInterrupted",
    "load_checkpoint",
    "run_training",
    "save_checkpoint",
]
