"""What one training process needs besides the loop: its device, its batch on the device (from
the training images kept on the GPU when they fit), its share of the per-step collective, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maskdm_pipeline.devices import resolve_device, to_device
from maskdm_pipeline.shards import take_rows
from maskdm_pipeline.training.config import TrainerConfig


def select_device(trainer: TrainerConfig, local_rank: int) -> torch.device:
    device = resolve_device(trainer.device, index=local_rank)  # one GPU per rank
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def host_images(images: Any) -> Any:
    """The training images as the loop reads them: shards (memory-mapped) or an array stay as
    they are; a CPU tensor becomes the numpy array over the same memory (no copy)."""
    if isinstance(images, torch.Tensor):
        return images.cpu().numpy()
    return images


# The training split stays on the GPU when it takes at most this share of the GPU's free memory
# once the model, its EMA and its optimizer are there: then a batch is gathered on the GPU and the
# host only launches work. The rest stays free for the activations, which grow with the batch.
RESIDENT_FRACTION = 0.25
_COPY_BYTES = 256 * 2**20  # host memory for the one-off copy to the GPU, a slice at a time


def resident_images(images: Any, device: torch.device, reserved: int = 0) -> torch.Tensor | None:
    """The whole uint8 split ``(N, C, H, W)`` as a tensor on ``device`` when it is a GPU and the
    split takes at most ``RESIDENT_FRACTION`` of its free memory less ``reserved`` bytes (what
    training allocates at its first step besides activations: gradients, optimizer state); else
    None (batches are then gathered on the host and copied, :func:`images_to_device`).

    ``images``: shards or an array (:func:`host_images`), read in slices of at most 256 MiB.
    """
    if device.type != "cuda":
        return None
    shape = tuple(int(n) for n in images.shape)
    row = int(np.prod(shape[1:]))
    free, _ = torch.cuda.mem_get_info(device)
    if shape[0] * row > RESIDENT_FRACTION * (free - reserved):
        return None
    resident = torch.empty(shape, dtype=torch.uint8, device=device)
    step = max(1, _COPY_BYTES // row)
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        resident[start:stop].copy_(torch.from_numpy(np.array(images[start:stop], dtype=np.uint8)))
    return resident


def images_to_device(images: Any, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 rows -> float in [-1, 1] on the device (x / 127.5 - 1, METHOD.md section 4).

    ``images``: the split on the GPU (:func:`resident_images`), gathered there; or shards or a
    uint8 array (:func:`host_images`), whose rows are gathered with numpy's fancy indexing (on a
    uint8 tensor torch's was 30-70x slower per batch: 64 random rows of 64x64 RGB: 3.7-7.8 ms
    against 0.1 ms, page-cached or in RAM alike) and copied from pinned memory.
    """
    if isinstance(images, torch.Tensor) and images.device == device:
        batch = images.index_select(0, to_device(indices, device))  # (b, C, H, W) uint8
    else:
        # (b, C, H, W) uint8; moving uint8 is 4x less traffic than float
        batch = to_device(torch.from_numpy(take_rows(images, indices.numpy())), device)
    return batch.float().div_(127.5).sub_(1.0)


def flip_horizontally(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images (b, C, H, W) whose ``flip`` (b,) bool is True (``<stage>.hflip``,
    the official transfer configs' augmentation, METHOD.md section 4); the others are unchanged."""
    flip = to_device(flip, images.device)[:, None, None, None]  # (b, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def reduce_step(loss: torch.Tensor, stop: bool, world_size: int) -> tuple[float, bool]:
    """Global mean loss and "any rank was signalled", in one collective."""
    if world_size == 1:
        return float(loss.float().item()), stop
    packed = torch.stack([loss.float(), torch.tensor(float(stop), device=loss.device)])
    dist.all_reduce(packed)
    return float(packed[0].item()) / world_size, bool(packed[1].item() > 0)


# ---------------------------------------------------------------------------- signals
class HandledSignals:
    """SIGINT and SIGTERM go to :meth:`_handle` while the ``with`` block runs; the previous
    handlers come back on exit. Handlers can only be installed in the main thread (Python's
    rule), so elsewhere (e.g. a Kedro thread runner) this is a no-op; a signal the process was
    told to ignore (nohup, `cmd &`) stays ignored."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> HandledSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


class StopOnSignal(HandledSignals):
    """Turn SIGINT/SIGTERM into a request to stop after the current step.

    A step killed half-way would leave optimizer and EMA out of step with the model; finishing
    it costs well under a second at the scales here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requested = False
        self.signal_name: str | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        super().__enter__()
        return self
