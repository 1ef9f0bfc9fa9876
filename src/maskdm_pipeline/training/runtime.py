"""The pieces the training loop is made of: builders, LR schedule, devices, signals, errors.

Kept apart from training/loop.py so the loop reads as the algorithm of METHOD.md section 4
and each helper here can be tested on its own.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maskdm_pipeline.devices import resolve_device
from maskdm_pipeline.training.config import StageConfig, TrainerConfig

logger = logging.getLogger(__name__)

LossFn = Callable[..., torch.Tensor]
ModelBuilder = Callable[[Mapping[str, Any]], nn.Module]
LossBuilder = Callable[[Mapping[str, Any], bool, torch.device], tuple[LossFn, int]]
EvalFn = Callable[[int, nn.Module], Mapping[str, Any] | None]


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


# ---------------------------------------------------------------------------- builders
def default_build_model(model_config: Mapping[str, Any]) -> nn.Module:
    """``build_uvit(preset, **overrides)``; None overrides mean "the preset's own value"."""
    from maskdm_pipeline.models import build_uvit

    config = {k: v for k, v in model_config.items() if v is not None}
    if "preset" not in config:
        raise ValueError("model.preset: missing; name one of the presets in models/presets.py")
    return build_uvit(config.pop("preset"), **config)


def default_build_loss(
    diffusion_config: Mapping[str, Any], masked: bool, device: torch.device
) -> tuple[LossFn, int]:
    """(loss, T): MDSM for masked stages, DSM otherwise (METHOD.md section 1)."""
    from maskdm_pipeline.diffusion import DenoisingLoss, MaskedDenoisingLoss, make_schedule

    kind = diffusion_config.get("schedule", "linear")
    schedule = make_schedule(kind, T=int(diffusion_config.get("T", 1000))).to(device)
    prediction = diffusion_config.get("prediction", "eps")
    loss_cls = MaskedDenoisingLoss if masked else DenoisingLoss
    return loss_cls(schedule, prediction), schedule.num_timesteps


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """LR of the ``step``-th update (1-based): lr * min(step / warmup, 1), then constant.

    METHOD.md section 4: linear warm-up, no decay. Counting from 1 makes the first update
    use lr / warmup instead of wasting a step at lr 0.
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(step / warmup_steps, 1.0)


# ---------------------------------------------------------------------------- checks
def validate_inputs(images: Any, model_config: Mapping[str, Any], stage: StageConfig,
                    build_model: ModelBuilder, name: str) -> None:
    """Refuse mismatched images, model and mask before any process starts or step runs."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = f"{type(images).__name__} {getattr(images, 'dtype', '')} " \
               f"{tuple(getattr(images, 'shape', ()))}"
        raise ValueError(f"{name}: images must be a uint8 tensor (N, C, H, W); got {desc}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: images is empty; nothing to train on")
    with torch.device("meta"):  # attributes only: no memory, no init cost
        model = build_model(model_config)
    expected = (int(model.in_chans), int(model.img_size), int(model.img_size))
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{name}: images are {tuple(images.shape[1:])} but the model expects {expected} "
            "(C, H, W); set model.img_size/in_chans or preprocess.resolution/channels to match"
        )
    masked_per_image(stage, int(model.grid_size), name)


def masked_per_image(stage: StageConfig, grid_size: int, name: str = "stage") -> int:
    """Masked patches per image for this stage (0 when it does not mask)."""
    if not stage.masked:
        return 0
    from maskdm_pipeline.masking import mask_count, validate_mask_params

    m = stage.mask
    assert m is not None
    validate_mask_params(m.kind, grid_size, m.ratio, m.block_size, m.crop_size, prefix=name)
    return mask_count(m.kind, grid_size, m.ratio, m.block_size, m.crop_size)


def mask_sampler(stage: StageConfig,
                 grid_size: int) -> Callable[[int, torch.Generator], torch.Tensor] | None:
    if not stage.masked:
        return None
    from maskdm_pipeline.masking import sample_masks

    m = stage.mask
    assert m is not None
    return lambda batch, generator: sample_masks(
        m.kind, grid_size, batch, ratio=m.ratio, block_size=m.block_size,
        crop_size=m.crop_size, generator=generator,
    )


def load_init_weights(model: nn.Module, weights: Mapping[str, Any], name: str) -> None:
    """Load fine-tuning start weights strictly; a checkpoint dict gives its raw ``model``."""
    state_dict = weights["model"] if "format" in weights and "model" in weights else weights
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(
            f"{name}: init_weights do not fit the model built from the model config (same preset, "
            f"image size and channels as the stage that produced them?): {exc}"
        ) from exc


def check_resume_config(state: Mapping[str, Any], config: Mapping[str, Any], name: str) -> None:
    """Resuming needs the same model and diffusion; other stage changes are only reported."""
    saved = state.get("config", {})
    for part in ("model", "diffusion"):
        if saved.get(part) != config[part]:
            raise ValueError(
                f"{name}: resume_state was trained with {part} config {saved.get(part)} but this "
                f"run asks for {config[part]}; resume with the same config or start afresh"
            )
    changed = sorted(k for k, v in config["stage"].items()
                     if k != "steps" and saved.get("stage", {}).get(k) != v)
    if changed:
        logger.warning("%s: resuming with changed stage settings %s; the continuation will "
                       "differ from an uninterrupted run", name, changed)


# ---------------------------------------------------------------------------- devices
def select_device(trainer: TrainerConfig, local_rank: int) -> torch.device:
    device = resolve_device(trainer.device, index=local_rank)  # one GPU per rank
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows: for the record
    kept beside every timing (accounting, benchmarks)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def images_to_device(images: torch.Tensor, indices: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    """uint8 rows -> float in [-1, 1] on the device (x / 127.5 - 1, METHOD.md section 4)."""
    batch = images[indices]  # (b, C, H, W) uint8; moving uint8 is 4x less traffic than float
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device).float().div_(127.5).sub_(1.0)


def reduce_step(loss: torch.Tensor, stop: bool, world_size: int) -> tuple[float, bool]:
    """Global mean loss and "any rank was signalled", in one collective."""
    if world_size == 1:
        return float(loss.float().item()), stop
    packed = torch.stack([loss.float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(packed)
    return float(packed[0].item()) / world_size, bool(packed[1].item() > 0)


# ---------------------------------------------------------------------------- signals
class StopOnSignal:
    """Turn SIGINT/SIGTERM into a request to stop after the current step.

    A step killed half-way would leave optimizer and EMA out of step with the model; finishing
    it costs well under a second at the scales here. Handlers can only be installed in the
    main thread (Python's rule), so elsewhere (e.g. a Kedro thread runner) this is a no-op.
    Previous handlers are restored on exit.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                # A signal the process was told to ignore (nohup, `cmd &`) stays ignored.
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------- output
class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def progress_bar(show: bool, total: int, initial: int, name: str) -> Any:
    """A tqdm bar (ETA included) or a stand-in with the same methods."""
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True)

