"""The parameter schema: every user-settable parameter, its type and its allowed values.

Kedro merges ``conf/base``, the ``--env`` environment and ``--params``; this module checks the
result before any node runs (see :mod:`maskdm_pipeline.hooks`). An unknown name (a typo such
as ``pretrain.mask_ratoi``) or an invalid value is refused with a message that names the
parameter, the value and what is allowed. Pure: no Kedro import (click, for the error type only).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from click import ClickException

Check = Callable[[Any], str | None]  # returns an explanation when the value is invalid


class ParameterError(ClickException, ValueError):
    """An unknown parameter name or an invalid value; the message names the parameter.

    A ``ValueError`` for Python callers. Also a ``click.ClickException`` (click is Kedro's
    CLI library, not Kedro): ``kedro run`` then prints ``Error: <the message>`` and exits with
    status 2 (a usage error) instead of a screen of traceback that hides the one line that
    matters.
    """

    exit_code = 2


def _choice(*allowed: Any) -> Check:
    return lambda v: None if v in allowed else f"must be one of {', '.join(map(str, allowed))}"


def _int(low: int | None = None, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer" + (" or null" if optional else "")
        if low is not None and v < low:
            return f"must be >= {low}"
        return None

    return check


def _float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:  # v != v: NaN
            return "must be a number" + (" or null" if optional else "")
        too_low = low is not None and (v <= low if low_open else v < low)
        too_high = high is not None and (v >= high if high_open else v > high)
        if (too_low or too_high) and low is not None and high is not None:
            return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        if too_low:
            return f"must be {'>' if low_open else '>='} {low}"
        if too_high:
            return f"must be {'<' if high_open else '<='} {high}"
        return None

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _crop(v: Any) -> str | None:
    if v in ("none", "center", None):
        return None
    if isinstance(v, list | tuple) and len(v) == 4 and all(isinstance(i, int) and i >= 0 for i in v):
        return None if v[2] > 0 and v[3] > 0 else "box height and width must be > 0"
    return "must be none, center or [top, left, height, width]"


def _subset(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):
        return None if 0 < v <= 1 else "a fraction must be in (0, 1]"
    if isinstance(v, int) and not isinstance(v, bool):
        return None if v >= 1 else "a count must be >= 1"
    return "must be null, a fraction in (0, 1] or a count >= 1"


def _betas(v: Any) -> str | None:
    ok = isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(b, int | float) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1), e.g. [0.99, 0.99]"


PRESETS = ("tiny", "small-64", "small-128", "small-256", "base-256")
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
SAMPLERS = ("ddpm", "ddim", "dpm++2m")
MASK_KINDS = ("patch", "block", "crop")

_STAGE: dict[str, Check] = {
    "steps": _int(1),
    "batch_size": _int(1),
    "lr": _float(0, low_open=True),
    "betas": _betas,
    "weight_decay": _float(0),
    "warmup_steps": _int(0),
    "grad_clip": _float(0, low_open=True, optional=True),
    "ema_decay": _float(0, 1),
    "ema_update_after_step": _int(0),
    "seed": _int(0),
    "checkpoint_every": _int(1),
    "log_every": _int(1),
    "eval_every": _int(0),
    "eval_num_samples": _int(2),
    "resume": _bool,
}

SCHEMA: dict[str, Check] = {
    "preprocess.resolution": _int(1),
    "preprocess.channels": _choice(1, 3),
    "preprocess.crop": _crop,
    "preprocess.heldout_fraction": _float(0, 1, low_open=True, high_open=True),
    "preprocess.subset": _subset,
    "preprocess.min_size": _int(0),
    "preprocess.alpha_background": _int(0),
    "preprocess.labels": _choice("none", "subfolder"),
    "preprocess.seed": _int(0),
    "model.preset": _choice(*PRESETS),
    "model.patch_size": _int(1, optional=True),
    "model.embed_dim": _int(1, optional=True),
    "model.depth": _int(1, optional=True),
    "model.num_heads": _int(1, optional=True),
    "diffusion.schedule": _choice(*SCHEDULES),
    "diffusion.prediction": _choice(*PREDICTIONS),
    "trainer.device": _choice("auto", "cpu", "cuda"),
    "trainer.precision": _choice("fp32", "bf16", "fp16"),
    "trainer.compile": _bool,
    "trainer.nproc": _int(1),
    **{f"pretrain.{k}": c for k, c in _STAGE.items()},
    "pretrain.data": _choice("target", "source"),
    "pretrain.mask_kind": _choice(*MASK_KINDS),
    "pretrain.mask_ratio": _float(0, 1, high_open=True),
    "pretrain.mask_block_size": _int(1),
    "pretrain.mask_crop_size": _int(1, optional=True),
    **{f"finetune.{k}": c for k, c in _STAGE.items()},
    "finetune.init_from": _choice("raw", "ema"),
    **{f"baseline.{k}": c for k, c in _STAGE.items()},
    "sample.sampler": _choice(*SAMPLERS),
    "sample.steps": _int(1, optional=True),  # null: every step (ddpm); validate_sampling decides
    "sample.eta": _float(0),
    "sample.num_samples": _int(1),
    "sample.batch_size": _int(1),
    "sample.seed": _int(0),
    "evaluate.fid.enabled": _bool,
    "evaluate.fid.weights_path": lambda v: None if v is None or isinstance(v, str) else "must be a path or null",
    "evaluate.fid.allow_download": _bool,
    "evaluate.fid.dims": _choice(64, 192, 768, 2048),
    "evaluate.fid.batch_size": _int(1),
    "evaluate.fd_clf.enabled": _bool,
    "evaluate.fd_clf.num_samples": _int(2),
    "evaluate.fd_clf.epochs": _int(1),
    "evaluate.fd_clf.seed": _int(0),
}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; keys that already contain dots are kept as is."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _is_known(name: str) -> bool:
    return name in SCHEMA or any(name.startswith(f"{key}.") for key in SCHEMA)


def validate_parameters(params: Mapping[str, Any], runtime_params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ParameterError` listing every problem; return quietly when all is well."""
    problems: list[str] = []
    for name in flatten(runtime_params or {}):
        if not _is_known(name):
            problems.append(f"--params {name}: unknown parameter; known names: see conf/base/parameters*.yml")
    flat = flatten(params)
    for name, value in flat.items():
        check = SCHEMA.get(name)
        if check is None:
            problems.append(f"{name}: unknown parameter (a typo? every valid name is in conf/base/parameters*.yml)")
        elif (why := check(value)) is not None:
            problems.append(f"{name}={value!r}: {why}")
    if not problems:
        problems += _cross_checks(params)
    if problems:
        raise ParameterError("Invalid parameters, nothing was run:\n  - " + "\n  - ".join(problems))


def _cross_checks(params: Mapping[str, Any]) -> list[str]:
    """Checks that involve several parameters: resolution vs patch grid, masks vs grid, sampler
    vs steps, batch vs nproc, and each stage's full config. Each reuses the check of the module
    that owns the rule, so the refusal here is word for word the one the node would give later.
    Fast: imports, no model is built."""
    from maskdm_pipeline.diffusion.samplers import validate_sampling
    from maskdm_pipeline.diffusion.schedules import make_schedule
    from maskdm_pipeline.masking import validate_mask_params
    from maskdm_pipeline.models.presets import PRESETS as MODEL_PRESETS
    from maskdm_pipeline.training.config import StageConfig, TrainerConfig, check_compatible

    problems: list[str] = []

    def attempt(check: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, check()
        except ValueError as exc:
            problems.append(str(exc))
            return False, None

    model = params.get("model", {}) or {}
    preprocess = params.get("preprocess", {}) or {}
    trainer_params = dict(params.get("trainer", {}) or {})
    if trainer_params.get("device") == "cuda":
        # Whether this machine has a GPU is for the training node to say: preprocessing or a
        # report with a GPU config must still run on a CPU-only machine.
        trainer_params["device"] = "cpu"
    _, trainer = attempt(lambda: TrainerConfig.from_dict(trainer_params))

    # The model's image size is preprocess.resolution (training_nodes.model_config).
    grid: int | None = None
    preset = model.get("preset")
    resolution = preprocess.get("resolution")
    if preset in MODEL_PRESETS and isinstance(resolution, int):
        patch = model.get("patch_size") or MODEL_PRESETS[preset]["patch_size"]
        source = "model.patch_size" if model.get("patch_size") else f"model.preset={preset!r}"
        if resolution % patch:
            problems.append(
                f"preprocess.resolution={resolution} is not divisible by the patch size {patch} "
                f"(from {source}); pick a multiple of {patch}, e.g. {max(patch, resolution // patch * patch)}"
            )
        else:
            grid = resolution // patch

    engine_keys = {f.name for f in dataclasses.fields(StageConfig)}
    for name in ("pretrain", "finetune", "baseline"):
        block = params.get(name)
        if not isinstance(block, Mapping):
            continue
        if "mask_kind" in block and grid is not None:
            # First, so that the messages use the flat names users type (pretrain.mask_crop_size);
            # when it fails, the rest of the stage is still checked, without the mask.
            ok, _ = attempt(lambda b=block, n=name: validate_mask_params(
                b["mask_kind"], grid, b.get("mask_ratio"), b.get("mask_block_size"),
                b.get("mask_crop_size"), prefix=n))
            if not ok:
                block = {k: v for k, v in block.items() if not k.startswith("mask_")}
        # The schema has vetted every name by now: what the engine does not know steers the
        # node (resume, eval_num_samples, init_from, data, ...), as in training_nodes.NODE_KEYS.
        node_keys = [k for k in block if k not in engine_keys and not k.startswith("mask_")]
        ok, stage = attempt(lambda b=block, n=name, i=node_keys: StageConfig.from_dict(b, name=n, ignore=i))
        if ok and trainer is not None:
            attempt(lambda s=stage, n=name: check_compatible(s, trainer, n))

    sample = params.get("sample")
    if isinstance(sample, Mapping) and "sampler" in sample:
        T = inspect.signature(make_schedule).parameters["T"].default  # T is fixed, not a parameter
        attempt(lambda: validate_sampling(sample["sampler"], sample.get("steps"), T, sample.get("eta", 1.0)))
    return problems
