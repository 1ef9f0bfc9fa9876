"""Thin adapter between checkpoints in the catalog and :mod:`maskdm_pipeline.generation`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from maskdm_pipeline import generation
from maskdm_pipeline.devices import describe, resolve_device
from maskdm_pipeline.params import SampleParams
from maskdm_pipeline.training.config import TrainerConfig

logger = logging.getLogger(__name__)

GRID_SIZE = 64  # images shown in the PNG grid (all samples are in the array and the PNG folder)


def draw_samples(
    checkpoint: Mapping[str, Any], params: SampleParams, trainer: TrainerConfig
) -> tuple[dict[str, np.ndarray], Image.Image, dict[str, Image.Image], dict[str, Any]]:
    """Sample ``sample.num_samples`` images from the checkpoint's EMA weights, on
    ``trainer.nproc`` local worker processes when above 1 (the same images).

    Returns the uint8 array, a PNG grid of the first 64, one PNG per sample (a folder that
    ``python -m pytorch_fid`` reads) and what was done (sampler, steps, seed, seconds).
    """
    diffusion = checkpoint["config"]["diffusion"]
    device = resolve_device(trainer.device)
    model = generation.model_from_checkpoint(checkpoint, weights="ema")
    images, timing = generation.generate(
        model,
        num_samples=params.num_samples,
        batch_size=params.batch_size,
        schedule=diffusion["schedule"],
        prediction=diffusion["prediction"],
        sampler=params.sampler,
        steps=params.steps,
        eta=params.eta,
        seed=params.seed,
        device=device,
        precision=trainer.precision,
        nproc=trainer.nproc,
    )
    logger.info("Sampled %d images in %.1f s (%s, %s steps) on %s, %s", len(images), timing["seconds"],
                params.sampler, params.steps, describe(device), trainer.precision)
    grid = Image.fromarray(generation.image_grid(images[:GRID_SIZE]))
    pngs = {f"{i:06d}": Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            for i, img in enumerate(images)}
    info = {
        "sampler": params.sampler,
        "steps": params.steps,
        "eta": params.eta,
        "seed": params.seed,
        "num_samples": len(images),
        "weights": "ema",
        "trained_steps": int(checkpoint["step"]),
        "device": str(device),
        **timing,
    }
    return {"images": images}, grid, pngs, info
