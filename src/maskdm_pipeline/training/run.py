"""The entry to the training engine: check a :class:`TrainJob`, then run it in this process or
on ``trainer.nproc`` local worker processes (training/distributed.py), and return rank 0's state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from maskdm_pipeline.models import check_dense_blocks
from maskdm_pipeline.training.config import check_compatible
from maskdm_pipeline.training.distributed import run_distributed
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.loop import TrainProcess
from maskdm_pipeline.training.resume import check_resume

__all__ = ["run_training"]

logger = logging.getLogger(__name__)


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train one stage and return its final full state (a ``maskdm-checkpoint/1`` dict; after a
    multi-process run also this node's rank under ``distributed.NODE_RANK``, which is no part of
    the checkpoint).

    Raises:
        ValueError: inconsistent inputs (hardware, batch against ``nproc``, images against the
            model, mask against the patch grid), before any process starts or step runs.
        ResumeMismatchError: ``resume_state`` was trained with other settings (a ValueError;
            training/resume.py ``check_resume`` says what may differ).
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
    if job.trainer.distributed:
        return run_distributed(job)
    state = TrainProcess(job, rank=0, world_size=1, local_rank=0).train()
    assert state is not None  # rank 0 always returns its state
    return state


def check_inputs(job: TrainJob) -> None:
    """Refuse images that do not fit the model, and a mask that does not fit its patch grid or
    its depth (dense blocks)."""
    images, name = job.images, job.name
    dtype, shape = getattr(images, "dtype", None), tuple(getattr(images, "shape", ()))
    if str(dtype).removeprefix("torch.") != "uint8" or len(shape) != 4:
        raise ValueError(f"{name}: images must be uint8 (N, C, H, W) (a tensor, an array or shards); "
                         f"got {type(images).__name__} {dtype or ''} {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name}: images is empty; nothing to train on")
    with torch.device("meta"):  # attributes only: no memory, no init cost
        model = job.model.build()
    expected = (int(model.in_chans), int(model.img_size), int(model.img_size))
    if shape[1:] != expected:
        raise ValueError(
            f"{name}: images are {shape[1:]} but the model expects {expected} "
            "(C, H, W); set model.img_size/in_chans or preprocess.resolution/channels to match"
        )
    if job.masked:
        job.mask.check(int(model.grid_size), name)
        check_dense_blocks(job.mask.dense_blocks, int(model.depth), prefix=f"{name}.mask")
    check_labels(job, int(model.num_classes))


def check_labels(job: TrainJob, num_classes: int) -> None:
    """A class-conditional model (K = ``num_classes`` > 0) needs one int64 label in [0, K) per image;
    an unconditional one (K = 0) takes none."""
    labels, name = job.labels, job.name
    if not num_classes:
        if labels is not None:
            raise ValueError(f"{name}: labels were given for an unconditional model (model.num_classes is not set)")
        return
    if labels is None:
        raise ValueError(f"{name}: the model is class-conditional ({num_classes} classes) but no labels were given")
    labels = np.asarray(labels)
    if labels.shape != (len(job.images),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers (N,) = ({len(job.images)},); got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}) for a {num_classes}-class model; got "
                         f"{labels.min()}..{labels.max()}")
