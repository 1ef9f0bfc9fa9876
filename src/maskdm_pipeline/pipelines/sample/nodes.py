"""Thin adapter between checkpoints in the catalog and :mod:`maskdm_pipeline.generation`: which
classes and which guidance a checkpoint is sampled with, and the refusals of what it cannot take."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.devices import describe, resolve_device
from maskdm_pipeline.diffusion import Guidance
from maskdm_pipeline.params import SampleParams
from maskdm_pipeline.training.config import TrainerConfig

logger = logging.getLogger(__name__)

GRID_SIZE = 64  # images shown in the PNG grid (all samples are in the array and the PNG folder)


def draw_samples(
    checkpoint: Mapping[str, Any], params: SampleParams, trainer: TrainerConfig
) -> tuple[dict[str, np.ndarray], Image.Image, dict[str, Image.Image], dict[str, Any]]:
    """Sample ``sample.num_samples`` images from the checkpoint's EMA weights, on
    ``trainer.nproc`` local worker processes when above 1 (the same images); a class-conditional
    checkpoint draws ``sample.classes`` alike, and either kind is guided as ``sample.guidance*`` say.

    Classes or guidance the checkpoint cannot take are refused in one line
    (:meth:`~maskdm_pipeline.params.SampleParams.for_model`). Returns the samples (uint8
    ``images``; a conditional model's also ``labels``: the class each was asked for, -1 for
    none), a PNG grid (the first 64; one row per class when conditional),
    one PNG per sample (a folder that ``python -m pytorch_fid`` reads) and what was done (sampler,
    steps, seed, seconds; classes, guidance and its FLOPs when used).
    """
    diffusion = checkpoint["config"]["diffusion"]
    device = resolve_device(trainer.device)
    model = generation.model_from_checkpoint(checkpoint, weights="ema")
    classes, guidance = params.for_model(model)
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
        classes=classes,
        guidance=guidance,
    )
    logger.info("Sampled %d images in %.1f s (%s, %s steps) on %s, %s", len(images), timing["seconds"],
                params.sampler, params.steps, describe(device), trainer.precision)
    samples: dict[str, np.ndarray] = {"images": images}
    if classes is None:
        grid = Image.fromarray(generation.image_grid(images[:GRID_SIZE]))
    else:
        labels = generation.class_labels(range(len(images)), classes).numpy()
        grid = Image.fromarray(generation.class_grid(images, labels, classes))
        samples["labels"] = np.where(labels == model.num_classes, fd_clf.UNLABELLED, labels)
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
    if classes is not None or guidance.active:  # an unconditional, unguided record is what it was
        info.update(guidance_info(model, params, guidance, diffusion["schedule"]))
        info["classes"] = generation.class_names(classes, model)
    return samples, grid, pngs, info


def guidance_info(model: Any, params: SampleParams, guidance: Guidance, schedule: str) -> dict[str, Any]:
    """The guidance a sampling ran with and its cost: forward-pass FLOPs per sample
    (:func:`~maskdm_pipeline.generation.sampling_cost`)."""
    return {"guidance": guidance.mode, "guidance_scale": guidance.scale,
            "guidance_interval": None if guidance.interval is None else list(guidance.interval),
            "sparse_mask_ratio": guidance.sparse_mask_ratio if guidance.mode == "sparse" else None,
            "flops_per_sample": generation.sampling_cost(model, schedule=schedule, sampler=params.sampler,
                                                         steps=params.steps, guidance=guidance)}
