"""Typed configuration of the training engine: the model, the diffusion, one stage, its mask and
the trainer.

Frozen pydantic models: validated once when built (from the parameter files by the schema in
:mod:`maskdm_pipeline.params`, or directly by Python callers), immutable and picklable after
that, and turned back into plain dicts (``to_dict``), which is how they travel inside checkpoints.
The allowed names (mask kinds, presets, schedules, predictions, devices, precisions) are imported
from the modules that own them. Refusals raise ``pydantic.ValidationError`` (a ``ValueError``)
naming the field.

Defaults follow METHOD.md section 4 (the official code): AdamW betas (0.99, 0.99), weight decay
0.03, gradient clipping 1.0 (the code default when a config does not set ``clip_grad``), EMA
0.999 that copies the weights for the first 100 steps, no warm-up. ``batch_size`` is the GLOBAL
batch (``split_batches=True`` upstream), so results do not depend on ``nproc``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from maskdm_pipeline import masking
from maskdm_pipeline.devices import DEVICES, PRECISIONS, resolve_device
from maskdm_pipeline.diffusion.losses import LOSS_WEIGHTINGS
from maskdm_pipeline.diffusion.prediction import PREDICTIONS
from maskdm_pipeline.diffusion.schedules import SCHEDULES
from maskdm_pipeline.models.presets import PRESETS

MaskSampler = Callable[..., torch.Tensor]  # (batch_size, generator=...) -> (B, N) bool


class Frozen(BaseModel):
    """Unknown keys are refused (usually a typo); no silent coercion ("1" is not 1, 1 is not
    True); immutable once built."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def interval(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A finite number in an interval; a refusal names the interval, e.g. ``must be in [0, 1)``."""
    words = f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: float) -> float:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise ValueError(words)
        return value

    return Annotated[float, Field(allow_inf_nan=False), AfterValidator(check)]


def _betas(value: Any) -> Any:
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(
        type(b) in (int, float) and math.isfinite(b) and 0 <= b < 1 for b in value)
    if not ok:
        raise ValueError("must be two numbers in [0, 1), e.g. [0.99, 0.99]")
    return tuple(float(b) for b in value)


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Betas = Annotated[tuple[float, float], BeforeValidator(_betas)]

MaskKind = Literal[masking.MASK_KINDS]
MaskRatio = interval(0, 1, high_open=True)
Preset = Literal[tuple(PRESETS)]


# ---------------------------------------------------------------------------- model, diffusion
class ModelParams(Frozen):
    """The ``model`` parameter block: a preset (models/presets.py) and overrides (None = the
    preset's own value). The image size and channels come from the data (``ModelConfig``).

    ``class_conditional``: the model takes the class as one more token (models/uvit.py); the
    number of classes K comes from the training split's labels, not from a parameter."""

    preset: Preset
    patch_size: PositiveInt | None = None
    embed_dim: PositiveInt | None = None
    depth: PositiveInt | None = None
    num_heads: PositiveInt | None = None
    class_conditional: bool = False

    def for_images(self, images: Any, num_classes: int | None = None) -> ModelConfig:
        """The model for uint8 images ``(N, C, H, W)``: their side and channels, these overrides,
        and ``num_classes`` K (None: unconditional)."""
        return ModelConfig(**self.model_dump(exclude={"class_conditional"}), img_size=int(images.shape[-1]),
                           in_chans=int(images.shape[1]), num_classes=num_classes)


class ModelConfig(ModelParams):
    """The U-ViT to build (nanoGPT's ``GPTConfig``): ``build_uvit(preset, **overrides)``.

    ``num_classes``: K of a class-conditional model, None for an unconditional one (then absent
    from :meth:`to_dict`, so an unconditional checkpoint's config is what it always was).
    ``class_conditional`` is the parameter's; here ``num_classes`` alone says it."""

    img_size: PositiveInt | None = None
    in_chans: PositiveInt | None = None
    num_classes: PositiveInt | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"preset": ..., **the overrides that are set}``, as stored in checkpoints."""
        return self.model_dump(exclude_none=True, exclude={"class_conditional"})

    def build(self) -> torch.nn.Module:
        from maskdm_pipeline.models import build_uvit

        config = self.to_dict()
        return build_uvit(config.pop("preset"), **config)


class DiffusionConfig(Frozen):
    """The ``diffusion`` block: noise schedule (T = 1000 fixed), prediction target and the loss's
    timestep weighting, used by every training stage's loss (diffusion/losses.py).

    ``loss_weighting``: ``none`` (MaskDM's L_simple, METHOD.md 1.7) or ``min_snr`` (Min-SNR-gamma,
    Hang et al., ICCV 2023) with ``min_snr_gamma`` (their 5). Schedule and prediction define what
    the network computes, the weighting how its errors are counted during training; a resumed
    run needs all of them unchanged (training/resume.py ``check_resume``).
    """

    schedule: Literal[SCHEDULES] = "linear"
    prediction: Literal[PREDICTIONS] = "eps"
    loss_weighting: Literal[LOSS_WEIGHTINGS] = "none"
    min_snr_gamma: PositiveFloat = 5.0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()



# ---------------------------------------------------------------------------- one stage
class MaskConfig(Frozen):
    """Which tokens to drop during masked pre-training (METHOD.md section 2).

    ``ratio`` is ignored by ``crop`` (the crop size alone sets the ratio) and ``block_size`` is
    in patches. ``dense_blocks`` (k, dense-first masking, models/uvit.py) lets the first k
    in-blocks see every token before the masked ones are dropped; 0 is MaskDM. It needs no
    weights, so it is part of the stage's recipe, not of the model (fine-tuning ignores it); the
    model checks it against its depth (``models.check_dense_blocks``). The ratio is fixed for
    the whole stage: the paper uses no curriculum. What depends on the patch grid (a block size
    that divides it, a crop that fits, a crop size for ``crop``) is checked by :meth:`check`
    (and so by :meth:`sampler` and :meth:`count`), with masking.py's own rules.
    """

    kind: MaskKind = "block"
    ratio: MaskRatio = 0.9
    block_size: PositiveInt = 4
    crop_size: PositiveInt | None = None
    dense_blocks: NonNegativeInt = 0

    @property
    def drops_tokens(self) -> bool:
        """A 0-ratio patch/block mask is plain DSM (METHOD.md section 1 item 8)."""
        return self.kind == "crop" or self.ratio > 0.0

    def check(self, grid_size: int, name: str = "pretrain") -> None:
        """Refuse settings that do not fit a ``grid_size`` x ``grid_size`` patch grid.

        Raises:
            ValueError: naming the parameter where stage ``name`` keeps it, ``<name>.mask.<field>``.
        """
        masking.validate_mask_params(self.kind, grid_size, self.ratio, self.block_size,
                                     self.crop_size, prefix=f"{name}.mask")

    def count(self, grid_size: int, name: str = "pretrain") -> int:
        """Masked patches per image on a ``grid_size`` x ``grid_size`` patch grid.

        Raises:
            ValueError: as :meth:`check`.
        """
        self.check(grid_size, name)
        return masking.mask_count(self.kind, grid_size, self.ratio, self.block_size, self.crop_size)

    def sampler(self, grid_size: int, name: str = "pretrain") -> MaskSampler:
        """``sampler(batch_size, generator=g) -> bool (B, grid_size**2)``, True = masked.

        The settings are checked against the grid here, once (:meth:`check`); the returned
        ``functools.partial`` of ``masking.draw_masks`` trusts them on every step.
        """
        self.check(grid_size, name)
        return functools.partial(masking.draw_masks, self.kind, grid_size, ratio=self.ratio,
                                 block_size=self.block_size, crop_size=self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class StageConfig(Frozen):
    """The optimisation recipe of one training stage; defaults from METHOD.md section 4.

    ``checkpoint_every`` and ``eval_every``: 0 means off. ``hflip``: the probability that a
    training image is mirrored left-right, drawn per image from the stage's seeded streams
    (training/streams.py); 0 (the official default) draws nothing, the official transfer
    fine-tuning uses 0.5 (METHOD.md section 4 table). ``label_dropout``: for a class-conditional
    model, the probability that a training image's label is replaced by the "no label" class,
    drawn per image from the stage's seeded streams, so that the one network also learns the
    unconditional prediction classifier-free guidance needs (DiT's 0.1, the default; U-ViT uses
    0.15); unused by an unconditional model.
    """

    steps: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    betas: Betas = (0.99, 0.99)
    weight_decay: NonNegativeFloat = 0.03
    warmup_steps: NonNegativeInt = 0
    grad_clip: PositiveFloat | None = 1.0
    ema_decay: interval(0, 1, high_open=True) = 0.999
    ema_update_after_step: NonNegativeInt = 100
    seed: NonNegativeInt = 0
    checkpoint_every: NonNegativeInt = 0
    log_every: PositiveInt = 100
    eval_every: NonNegativeInt = 0
    hflip: interval(0, 1) = 0.0
    label_dropout: interval(0, 1) = 0.1

    def to_dict(self, mask: MaskConfig | None = None) -> dict[str, Any]:
        """The fields of this class (not a subclass's) plus ``mask``, as stored in checkpoints."""
        out = self.model_dump(include=set(StageConfig.model_fields))
        out["betas"] = list(self.betas)  # lists survive JSON and YAML round trips; tuples do not
        out["mask"] = None if mask is None else mask.to_dict()
        return out


# ---------------------------------------------------------------------------- hardware
def _endpoint(value: str | None) -> str | None:
    """``host:port`` as torchrun's ``--rdzv-endpoint`` takes it (an IPv6 host in brackets)."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port (e.g. node0:29400), the address of the first node and a free "
                         "TCP port on it")
    return value


class TrainerConfig(Frozen):
    """The ``trainer`` block: where, in which precision, compiled or not, on how many processes
    and nodes (training/distributed.py).

    ``nnodes``, ``rdzv_endpoint``, ``rdzv_timeout`` and ``max_restarts`` are torchrun's
    ``--nnodes``, ``--rdzv-endpoint``, the c10d rendezvous's join timeout (seconds) and
    ``--max-restarts``: the same ``kedro run`` command on every node forms one DDP job of
    ``nnodes * nproc`` processes. The defaults keep one node on a private local port.
    """

    device: Literal[DEVICES] = "auto"
    precision: Literal[PRECISIONS] = "fp32"
    compile: bool = False
    nproc: PositiveInt = 1
    nnodes: PositiveInt = 1
    rdzv_endpoint: Annotated[str | None, AfterValidator(_endpoint)] = None
    rdzv_timeout: PositiveInt = 900
    max_restarts: NonNegativeInt = 0

    @property
    def world_size(self) -> int:
        """Processes in the whole job: ``nnodes * nproc``."""
        return self.nnodes * self.nproc

    @property
    def distributed(self) -> bool:
        """Whether training runs in worker processes (several processes or several nodes)."""
        return self.world_size > 1

    def resolved_device(self) -> str:
        """``auto`` means the GPU when there is one."""
        return resolve_device(self.device).type

    def check_hardware(self) -> None:
        """Refuse what this machine cannot run (the schema leaves it to the training node, so that
        a GPU config still validates, preprocesses and reports on a CPU-only machine).

        Raises:
            ValueError: CUDA requested without a GPU, or more processes than GPUs.
        """
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("trainer.device='cuda': CUDA was requested but torch sees no GPU; "
                             "use auto or cpu")
        if self.resolved_device() == "cuda" and self.nproc > torch.cuda.device_count():
            raise ValueError(f"trainer.nproc={self.nproc}: one GPU per process, but only "
                             f"{torch.cuda.device_count()} visible")

    def check_nodes(self) -> None:
        """Several nodes need the rendezvous address.

        Raises:
            ValueError: ``trainer.nnodes=<N> needs trainer.rdzv_endpoint=<host>:<port> ...``.
        """
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(f"trainer.nnodes={self.nnodes} needs trainer.rdzv_endpoint=<host>:<port>, the "
                             "address of the first node and a free port on it, the same on every node")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def check_compatible(stage: StageConfig, trainer: TrainerConfig, name: str = "stage") -> None:
    """The global batch must split evenly over the processes of every node.

    Raises:
        ValueError: ``<name>.batch_size=<B>: the global batch must be divisible by trainer.nproc=<P>``
            (with ``trainer.nnodes`` x ``trainer.nproc`` on several nodes).
    """
    if stage.batch_size % trainer.world_size:
        over = (f"trainer.nproc={trainer.nproc}" if trainer.nnodes == 1 else
                f"trainer.nnodes x trainer.nproc = {trainer.nnodes} x {trainer.nproc} = {trainer.world_size}")
        raise ValueError(f"{name}.batch_size={stage.batch_size}: the global batch must be divisible by {over}")
