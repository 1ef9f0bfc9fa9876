"""The entry to the training engine: check a :class:`TrainJob`, then run it in this process or
on ``trainer.nproc`` local worker processes (training/distributed.py), and return rank 0's state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from maskdm_pipeline.training.builders import check_resume
from maskdm_pipeline.training.config import check_compatible
from maskdm_pipeline.training.distributed import run_distributed
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.loop import TrainProcess

__all__ = ["run_training"]

logger = logging.getLogger(__name__)


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train one stage and return its final full state (a ``maskdm-checkpoint/1`` dict).

    Raises:
        ValueError: inconsistent inputs (hardware, batch against ``nproc``, images against the
            model, mask against the patch grid), before any process starts or step runs.
        ResumeMismatchError: ``resume_state`` was trained with other settings (a ValueError;
            training/builders.py ``check_resume`` says what may differ).
        NonFiniteLossError: the loss became NaN/inf; the last checkpoint is left as it was.
        TrainingInterrupted: SIGINT/SIGTERM; the state was saved after the current step.
    """
    job.trainer.check_hardware()
    check_compatible(job.stage, job.trainer, job.name)
    check_inputs(job)
    if job.resume_state is not None:
        changed = check_resume(job.resume_state, job.config(), job.name, len(job.images))
        if changed:
            logger.warning("%s: resuming with changed %s; the continuation differs from an uninterrupted run",
                           job.name, ", ".join(f"{key} {saved!r} -> {asked!r}" for key, saved, asked in changed))
    if job.trainer.nproc > 1:
        return run_distributed(job)
    state = TrainProcess(job, rank=0, world_size=1, local_rank=0).train()
    assert state is not None  # rank 0 always returns its state
    return state


def check_inputs(job: TrainJob) -> None:
    """Refuse images that do not fit the model, and a mask that does not fit its patch grid."""
    images, name = job.images, job.name
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = f"{type(images).__name__} {getattr(images, 'dtype', '')} " \
               f"{tuple(getattr(images, 'shape', ()))}"
        raise ValueError(f"{name}: images must be a uint8 tensor (N, C, H, W); got {desc}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: images is empty; nothing to train on")
    with torch.device("meta"):  # attributes only: no memory, no init cost
        model = job.model.build()
    expected = (int(model.in_chans), int(model.img_size), int(model.img_size))
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{name}: images are {tuple(images.shape[1:])} but the model expects {expected} "
            "(C, H, W); set model.img_size/in_chans or preprocess.resolution/channels to match"
        )
    if job.masked:
        job.mask.count(int(model.grid_size), name)
