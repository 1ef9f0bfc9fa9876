"""Devices and precisions: the one place where a parameter value becomes a torch device or an
autocast dtype (``trainer.device``, ``trainer.precision``), shared by training, sampling and the
metrics. Pure torch, no Kedro.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AUTOCAST_DTYPES", "DEVICES", "PRECISIONS", "autocast", "describe", "resolve_device",
           "synchronize", "to_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
# fp32 is no autocast at all; bf16 has fp32's range, fp16 needs a gradient scaler in training.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """``"auto"`` -> the GPU when torch sees one, else the CPU; other names as torch reads them.

    ``index`` picks the GPU of a local rank (one GPU per process); it is ignored on the CPU.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and index is not None:
        return torch.device("cuda", index)
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (``fp32``: a disabled one) on ``device``'s type."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, without making the host wait for the GPU.

    A copy from pageable host memory may wait for the GPU's queue to drain (CUDA's documented
    behaviour for pageable transfers); from pinned memory it is queued and the host goes on.
    Pinned buffers come from torch's caching host allocator, which reuses them only once the
    copy that read them has finished. Elsewhere (CPU to CPU, already there) a plain ``.to``.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock readings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda (<card name>)``, for the accounting records."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
