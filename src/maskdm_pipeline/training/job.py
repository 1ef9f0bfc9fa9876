"""One training stage as one value: :class:`TrainJob`, and the ways a job can stop early.

The job is frozen and picklable: with ``trainer.nproc > 1`` it is sent whole to every worker
process (training/distributed.py), so every field must pickle (``eval_fn`` a top-level function
or a ``functools.partial``, not a closure or a lambda). Images given as shards pickle as their file
names, so no image data travels to the workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline.shards import ShardArray
from maskdm_pipeline.training.config import (
    DiffusionConfig,
    MaskConfig,
    ModelConfig,
    StageConfig,
    TrainerConfig,
)

__all__ = ["EvalFn", "NodesError", "NonFiniteLossError", "TrainJob", "TrainingInterrupted", "WorkerFailed"]

EvalFn = Callable[[int, nn.Module], Mapping[str, Any] | None]


@dataclass(frozen=True)
class TrainJob:
    """Everything one training stage needs (METHOD.md section 4).

    Attributes:
        images: uint8 ``(N, C, H, W)``: memory-mapped shards (:class:`~maskdm_pipeline.shards.ShardArray`,
            what the pipeline passes: each worker maps them itself, since they pickle as file
            names), a numpy array or a CPU tensor; scaled to [-1, 1] per batch on the device.
        labels: int64 ``(N,)`` classes 0..K-1 of the images, for a class-conditional model
            (``model.num_classes`` = K; each step replaces a ``stage.label_dropout`` share of them
            by the "no label" class K); None for an unconditional model.
        model, diffusion: what to train (training/config.py).
        stage: the optimisation recipe; ``mask``: the token mask of masked pre-training, or None
            for plain DSM.
        trainer: device, precision, compile, number of processes.
        init_weights: fine-tuning start, a model ``state_dict`` or a checkpoint dict whose raw
            ``"model"`` weights are used (METHOD.md section 4: the non-EMA weights; optimizer
            and EMA start fresh). Loaded strictly: a silent ``strict=False`` mismatch (the
            official code's choice, section 8 item 6) would train from a half-random model.
        resume_state: a checkpoint dict of this stage to continue from (takes precedence).
        checkpoint_path: where the full state is written every ``stage.checkpoint_every`` steps,
            after the last step and on interruption (atomically); None: nowhere.
        eval_fn: ``eval_fn(step, ema_model) -> dict | None`` every ``stage.eval_every`` steps;
            its time is excluded from the training wall time; rank 0 only.
        name: the stage name used in messages (``pretrain``, ``finetune``, ...).
        progress: tqdm bar (True), log lines (False), or auto (None: bar when stderr is a TTY).
        resume: with several nodes (``trainer.nnodes > 1``), continue from the latest periodic
            checkpoint that every node holds (training/multinode.py); ``resume_state`` is then only
            checked, not used, since each node may hold another step.
        shared_settings: with several nodes, the values every node must share (dotted parameter
            name -> value), compared right after the rendezvous; None: this job's ``config()``.
    """

    images: torch.Tensor | np.ndarray | ShardArray
    model: ModelConfig
    diffusion: DiffusionConfig
    stage: StageConfig
    trainer: TrainerConfig
    mask: MaskConfig | None = None
    init_weights: Mapping[str, Any] | None = None
    resume_state: Mapping[str, Any] | None = None
    checkpoint_path: str | os.PathLike[str] | None = None
    eval_fn: EvalFn | None = None
    name: str = "stage"
    progress: bool | None = None
    resume: bool = False
    shared_settings: Mapping[str, Any] | None = None
    labels: np.ndarray | None = None

    @property
    def masked(self) -> bool:
        """True when this stage drops tokens (MDSM); False means full-image DSM."""
        return self.mask is not None and self.mask.drops_tokens

    def config(self) -> dict[str, Any]:
        """``{"model", "diffusion", "stage", "trainer"}`` as plain dicts, as stored in checkpoints."""
        return {"model": self.model.to_dict(), "diffusion": self.diffusion.to_dict(),
                "stage": self.stage.to_dict(self.mask), "trainer": self.trainer.to_dict()}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the usual fixes."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a finished step; the state was saved.

    Attributes: ``step`` (steps done; None when the parent of DDP workers was signalled),
    ``checkpoint_path`` (where the state is, or None) and
    ``state`` (the state itself on the process that raised it, None elsewhere).
    """

    def __init__(self, message: str, *, step: int | None, checkpoint_path: Path | None,
                 state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_path = checkpoint_path
        self.state = state


class NodesError(RuntimeError):
    """The nodes of a multi-node job could not start or go on together (an endpoint that cannot
    work, nodes that never all joined, different parameters, a node lost); the message names
    the parameter or host, what was kept and what to do."""


class WorkerFailed(RuntimeError):
    """A worker process of a multi-process run died (a signal, an exception, an exit status) and
    ``trainer.max_restarts`` was used up; the message names the rank, how it died, the last periodic
    checkpoint and what to do (training/restarts.py ``failure_message``)."""
