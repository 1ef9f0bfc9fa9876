"""A saved training state read back: what it was trained with, and whether a run may continue it.

- **Older checkpoints** (:func:`saved_stage_with_defaults`): a checkpoint's stage config lacks
  the fields that were added after it was written; they count as their defaults, which is what
  it was trained with.
- **What a stage did** (:func:`stage_recipe`): the mask, the diffusion target and weighting,
  hflip, from a checkpoint's config, for the report and ``metrics.json``.
- **The resume policy** (:func:`check_resume`): which settings a resumed run may change.

Next to the engine's configs, not beside the checkpoint format in ``fileio.py``: reading a saved
config back means validating it with those configs, and ``fileio.py`` stands on the neutral
floor, below them (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maskdm_pipeline.training.config import DiffusionConfig, MaskConfig, StageConfig


def saved_stage_with_defaults(stage: Mapping[str, Any]) -> dict[str, Any]:
    """A stage config as stored in a checkpoint (``StageConfig.to_dict``), with the fields it
    predates (``hflip``, the mask's ``dense_blocks``) at their defaults: what it was trained with."""
    filled = {k: f.default for k, f in StageConfig.model_fields.items()
              if k not in stage and not f.is_required()}
    filled.update(stage)
    if isinstance(filled.get("mask"), Mapping):
        filled["mask"] = {**MaskConfig().to_dict(), **filled["mask"]}
    return filled


def stage_recipe(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a trained stage did, from its checkpoint ``config`` (``TrainJob.config()``): the mask
    (None: none dropped) and its dense blocks, the diffusion target and loss weighting, hflip, and
    for a class-conditional model its classes and label dropout.

    For the report and ``metrics.json``: two runs compare without reading
    their configs. Keys missing from an older checkpoint take today's defaults, which are what
    that checkpoint was trained with. ``dense_blocks`` is None when no token was dropped and
    ``min_snr_gamma`` None under ``loss_weighting: none`` (neither had an effect). None when
    ``config`` has no diffusion block (not a checkpoint's config: nothing to tell).
    """
    if not config.get("diffusion"):
        return None
    stage = saved_stage_with_defaults(config.get("stage") or {})
    diffusion = DiffusionConfig.model_validate(dict(config["diffusion"]))
    mask = None if stage.get("mask") is None else MaskConfig.model_validate(stage["mask"])
    masked = mask is not None and mask.drops_tokens
    min_snr = diffusion.loss_weighting == "min_snr"
    return {
        "mask": mask.model_dump(exclude={"dense_blocks"}) if masked else None,
        "dense_blocks": mask.dense_blocks if masked else None,
        "schedule": diffusion.schedule,
        "prediction": diffusion.prediction,
        "loss_weighting": diffusion.loss_weighting,
        "min_snr_gamma": diffusion.min_snr_gamma if min_snr else None,
        "hflip": float(stage["hflip"]),
        # A class-conditional stage only (an unconditional recipe is what it always was):
        **conditional_recipe(config.get("model") or {}, stage),
    }


def conditional_recipe(model: Mapping[str, Any], stage: Mapping[str, Any]) -> dict[str, Any]:
    """``{"num_classes": K, "label_dropout": p}`` of a stage that trained a class-conditional model
    (its checkpoint's ``config.model.num_classes``); ``{}`` for an unconditional one."""
    if not model.get("num_classes"):
        return {}
    return {"num_classes": int(model["num_classes"]), "label_dropout": float(stage["label_dropout"])}


# What a resumed run may change. A resume continues ONE run, so everything that
# defines that run must be what it was trained with: the model, the diffusion (schedule,
# prediction, loss weighting), the data (number of images), the seed and the recipe (betas,
# weight decay, EMA, flips, the mask and its dense blocks). Free to change:
# - `steps`, to extend (or shorten) a run, as long as the state has not gone past it;
# - the cadence of checkpoints, logs and evaluations, which records the run without changing it;
# - the knobs the divergence message tells a user to turn before rerunning (loop.py
#   `_non_finite_message`: lr, grad_clip, batch_size, warmup_steps), only while there are steps
#   left to train with them (reported: the continuation differs from an uninterrupted run);
#   a finished state saved under new values would claim settings it never trained with.
# The trainer block (device, precision, compile, nproc) is where the run happens, not what it
# learns: a batch is global whatever nproc is, and precision is also a divergence remedy.
RESUME_CADENCE = ("steps", "checkpoint_every", "log_every", "eval_every")
RESUME_REMEDIES = ("lr", "grad_clip", "batch_size", "warmup_steps")


class ResumeMismatchError(ValueError):
    """A resume state trained with other settings than the run asks for.

    Attributes: ``name`` (the stage), ``step`` (the state's step) and ``differences``:
    ``(key, saved, asked)`` with engine keys (``seed``, ``mask.ratio``, ``diffusion.prediction``,
    ``model.depth``, ``images``, ``steps``).
    """

    def __init__(self, name: str, step: int, differences: list[tuple[str, Any, Any]]) -> None:
        self.name, self.step, self.differences = name, step, differences
        shown = "; ".join(f"{key}: {saved!r} -> {asked!r}" for key, saved, asked in differences)
        super().__init__(f"{name}: resume_state (step {step}) was trained with other settings ({shown}); "
                         "resume with the settings it was trained with, or start afresh without it")


def _nested(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``{"mask": {"ratio": 0.5}}`` -> ``{"mask.ratio": 0.5}`` (one level, as checkpoints nest)."""
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, Mapping):
            flat.update(_nested(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resume(state: Mapping[str, Any], config: Mapping[str, Any], name: str,
                 num_images: int | None = None) -> list[tuple[str, Any, Any]]:
    """Whether ``state`` (a checkpoint dict) may be continued by a job with ``config``
    (``TrainJob.config()``) on ``num_images`` images; returns the remedies that changed, as
    ``(key, saved, asked)``, for the caller to report (see the rule above).

    Keys a checkpoint written before they existed lacks count as their defaults, which is what
    it was trained with.

    Raises:
        ResumeMismatchError: anything else differs, naming each difference.
    """
    saved = state.get("config", {})
    step = int(state.get("step", 0))
    found = {**_nested(saved.get("model"), "model."),
             **_nested({**DiffusionConfig().to_dict(), **saved.get("diffusion", {})}, "diffusion."),
             **_nested(saved_stage_with_defaults(saved.get("stage", {})))}
    wanted = {**_nested(config["model"], "model."), **_nested(config["diffusion"], "diffusion."),
              **_nested(config["stage"])}
    if found["diffusion.loss_weighting"] == wanted["diffusion.loss_weighting"] == "none":
        found.pop("diffusion.min_snr_gamma"), wanted.pop("diffusion.min_snr_gamma")  # unused by either
    differences = [(key, found.get(key), wanted.get(key)) for key in sorted(found.keys() | wanted.keys())
                   if key not in RESUME_CADENCE and found.get(key) != wanted.get(key)]
    remedies = [d for d in differences if d[0] in RESUME_REMEDIES]
    if step >= int(wanted["steps"]):  # nothing left to train: the remedies would never apply
        remedies = []
    refused = [d for d in differences if d not in remedies]
    if step > int(wanted["steps"]):
        refused.append(("steps", step, wanted["steps"]))
    perm = (state.get("rng") or {}).get("perm")
    if num_images is not None and perm is not None and len(perm) != num_images:
        refused.append(("images", len(perm), num_images))
    if refused:
        raise ResumeMismatchError(name, step, refused)
    return remedies
