"""Sampling from a trained checkpoint, and image grids (pure torch/numpy, no Kedro)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline.devices import autocast
from maskdm_pipeline.diffusion import PerSampleGenerator, make_schedule
from maskdm_pipeline.diffusion.samplers import sample, validate_sampling
from maskdm_pipeline.models import build_uvit


def model_from_checkpoint(state: Mapping[str, Any], weights: str = "ema") -> nn.Module:
    """Rebuild the U-ViT a checkpoint was trained with and load its EMA (default) or raw weights."""
    config = {k: v for k, v in state["config"]["model"].items() if v is not None}
    model = build_uvit(config.pop("preset"), **config)
    model.load_state_dict(state["ema"]["model"] if weights == "ema" else state["model"])
    return model.eval()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats -> uint8 (N, C, H, W), rounding as PNG writers do."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def generate(
    model: nn.Module,
    *,
    num_samples: int,
    batch_size: int,
    schedule: str,
    prediction: str,
    sampler: str,
    steps: int | None,
    eta: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw ``num_samples`` images in batches; returns (uint8 (N, C, H, W), timing).

    Sample i draws all its noise from its own generator, seeded from (``seed``, i)
    (:class:`~maskdm_pipeline.diffusion.PerSampleGenerator`, EDM's per-image seeds), so the
    images do not depend on ``batch_size``: it changes speed and memory, not results.
    """
    device = torch.device(device)
    noise_schedule = make_schedule(schedule)
    validate_sampling(sampler, steps, noise_schedule.num_timesteps, eta)
    model = model.to(device)
    shape = (model.in_chans, model.img_size, model.img_size)
    chunks = []
    start = time.perf_counter()
    for first in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - first)
        with autocast(device, precision):
            x = sample(model, (n, *shape), schedule=noise_schedule, prediction=prediction, sampler=sampler,
                       steps=steps, eta=eta, generator=PerSampleGenerator(seed, range(first, first + n)),
                       device=device)
        chunks.append(to_uint8(x.float()))
    seconds = time.perf_counter() - start
    return np.concatenate(chunks), {"seconds": seconds, "img_per_s": num_samples / max(seconds, 1e-9)}


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` -> one uint8 grid image ``(H', W', C)`` (``(H', W')`` when C = 1):
    ``nrow`` tiles per row (default ceil(sqrt(N))), ``pad`` black pixels between and around the
    tiles. torchvision's ``make_grid``; a single image comes back alone, without the border.
    """
    from torchvision.utils import make_grid  # here, not at the top: importing torchvision costs
    # about a second, which every `kedro run` would pay (tests/unit/test_inception.py checks it)

    n, c = images.shape[:2]
    grid = make_grid(torch.from_numpy(images), nrow=nrow or math.ceil(math.sqrt(n)), padding=pad)
    grid = grid.permute(1, 2, 0).numpy()  # (H', W', 3): make_grid repeats one channel to three
    return grid[..., 0] if c == 1 else grid
