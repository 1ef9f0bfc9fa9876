"""The node body the ``pretrain``, ``finetune`` and ``baseline`` stages share.

Thin: the typed parameter blocks (:mod:`maskdm_pipeline.params`) and the catalog's inputs become
one :class:`~maskdm_pipeline.training.TrainJob`; the engine runs it; its final state is split
into the catalog outputs (the checkpoint, a per-step history table and a time-accounting
record); the ways a stage stops that the user can act on become messages that speak
``kedro run``. Shared by three stages, it lives below them: no stage imports another stage.
"""

from __future__ import annotations

import errno
import logging
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from click import ClickException

from maskdm_pipeline import fd_clf
from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.dotted import flatten
from maskdm_pipeline.fd_clf import QualityProbe
from maskdm_pipeline.fileio import CheckpointError
from maskdm_pipeline.listing import shown as _shown  # `shown` is a local name below
from maskdm_pipeline.params import StageParams
from maskdm_pipeline.training import run_training
from maskdm_pipeline.training.config import DiffusionConfig, MaskConfig, ModelParams, TrainerConfig
from maskdm_pipeline.training.distributed import NODE_RANK
from maskdm_pipeline.training.job import (
    EvalFn,
    NodesError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainJob,
    WorkerFailed,
)
from maskdm_pipeline.training.resume import ResumeMismatchError, check_resume

logger = logging.getLogger(__name__)


# The ways a stage stops that the user can act on. Each is also a click.ClickException,
# so `kedro run` prints `Error: <message>` and exits non-zero instead of burying the message
# under a screen of traceback; Python callers catch the engine's own exception types as before.
class StageInterrupted(TrainingInterrupted, ClickException):
    """SIGINT/SIGTERM: the state is saved; exit status 130 / 143 (128 + signal number)."""


class StageDiverged(NonFiniteLossError, ClickException):
    """The loss became NaN/inf; the message names the step, what was kept and the knobs."""

    def __init__(self, message: str) -> None:
        ClickException.__init__(self, message)


class ResumeCheckpointError(CheckpointError, ClickException):
    """The resume checkpoint cannot be used; the message names the file and the way out."""


class ResumeRefused(ResumeMismatchError, ClickException):
    """The resume checkpoint was trained with other settings: refused, kept, and the two ways out.
    Exit status 2, as for parameters that do not fit (nothing was run)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        ClickException.__init__(self, message)


class UnlabelledDataError(ClickException, ValueError):
    """A class-conditional run on images without labels: stopped before any training. Exit status 2,
    as for parameters that do not fit the data (nothing was run)."""

    exit_code = 2


class InputsDoNotFit(ValueError, ClickException):
    """An input made with other settings than this run's (a pre-trained checkpoint of another
    model): the message names each setting with both values and the command that remakes the
    input. Exit status 2, nothing was trained; a ``ValueError`` for Python callers."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        ClickException.__init__(self, message)


class StageWriteError(ClickException):
    """The model folder cannot be written (not writable, disk full); says what is kept."""


class StageNodesError(NodesError, ClickException):
    """Several nodes could not start or go on together; the message names the parameter or host,
    what was kept and what to do (training/multinode.py)."""

    def __init__(self, message: str) -> None:
        ClickException.__init__(self, message)


class StageWorkerFailed(WorkerFailed, ClickException):
    """A worker process died and ``trainer.max_restarts`` was used up; the message names the rank,
    how it died, the last periodic checkpoint and what to do (training/restarts.py)."""

    def __init__(self, message: str) -> None:
        ClickException.__init__(self, message)


# Write failures worth a plain message; other OSErrors keep their traceback.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                 errno.EEXIST, errno.EIO}


def num_classes(name: str, train: Mapping[str, Any]) -> int:
    """K of a class-conditional model: the classes of the training split's labels (int64 0..K-1,
    from the embedded digits, class sub-folders or IDX label files), as max + 1 so that every
    label indexes the embedding; over the whole split, before a few-shot subset, as the fd_clf
    classifier counts them (``fd_clf.reference_split``). The dataset card's ``num_classes``
    counts the same classes.

    Raises:
        UnlabelledDataError: the images have no labels (one line, naming what to do).
    """
    labels = fd_clf.reference_split(train)[1]
    if labels is None or len(labels) == 0:
        raise UnlabelledDataError(
            f"{name}: model.class_conditional=true, but the training images have no class labels "
            "(data/08_reporting/dataset_card.json: labels false); nothing was trained. Give labelled data "
            "(preprocess.labels: subfolder for <folder>/<class>/<file>, an IdxDataset with a label file, the "
            "embedded digits) or set model.class_conditional=false.")
    return int(np.max(labels)) + 1


def _check_writable(name: str, slot: CheckpointSlot) -> None:
    """Refuse to start when the checkpoint folder cannot be written: better now than at the
    first periodic checkpoint, or after the last step."""
    folder = Path(slot.path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StageWriteError(
            f"{name}: cannot write to {_shown(folder)} ({exc.strerror or exc}); nothing was trained. "
            f"Make it a writable folder, or point the catalog's {name} checkpoint entries at one, "
            "and rerun."
        ) from exc


def _resume_state(name: str, params: StageParams, slot: CheckpointSlot) -> dict[str, Any] | None:
    if not params.resume or not slot.exists():
        return None
    try:
        state = slot.load()
    except CheckpointError as exc:
        raise ResumeCheckpointError(
            f"{name}: cannot resume: {exc} To start {name} afresh instead, delete {_shown(slot.path)} "
            f"or run with --params {name}.resume=false."
        ) from exc
    return state


def _check_resume(job: TrainJob, slot: CheckpointSlot) -> None:
    """Refuse, before anything runs, a resume file trained with other settings; it is never
    adopted, and never deleted unless the user asks (``resume=false`` starts afresh and its
    checkpoints replace it)."""
    state, name = job.resume_state, job.name
    assert state is not None
    try:
        check_resume(state, job.config(), job.name, len(job.images))
    except ResumeMismatchError as exc:
        saved_steps = state.get("config", {}).get("stage", {}).get("steps", "?")
        shown = "; ".join(f"{_parameter(name, key)} {saved!r} -> {asked!r}" for key, saved, asked in exc.differences)
        raise ResumeRefused(
            f"{name}: refused to resume from {_shown(slot.path)} (step {exc.step}/{saved_steps}): it was "
            f"trained with other settings (saved -> asked: {shown}). It is kept as it is: rerun with the "
            f"settings it was trained with to resume it, or start afresh with --params {name}.resume=false "
            "(its checkpoints then replace it)."
        ) from None
    logger.info("%s: resuming from %s at step %d", name, slot.path, state["step"])


def _parameter(stage: str, key: str) -> str:
    """What a user types for an engine key of the stage's run (``TrainJob.config()``, nested as
    the parameters are): ``mask.ratio`` -> ``pretrain.mask.ratio``; ``model.*`` and
    ``diffusion.*`` are blocks of their own; ``images`` is the data, not a parameter."""
    if key == "images":
        return "training images"
    return key if key.startswith(("model.", "diffusion.")) else f"{stage}.{key}"


def train_stage(
    name: str,
    train: Mapping[str, Any],
    params: StageParams,
    model: ModelParams,
    diffusion: DiffusionConfig,
    trainer: TrainerConfig,
    slot: CheckpointSlot,
    *,
    mask: MaskConfig | None = None,
    init_weights: Mapping[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    use_labels: bool = True,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Run one training stage; returns (checkpoint, history table, time accounting).

    ``mask``: the tokens pre-training drops (``pretrain.mask``); None trains on every token.
    ``use_labels``: with ``model.class_conditional``, train the conditional model on the images'
    labels (false: an unconditional model, ``pretrain.use_labels: false``).
    """
    images = train["images"]  # memory-mapped shards: DDP workers open them, nothing is copied
    classes = num_classes(name, train) if model.class_conditional and use_labels else None
    _check_writable(name, slot)
    resume_state = _resume_state(name, params, slot)
    job = TrainJob(
        images=images, model=model.for_images(images, classes), diffusion=diffusion,
        labels=None if classes is None else np.asarray(train["labels"]),
        stage=params.stage_config(), mask=mask,
        trainer=trainer, init_weights=init_weights,
        resume_state=resume_state, checkpoint_path=slot.path, eval_fn=eval_fn, name=name,
        resume=params.resume, shared_settings=shared_settings(name, train, params, model, diffusion, trainer),
    )
    if resume_state is not None:
        _check_resume(job, slot)
    try:
        state = run_training(job)
    except TrainingInterrupted as exc:
        raise _interrupted(name, exc, slot, resumes=params.resume) from None
    except NodesError as exc:
        raise StageNodesError(str(exc)) from None
    except WorkerFailed as exc:
        raise StageWorkerFailed(str(exc)) from None
    except NonFiniteLossError as exc:
        advice = ""
        if slot.exists() and params.resume:
            advice = (f" Rerunning resumes from {_shown(slot.path)} with the new settings; "
                      f"--params {name}.resume=false starts afresh.")
        raise StageDiverged(f"{exc}{advice}") from None
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        kept = (f"The last periodic checkpoint {_shown(slot.path)} is intact (a failed write never "
                "replaces it): free some space or fix the folder, then rerun the same command to "
                "resume from it." if slot.exists() else
                "No checkpoint had been written yet: free some space or fix the folder, then rerun.")
        raise StageWriteError(f"{name}: training stopped: writing its checkpoint failed ({exc}). {kept}") from exc
    node_rank = state.pop(NODE_RANK, 0)  # one process: the only node; never in the checkpoint
    return state, history_table(state), accounting(name, state, node_rank)


def shared_settings(name: str, train: Mapping[str, Any], params: StageParams, model: ModelParams,
                    diffusion: DiffusionConfig, trainer: TrainerConfig) -> dict[str, Any]:
    """What every node of a multi-node job must share, by the names a user types: the blocks this
    stage reads and the training images' content checksum (the same shards on every node).
    ``trainer.rdzv_endpoint`` is left out: the nodes met there, however each spells it."""
    settings = flatten({name: params, "model": model, "diffusion": diffusion, "trainer": trainer})
    settings.pop("trainer.rdzv_endpoint", None)
    return {**settings, "training images": train.get("checksum")}


def _interrupted(name: str, exc: TrainingInterrupted, slot: CheckpointSlot, resumes: bool) -> StageInterrupted:
    """The engine's message speaks Python (``resume_state=...``); this one speaks `kedro run`.
    Which command goes on is the cache's to say (caching/hints.py: not the same one where it
    gave ``cache.rerun``), in the warning logged just before this error."""
    head = str(exc).split(";")[0]  # "<stage>: stopped by SIGINT after step 57/400"
    if resumes:
        how = ("a rerun resumes from it (the result equals an uninterrupted run; the warning above "
               f"names the command), or start afresh with --params {name}.resume=false")
    else:
        how = f"to continue from it, run again with --params {name}.resume=true"
    error = StageInterrupted(f"{head}. The full training state is saved in {_shown(slot.path)}; {how}.",
                             step=exc.step, checkpoint_path=exc.checkpoint_path, state=exc.state)
    error.exit_code = 128 + (signal.SIGTERM if "SIGTERM" in head else signal.SIGINT)
    return error


def quality_probe(
    params: StageParams,
    diffusion: DiffusionConfig,
    classifier: Mapping[str, Any],
    reference: Mapping[str, Any],
    classes: int | None = None,
) -> QualityProbe | None:
    """The periodic fd_clf probe for the report's quality-vs-compute curves, when possible;
    ``classes``: K of a class-conditional model, whose probe draws every class alike, unguided."""
    if not params.eval_every or not reference.get("available", False):
        return None
    return QualityProbe(
        classifier,
        (reference["mu"].numpy(), reference["sigma"].numpy()),
        schedule=diffusion.schedule,
        prediction=diffusion.prediction,
        num_samples=params.eval_num_samples,
        seed=params.seed,
        classes=None if classes is None else tuple(range(classes)),
    )


def history_table(state: Mapping[str, Any]) -> pd.DataFrame:
    """Per-step history (step, loss, lr, img/s, elapsed) with the periodic evaluations merged in."""
    history = pd.DataFrame(state.get("history", []))
    evals = pd.DataFrame(state.get("evals", []))
    if history.empty or evals.empty:
        return history
    extra = evals.drop(columns=[c for c in ("elapsed_s", "images_seen") if c in evals], errors="ignore")
    return history.merge(extra, on="step", how="outer").sort_values("step").reset_index(drop=True)


def accounting(name: str, state: Mapping[str, Any], node_rank: int = 0) -> dict[str, Any]:
    """What the stage cost: wall time, images and tokens processed, throughput, and its config;
    and which node of the job wrote it (``node_rank``, 0: the node that holds global rank 0;
    the MLflow hook opens a multi-node job's run there)."""
    return {
        "stage": name,
        "stats": dict(state.get("stats", {})),
        "evals": list(state.get("evals", [])),
        "config": dict(state.get("config", {})),
        NODE_RANK: node_rank,
    }
