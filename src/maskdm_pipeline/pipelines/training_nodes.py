"""Node bodies shared by the ``pretrain``, ``finetune`` and ``baseline`` pipelines.

Thin: they turn catalog inputs and parameter blocks into the pure training engine's configs
(:mod:`maskdm_pipeline.training`), run it, and split its final state into the catalog outputs
(the checkpoint, a per-step history table and a time-accounting record).
"""

from __future__ import annotations

import errno
import logging
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from click import ClickException

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.evaluation import QualityProbe
from maskdm_pipeline.fileio import CheckpointError
from maskdm_pipeline.training.config import StageConfig, TrainerConfig
from maskdm_pipeline.training.loop import (
    EvalFn,
    NonFiniteLossError,
    TrainingInterrupted,
    run_training,
)

logger = logging.getLogger(__name__)

# Stage parameters that steer the node rather than the training engine.
NODE_KEYS = ("resume", "eval_num_samples", "init_from", "data")
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


class StageWriteError(ClickException):
    """The model folder cannot be written (not writable, disk full); says what is kept."""


# Write failures worth a plain message; other OSErrors keep their traceback.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                 errno.EEXIST, errno.EIO}


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


def _shown(path: Path) -> str:
    """``data/06_models/x.pt`` when under the working directory (the project), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _resume_state(name: str, stage_params: Mapping[str, Any], slot: CheckpointSlot) -> dict[str, Any] | None:
    if not stage_params.get("resume", True) or not slot.exists():
        return None
    try:
        state = slot.load()
    except CheckpointError as exc:
        raise ResumeCheckpointError(
            f"{name}: cannot resume: {exc} To start {name} afresh instead, delete {_shown(slot.path)} "
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
    _check_writable(name, slot)
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
    except TrainingInterrupted as exc:
        raise _interrupted(name, exc, slot, resumes=bool(stage_params.get("resume", True))) from None
    except NonFiniteLossError as exc:
        advice = ""
        if slot.exists() and stage_params.get("resume", True):
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
    return state, history_table(state), accounting(name, state)


def _interrupted(name: str, exc: TrainingInterrupted, slot: CheckpointSlot, resumes: bool) -> StageInterrupted:
    """The engine's message speaks Python (``resume_state=...``); this one speaks `kedro run`."""
    head = str(exc).split(";")[0]  # "<stage>: stopped by SIGINT after step 57/400"
    if resumes:
        how = ("rerun the same `kedro run` command to resume from it (the result equals an uninterrupted "
               "run; add --only-missing-outputs so that stages that already finished are not run "
               f"again), or start afresh with --params {name}.resume=false")
    else:
        how = f"to continue from it, run again with --params {name}.resume=true"
    error = StageInterrupted(f"{head}. The full training state is saved in {_shown(slot.path)}; {how}.",
                             step=exc.step, checkpoint_path=exc.checkpoint_path, state=exc.state)
    error.exit_code = 128 + (signal.SIGTERM if "SIGTERM" in head else signal.SIGINT)
    return error


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
