"""Sampling from a trained checkpoint, and image grids (pure torch/numpy, no Kedro)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline import workers
from maskdm_pipeline.devices import autocast
from maskdm_pipeline.diffusion import PerSampleGenerator, make_schedule
from maskdm_pipeline.diffusion.samplers import sample, validate_sampling
from maskdm_pipeline.fileio import from_bytes, to_bytes
from maskdm_pipeline.training.config import ModelConfig


def model_from_checkpoint(state: Mapping[str, Any], weights: str = "ema") -> nn.Module:
    """Rebuild the U-ViT a checkpoint was trained with (its ``config.model``, built by the one
    model builder, ``ModelConfig.build``) and load its EMA (default) or raw weights."""
    model = ModelConfig.model_validate(dict(state["config"]["model"])).build()
    model.load_state_dict(state["ema"]["model"] if weights == "ema" else state["model"])
    return model.eval()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats -> uint8 (N, C, H, W), rounding as PNG writers do."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def _draw(model: nn.Module, device: torch.device, first: int, n: int, settings: dict[str, Any]) -> np.ndarray:
    """Samples ``first .. first + n - 1`` as uint8 ``(n, C, H, W)``: one batch, each sample
    from its own generator (:class:`~maskdm_pipeline.diffusion.PerSampleGenerator`)."""
    settings = dict(settings)  # plain values: they cross to the workers with every task
    precision, seed = settings.pop("precision"), settings.pop("seed")
    settings["schedule"] = make_schedule(settings["schedule"])
    shape = (model.in_chans, model.img_size, model.img_size)
    with torch.inference_mode(), autocast(device, precision):
        # check=False: generate checked the settings once, for every batch
        x = sample(model, (n, *shape), generator=PerSampleGenerator(seed, range(first, first + n)), device=device,
                   check=False, **settings)
    return to_uint8(x.float())


def _model_in_worker(device: torch.device, model_bytes: bytes) -> nn.Module:
    return from_bytes(model_bytes, weights_only=False).to(device).eval()


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
    nproc: int = 1,
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw ``num_samples`` images in batches; returns (uint8 (N, C, H, W), timing).

    Sample i draws all its noise from its own generator, seeded from (``seed``, i)
    (:class:`~maskdm_pipeline.diffusion.PerSampleGenerator`, EDM's per-image seeds), so the
    images do not depend on ``batch_size``: it changes speed and memory, not results.

    ``nproc > 1`` (``trainer.nproc``) shards the samples over that many local worker processes
    (:mod:`maskdm_pipeline.workers`; on CUDA worker r on ``cuda:<r>``): contiguous ranges of at
    most ``batch_size`` and at most ``ceil(N / nproc)`` samples, so every worker has work even
    when one batch would hold them all. For the same reason as above the images are the same
    as in one process (bitwise on the CPU in fp32, ``tests/unit/test_workers.py``).
    """
    device = torch.device(device)
    validate_sampling(sampler, steps, make_schedule(schedule).num_timesteps, eta)  # once: the batches trust it
    settings = {"schedule": schedule, "prediction": prediction, "sampler": sampler, "steps": steps,
                "eta": eta, "seed": seed, "precision": precision}
    per_task = min(batch_size, -(-num_samples // max(1, nproc)))
    ranges = [(first, min(per_task, num_samples - first)) for first in range(0, num_samples, per_task)]
    nworkers = min(nproc, len(ranges))
    start = time.perf_counter()
    if nworkers > 1:
        chunks = list(workers.run_sharded(_model_in_worker, [to_bytes(model)], _draw,
                                          [(first, n, settings) for first, n in ranges],
                                          nproc=nworkers, device=device))
    else:
        model = model.to(device)
        chunks = [_draw(model, device, first, n, settings) for first, n in ranges]
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
