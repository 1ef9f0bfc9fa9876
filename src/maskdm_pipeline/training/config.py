"""Typed, validated configuration of one training stage and of the trainer.

A training stage (``pretrain``, ``finetune``, ``baseline``) is described by :class:`StageConfig`,
where the hardware is described by :class:`TrainerConfig`. Both are built from the plain dicts
Kedro hands over (``from_dict``) and turn back into JSON-able dicts (``to_dict``), which is how they
travel inside checkpoints.

Defaults follow METHOD.md section 4 (the official code): AdamW betas (0.99, 0.99), weight decay
0.03, gradient clipping 1.0 (the code default when a config does not set ``clip_grad``), EMA
0.999 that copies the weights for the first 100 steps, no warm-up. ``batch_size`` is the GLOBAL
batch (``split_batches=True`` upstream), so results do not depend on ``nproc``.

Validation happens before any work and every error names the parameter by its dotted name,
the value and what is allowed, e.g. ``finetune.lr=-1: must be > 0`` (DESIGN.md: "an unknown or
invalid value is refused before any work, naming the parameter").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from maskdm_pipeline.devices import DEVICES, PRECISIONS, resolve_device

MASK_KINDS = ("patch", "block", "crop")

# Flat spellings accepted for the mask (DESIGN.md lists `pretrain.mask_ratio` etc. as the
# command-line parameters), mapped onto the nested MaskConfig fields.
_FLAT_MASK_KEYS = {
    "mask_kind": "kind",
    "mask_ratio": "ratio",
    "mask_block_size": "block_size",
    "mask_crop_size": "crop_size",
}


def _fail(name: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{name}={value!r}: {rule}")


def _int(name: str, value: Any, *, minimum: int) -> int:
    # bool is an int subclass; `steps: true` in YAML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, f"must be an integer >= {minimum}")
    if value < minimum:
        raise _fail(name, value, f"must be an integer >= {minimum}")
    return int(value)


def _float(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = True,
           high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(name, value, "must be a finite number")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        if math.isinf(high):
            raise _fail(name, value, f"must be {'>' if low_open else '>='} {low:g}")
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(name, value, f"must lie in {interval}")
    return float(value)


def _optional_positive_int(name: str, value: Any) -> int:
    """0 / None both mean "off" for the periodic knobs (checkpoint_every, eval_every)."""
    if value is None:
        return 0
    return _int(name, value, minimum=0)


def _check_keys(name: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise _fail(name, data, "must be a mapping of parameters")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{name}.{unknown[0]}: unknown parameter; allowed: {', '.join(sorted(allowed))}"
        )


@dataclass(frozen=True)
class MaskConfig:
    """Which tokens to drop during masked pre-training (METHOD.md section 2).

    ``ratio`` is ignored by ``crop`` (the crop size alone sets the ratio) and ``block_size`` is
    in patches. The ratio is fixed for the whole stage: the paper uses no curriculum.
    """

    kind: str = "block"
    ratio: float = 0.9
    block_size: int = 4
    crop_size: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "mask") -> MaskConfig:
        _check_keys(name, data, {f.name for f in dataclasses.fields(cls)})
        kind = data.get("kind", cls.kind)
        if kind not in MASK_KINDS:
            raise _fail(f"{name}.kind", kind, f"must be one of {', '.join(MASK_KINDS)}")
        ratio = _float(f"{name}.ratio", data.get("ratio", cls.ratio), low=0.0, high=1.0,
                       low_open=False, high_open=True)
        block_size = _int(f"{name}.block_size", data.get("block_size", cls.block_size), minimum=1)
        crop_size = data.get("crop_size")
        if crop_size is not None:
            crop_size = _int(f"{name}.crop_size", crop_size, minimum=1)
        elif kind == "crop":
            raise _fail(f"{name}.crop_size", None, "required when kind is 'crop' (in patches)")
        return cls(kind=kind, ratio=ratio, block_size=block_size, crop_size=crop_size)

    @property
    def drops_tokens(self) -> bool:
        """A 0-ratio patch/block mask is plain DSM (METHOD.md section 1 item 8)."""
        return self.kind == "crop" or self.ratio > 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StageConfig:
    """One training stage; defaults from METHOD.md section 4 (see the module docstring)."""

    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float] = (0.99, 0.99)
    weight_decay: float = 0.03
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_update_after_step: int = 100
    seed: int = 0
    mask: MaskConfig | None = None
    checkpoint_every: int = 0
    log_every: int = 100
    eval_every: int = 0

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], name: str = "stage", ignore: Iterable[str] = ()
    ) -> StageConfig:
        """Build and validate; ``name`` is the prefix used in error messages (e.g. ``pretrain``).

        The mask may be given nested (``mask: {kind, ratio, ...}``) or flat (``mask_kind``,
        ``mask_ratio``, ``mask_block_size``, ``mask_crop_size``), but not both. Keys in
        ``ignore`` belong to the caller (e.g. a node's ``resume`` or ``eval_num_samples``) and
        are skipped; any other unknown key is refused, since it is usually a typo.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys(name, data, fields | set(_FLAT_MASK_KEYS) | set(ignore))
        data = {k: v for k, v in data.items() if k not in set(ignore)}
        for required in ("steps", "batch_size", "lr"):
            if required not in data:
                raise ValueError(f"{name}.{required}: missing; this parameter is required")

        flat = {_FLAT_MASK_KEYS[k]: v for k, v in data.items() if k in _FLAT_MASK_KEYS}
        mask_data = data.get("mask")
        if flat and mask_data is not None:
            raise ValueError(
                f"{name}.mask: given both nested and as {name}.mask_*; use one spelling"
            )
        mask: MaskConfig | None = None
        if flat:
            mask = MaskConfig.from_dict(flat, name=f"{name}.mask")
        elif isinstance(mask_data, MaskConfig):
            mask = mask_data
        elif mask_data is not None:
            mask = MaskConfig.from_dict(mask_data, name=f"{name}.mask")

        betas = data.get("betas", cls.betas)
        if not isinstance(betas, list | tuple) or len(betas) != 2:
            raise _fail(f"{name}.betas", betas, "must be two numbers in [0, 1)")
        betas = tuple(
            _float(f"{name}.betas[{i}]", b, low=0.0, high=1.0, low_open=False, high_open=True)
            for i, b in enumerate(betas)
        )
        grad_clip = data.get("grad_clip", cls.grad_clip)
        if grad_clip is not None:
            grad_clip = _float(f"{name}.grad_clip", grad_clip, low=0.0)

        return cls(
            steps=_int(f"{name}.steps", data["steps"], minimum=1),
            batch_size=_int(f"{name}.batch_size", data["batch_size"], minimum=1),
            lr=_float(f"{name}.lr", data["lr"], low=0.0),
            betas=betas,  # type: ignore[arg-type]
            weight_decay=_float(f"{name}.weight_decay", data.get("weight_decay", cls.weight_decay),
                                low=0.0, low_open=False),
            warmup_steps=_int(f"{name}.warmup_steps", data.get("warmup_steps", 0), minimum=0),
            grad_clip=grad_clip,
            ema_decay=_float(f"{name}.ema_decay", data.get("ema_decay", cls.ema_decay), low=0.0,
                             high=1.0, low_open=False, high_open=True),
            ema_update_after_step=_int(f"{name}.ema_update_after_step",
                                       data.get("ema_update_after_step", 100), minimum=0),
            seed=_int(f"{name}.seed", data.get("seed", 0), minimum=0),
            mask=mask,
            checkpoint_every=_optional_positive_int(f"{name}.checkpoint_every",
                                                    data.get("checkpoint_every", 0)),
            log_every=_int(f"{name}.log_every", data.get("log_every", cls.log_every), minimum=1),
            eval_every=_optional_positive_int(f"{name}.eval_every", data.get("eval_every", 0)),
        )

    @property
    def masked(self) -> bool:
        """True when this stage drops tokens (MDSM); False means full-image DSM."""
        return self.mask is not None and self.mask.drops_tokens

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)  # lists survive JSON and YAML round trips; tuples do not
        out["mask"] = None if self.mask is None else self.mask.to_dict()
        return out


@dataclass(frozen=True)
class TrainerConfig:
    """Hardware knobs: where, in which precision, compiled or not, on how many processes."""

    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    nproc: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "trainer") -> TrainerConfig:
        _check_keys(name, data, {f.name for f in dataclasses.fields(cls)})
        device = data.get("device", cls.device)
        if device not in DEVICES:
            raise _fail(f"{name}.device", device, f"must be one of {', '.join(DEVICES)}")
        precision = data.get("precision", cls.precision)
        if precision not in PRECISIONS:
            raise _fail(f"{name}.precision", precision, f"must be one of {', '.join(PRECISIONS)}")
        compile_ = data.get("compile", cls.compile)
        if not isinstance(compile_, bool):
            raise _fail(f"{name}.compile", compile_, "must be true or false")
        nproc = _int(f"{name}.nproc", data.get("nproc", cls.nproc), minimum=1)
        if device == "cuda" and not torch.cuda.is_available():
            raise _fail(f"{name}.device", device,
                        "CUDA was requested but torch sees no GPU; use auto or cpu")
        config = cls(device=device, precision=precision, compile=compile_, nproc=nproc)
        if config.resolved_device() == "cuda" and nproc > torch.cuda.device_count():
            raise _fail(f"{name}.nproc", nproc,
                        f"one GPU per process, but only {torch.cuda.device_count()} visible")
        return config

    def resolved_device(self) -> str:
        """``auto`` means the GPU when there is one."""
        return resolve_device(self.device).type

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_compatible(stage: StageConfig, trainer: TrainerConfig, name: str = "stage") -> None:
    """Cross-checks that need both configs: the global batch must split evenly over ranks."""
    if stage.batch_size % trainer.nproc:
        raise _fail(f"{name}.batch_size", stage.batch_size,
                    f"the global batch must be divisible by trainer.nproc={trainer.nproc}")
