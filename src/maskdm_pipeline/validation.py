"""The parameter schema: every user-settable parameter, its type and its allowed values.

Kedro merges ``conf/base``, the ``--env`` environment and ``--params``; this module checks the
result before any node runs (see :mod:`maskdm_pipeline.hooks`). An unknown name (a typo such
as ``pretrain.mask_ratoi``) or an invalid value is refused with a message that names the
parameter, the value and what is allowed. Pure: no Kedro import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], str | None]  # returns an explanation when the value is invalid


class ParameterError(ValueError):
    """An unknown parameter name or an invalid value; the message names the parameter."""


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
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "must be a number" + (" or null" if optional else "")
        if low is not None and (v <= low if low_open else v < low):
            return f"must be {'>' if low_open else '>='} {low}"
        if high is not None and (v >= high if high_open else v > high):
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
    "pretrain.mask_kind": _choice(*MASK_KINDS),
    "pretrain.mask_ratio": _float(0, 1, high_open=True),
    "pretrain.mask_block_size": _int(1),
    "pretrain.mask_crop_size": _int(1, optional=True),
    **{f"finetune.{k}": c for k, c in _STAGE.items()},
    "finetune.init_from": _choice("raw", "ema"),
    **{f"baseline.{k}": c for k, c in _STAGE.items()},
    "sample.sampler": _choice(*SAMPLERS),
    "sample.steps": _int(1),
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
    """Checks that involve several parameters (resolution vs patch grid, batch vs nproc, ...)."""
    problems: list[str] = []
    nproc = params.get("trainer", {}).get("nproc", 1)
    for stage in ("pretrain", "finetune", "baseline"):
        batch = params.get(stage, {}).get("batch_size")
        if batch is not None and batch % nproc:
            problems.append(
                f"{stage}.batch_size={batch} is not divisible by trainer.nproc={nproc}: "
                "batch_size is the global batch, split evenly across processes"
            )
    return problems
