"""What the training loop is built from: the loss, the LR schedule, the start weights, and the
check that a resumed state continues the run it is asked to continue. Apart from training/loop.py so that the loop reads as
the algorithm of METHOD.md section 4 and each piece can be tested on its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from maskdm_pipeline.training.config import (
    DiffusionConfig,
    MaskConfig,
    saved_stage_with_defaults,
)

LossFn = Callable[..., torch.Tensor]


def build_loss(diffusion: DiffusionConfig, mask: MaskConfig | None,
               device: torch.device) -> tuple[LossFn, int]:
    """(loss, T): MDSM for a mask that drops tokens, with its dense blocks; DSM otherwise
    (METHOD.md section 1); both with ``diffusion.loss_weighting``. T = 1000."""
    from maskdm_pipeline import diffusion as dm

    schedule = dm.make_schedule(diffusion.schedule).to(device)
    weighting = {"weighting": diffusion.loss_weighting, "min_snr_gamma": diffusion.min_snr_gamma}
    if mask is not None and mask.drops_tokens:
        loss = dm.MaskedDenoisingLoss(schedule, diffusion.prediction, dense_blocks=mask.dense_blocks,
                                      **weighting)
    else:
        loss = dm.DenoisingLoss(schedule, diffusion.prediction, **weighting)
    return loss, schedule.num_timesteps


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """LR of the ``step``-th update (1-based): lr * min(step / warmup, 1), then constant.

    METHOD.md section 4: linear warm-up, no decay. Counting from 1 makes the first update
    use lr / warmup instead of wasting a step at lr 0.
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(step / warmup_steps, 1.0)


def load_init_weights(model: nn.Module, weights: Mapping[str, Any], name: str) -> None:
    """Load fine-tuning start weights strictly; a checkpoint dict gives its raw ``model``.

    Raises:
        ValueError: the weights do not fit the model (another preset, size or channels).
    """
    state_dict = weights["model"] if "format" in weights and "model" in weights else weights
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: init_weights do not fit the model built from the model config (same preset, "
            f"image size and channels as the stage that produced them?): {exc}"
        ) from exc


# What a resumed run may change (issue 16). A resume continues ONE run, so everything that
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
