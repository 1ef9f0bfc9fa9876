"""All randomness of a training stage, as seeded ``torch.Generator`` streams.

Why generators and not the global RNG or NumPy (the official code uses NumPy in DataLoader
workers, METHOD.md section 2): every stream's state is a uint8 tensor, so it fits a
``weights_only`` checkpoint, and restoring it makes a resumed run draw exactly what the
uninterrupted run would have drawn.

Why draws are made for the GLOBAL batch and then sliced per rank: METHOD.md section 8 item 5
found that the official code seeds every rank identically, so all GPUs draw the same t and ε
and the global batch has less diversity than it should. Here every rank runs the same streams
(same seed), draws t, ε and masks for all ``batch_size`` samples, and keeps its contiguous
slice. Ranks therefore get different samples, and the union over ranks is the same global
batch whatever ``nproc`` is, which is what makes a 2-process run match a 1-process run.

Streams (seeds derived from ``stage.seed``):

- ``data``: CPU; one ``randperm`` of the training set per epoch, consumed batch by batch
  (batches continue across epoch boundaries, so no image is dropped and tiny sets work);
- ``draws``: CPU; time steps t and masks (small tensors; CPU keeps masks identical on any device);
- ``noise``: on the training device, because ε has the size of the batch of images and
  drawing it on the CPU would cost a host-to-device copy per step;
- ``flips``: CPU; one horizontal-flip decision per image (``<stage>.hflip``), drawn only when
  hflip > 0. A stream of its own, so that a flip probability changes nothing else a step draws
  (the same images, t, masks and noise with or without flips) and hflip = 0 is bitwise what it
  was before flips existed.
- ``label_drops``: CPU; for a class-conditional model, one label-dropout decision per image
  (``<stage>.label_dropout``: the label becomes the "no label" class). A stream of its own for the
  same reason as flips: an unconditional run draws nothing from it and saves no state of it, so
  its checkpoints are what they were. The labels themselves are the images' own (rows of
  ``labels`` at the drawn indices): nothing random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from maskdm_pipeline.training.config import MaskSampler

logger = logging.getLogger(__name__)

# Distinct offsets keep the three streams of one seed apart and away from the streams of the
# neighbouring seeds that other stages use (seed, seed + 1, ...).
_DRAWS_OFFSET = 0x9E3779B1
_NOISE_OFFSET = 2 * 0x9E3779B1
_FLIPS_OFFSET = 3 * 0x9E3779B1
_LABEL_DROPS_OFFSET = 4 * 0x9E3779B1


@dataclass
class Draws:
    """One step's randomness for this rank's slice of the global batch."""

    indices: torch.Tensor  # (b,) int64 rows of the image tensor (CPU)
    t: torch.Tensor  # (b,) int64 time steps (CPU)
    noise: torch.Tensor  # (b, C, H, W) float32 on the device
    mask: torch.Tensor | None  # (b, N) bool (CPU), True = masked; None when not masking
    flip: torch.Tensor | None = None  # (b,) bool (CPU), True = mirror left-right; None: hflip 0
    labels: torch.Tensor | None = None  # (b,) int64 (CPU) classes after dropout; None: unconditional


class TrainingStreams:
    """Data order, time steps, masks and noise for every step of one stage."""

    def __init__(
        self,
        *,
        num_images: int,
        seed: int,
        num_timesteps: int,
        image_shape: tuple[int, int, int],
        device: torch.device,
        mask_sampler: MaskSampler | None = None,
        hflip: float = 0.0,
        labels: torch.Tensor | None = None,
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ) -> None:
        """``labels``: int64 (num_images,) classes 0..K-1 of a conditional model's images, or None;
        ``num_classes``: the model's K, whose "no label" class K replaces a ``label_dropout``
        share of the drawn labels."""
        self.num_images = num_images
        self.num_timesteps = num_timesteps
        self.image_shape = image_shape
        self.device = device
        self.mask_sampler = mask_sampler
        self.data = torch.Generator().manual_seed(seed)
        self.draws = torch.Generator().manual_seed(seed + _DRAWS_OFFSET)
        self.noise = torch.Generator(device=device).manual_seed(seed + _NOISE_OFFSET)
        self.hflip = hflip
        self.flips = torch.Generator().manual_seed(seed + _FLIPS_OFFSET)
        self.labels = labels
        self.label_dropout = label_dropout
        self.null_class = num_classes
        self.label_drops = torch.Generator().manual_seed(seed + _LABEL_DROPS_OFFSET)
        self._seed = seed
        self._perm: torch.Tensor | None = None
        self._cursor = 0
        self._epoch = 0

    def next_indices(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` image indices of the endless per-epoch shuffle."""
        parts = []
        needed = batch_size
        while needed:
            if self._perm is None or self._cursor == self.num_images:
                self._perm = torch.randperm(self.num_images, generator=self.data)
                self._cursor = 0
                self._epoch += 1
            take = min(needed, self.num_images - self._cursor)
            parts.append(self._perm[self._cursor : self._cursor + take])
            self._cursor += take
            needed -= take
        return torch.cat(parts)

    def draw(self, global_batch: int, rank: int = 0, world_size: int = 1) -> Draws:
        """Draw for the whole global batch (same on every rank), return this rank's slice."""
        indices = self.next_indices(global_batch)  # (B,)
        t = torch.randint(0, self.num_timesteps, (global_batch,), generator=self.draws)  # (B,)
        mask = None
        if self.mask_sampler is not None:
            mask = self.mask_sampler(global_batch, generator=self.draws)  # (B, N)
        noise = torch.randn(
            (global_batch, *self.image_shape), generator=self.noise, device=self.device
        )  # (B, C, H, W)
        flip = None
        if self.hflip > 0:
            flip = torch.rand(global_batch, generator=self.flips) < self.hflip  # (B,) bool
        labels = None
        if self.labels is not None:
            labels = self.labels[indices]  # (B,)
            if self.label_dropout > 0:
                drop = torch.rand(global_batch, generator=self.label_drops) < self.label_dropout  # (B,) bool
                labels = torch.where(drop, self.null_class, labels)
        per_rank = global_batch // world_size
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        return Draws(
            indices=indices[rows],
            t=t[rows],
            noise=noise[rows],
            mask=None if mask is None else mask[rows],
            flip=None if flip is None else flip[rows],
            labels=None if labels is None else labels[rows],
        )

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        state = {
            "data": self.data.get_state(),
            "draws": self.draws.get_state(),
            "noise": self.noise.get_state(),
            "noise_device": self.device.type,
            "flips": self.flips.get_state(),
            "perm": self._perm,
            "cursor": self._cursor,
            "epoch": self._epoch,
        }
        if self.labels is not None:  # only a conditional run has this stream's state to keep
            state["label_drops"] = self.label_drops.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any], *, resumed_step: int) -> None:
        """Restore every stream; ``resumed_step`` only seeds a fallback (see below)."""
        perm = state["perm"]
        if perm is not None and perm.numel() != self.num_images:
            raise ValueError(
                f"the checkpoint was trained on {perm.numel()} images but {self.num_images} were "
                "given; resume with the same training set"
            )
        self.data.set_state(state["data"])
        self.draws.set_state(state["draws"])
        if "flips" in state:  # absent from states saved before flips existed: none was drawn
            self.flips.set_state(state["flips"])
        if "label_drops" in state:  # absent from unconditional states: none was drawn
            self.label_drops.set_state(state["label_drops"])
        self._perm = perm
        self._cursor = int(state["cursor"])
        self._epoch = int(state["epoch"])
        if state["noise_device"] == self.device.type:
            self.noise.set_state(state["noise"])
        else:
            # CPU (mt19937) and CUDA (Philox) generator states are not interchangeable. Moving a
            # run between machines is legitimate, so reseed deterministically and say that
            # the continuation is reproducible but no longer identical to the original run.
            logger.warning(
                "checkpoint noise stream was on %s, training now runs on %s: reseeding it "
                "(the resumed run is deterministic but not bitwise identical to the original)",
                state["noise_device"], self.device.type,
            )
            self.noise.manual_seed(self._seed + _NOISE_OFFSET + resumed_step)
