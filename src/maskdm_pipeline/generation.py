"""Sampling from a trained checkpoint, class-conditional and guided too, and image grids (pure
torch/numpy, no Kedro)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline import workers
from maskdm_pipeline.devices import autocast
from maskdm_pipeline.diffusion import Guidance, GuidedDenoiser, PerSampleGenerator, make_schedule, sampling_flops
from maskdm_pipeline.diffusion.samplers import call_times, sample, validate_sampling
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


def class_labels(indices: range | Sequence[int], classes: Sequence[int]) -> torch.Tensor:
    """int64 ``(len(indices),)``: sample i asks for ``classes[i % len(classes)]``, so every prefix
    of the samples is as balanced as it can be (fd_clf scores the first N), and a sample's class,
    like its noise, depends on its index alone, not on the batch or the process that draws it."""
    return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)


def _draw(model: nn.Module, device: torch.device, first: int, n: int, settings: dict[str, Any]) -> np.ndarray:
    """Samples ``first .. first + n - 1`` as uint8 ``(n, C, H, W)``: one batch, each sample
    from its own generator (:class:`~maskdm_pipeline.diffusion.PerSampleGenerator`), with its class
    (:func:`class_labels`) and guidance when asked."""
    settings = dict(settings)  # plain values: they cross to the workers with every task
    precision, seed = settings.pop("precision"), settings.pop("seed")
    classes, guidance = settings.pop("classes"), settings.pop("guidance")
    settings["schedule"] = make_schedule(settings["schedule"])
    shape = (model.in_chans, model.img_size, model.img_size)
    generator = PerSampleGenerator(seed, range(first, first + n))
    denoiser = model
    if classes is not None or guidance.active:
        labels = None if classes is None else class_labels(range(first, first + n), classes).to(device)
        denoiser = GuidedDenoiser(model, guidance, settings["schedule"], labels, generator)
    with torch.inference_mode(), autocast(device, precision):
        # check=False: generate checked the settings once, for every batch
        x = sample(denoiser, (n, *shape), generator=generator, device=device, check=False, **settings)
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
    classes: Sequence[int] | None = None,
    guidance: Guidance | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw ``num_samples`` images in batches; returns (uint8 (N, C, H, W), timing).

    Sample i draws all its noise from its own generator, seeded from (``seed``, i)
    (:class:`~maskdm_pipeline.diffusion.PerSampleGenerator`, EDM's per-image seeds), so the
    images do not depend on ``batch_size``: it changes speed and memory, not results.

    ``classes``: the classes a class-conditional model draws (sample i the i-th modulo their
    count, :func:`class_labels`; the model's ``null_class`` is the "no label" class), None for an
    unconditional model (a conditional one then draws without a label). ``guidance``: the
    :class:`~maskdm_pipeline.diffusion.Guidance` (None: none); sparse guidance's masks come from
    each sample's own generators too, so guided samples keep that independence.

    Raises:
        ValueError: settings the sampler or the model cannot take (checked once, before any batch).

    ``nproc > 1`` (``trainer.nproc``) shards the samples over that many local worker processes
    (:mod:`maskdm_pipeline.workers`; on CUDA worker r on ``cuda:<r>``): contiguous ranges of at
    most ``batch_size`` and at most ``ceil(N / nproc)`` samples, so every worker has work even
    when one batch would hold them all. For the same reason as above the images are the same
    as in one process (bitwise on the CPU in fp32, ``tests/unit/test_workers.py``).
    """
    device = torch.device(device)
    validate_sampling(sampler, steps, make_schedule(schedule).num_timesteps, eta)  # once: the batches trust it
    guidance = guidance or Guidance()
    guidance.check(model)
    _check_class_indices(model, classes)
    settings = {"schedule": schedule, "prediction": prediction, "sampler": sampler, "steps": steps,
                "eta": eta, "seed": seed, "precision": precision,
                "classes": None if classes is None else tuple(int(c) for c in classes), "guidance": guidance}
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


NO_LABEL = "none"  # how sample.classes names the "no label" class


def _check_class_indices(model: nn.Module, classes: Sequence[int] | None) -> None:
    """Refuse class indices outside [0, K] (K: "no label") or any for an unconditional model."""
    if classes is None:
        return
    k = int(getattr(model, "num_classes", 0))
    if not k or not len(classes) or any(not 0 <= int(c) <= k for c in classes):
        raise ValueError(f"classes must be a non-empty list of indices in [0, {k}] ({k}: no label) for this "
                         f"model with num_classes={k}; got {list(classes)}")


def resolve_classes(model: nn.Module, asked: Sequence[int | str] | None) -> list[int] | None:
    """The classes a model draws for ``sample.classes`` (``asked``): None for an unconditional
    model; every class 0..K-1 for None; the listed ones otherwise, :data:`NO_LABEL` as the model's
    "no label" class K (its unconditional samples).

    Raises:
        ValueError: classes asked of an unconditional model, or classes it does not have.
    """
    k = int(getattr(model, "num_classes", 0))
    if not k:
        if asked is not None:
            raise ValueError(f"sample.classes={list(asked)}: this checkpoint was trained without classes "
                             "(model.class_conditional=false), so it draws unconditional samples only; remove "
                             "sample.classes, or train with model.class_conditional=true")
        return None
    if asked is None:
        return list(range(k))
    bad = [c for c in asked if c != NO_LABEL and not (isinstance(c, int) and 0 <= c < k)]
    if bad or not len(asked):
        raise ValueError(f"sample.classes={list(asked)}: this checkpoint has {k} classes (0..{k - 1}, and "
                         f"'{NO_LABEL}' for no label); {bad} are not among them")
    return [k if c == NO_LABEL else int(c) for c in asked]


def class_names(classes: Sequence[int] | None, model: nn.Module) -> list[int | str] | None:
    """``classes`` as a record names them: the model's "no label" class K as :data:`NO_LABEL`."""
    if classes is None:
        return None
    k = int(getattr(model, "num_classes", 0))
    return [NO_LABEL if c == k else int(c) for c in classes]


def sampling_cost(model: nn.Module, *, schedule: str, sampler: str, steps: int | None,
                  guidance: Guidance | None = None) -> int:
    """Forward-pass FLOPs per sample of :func:`generate` with these settings
    (:func:`~maskdm_pipeline.diffusion.sampling_flops`: the model's passes at every call the
    sampler makes, the weak ones at the guided calls)."""
    noise = make_schedule(schedule)
    return sampling_flops(model, call_times(sampler, noise, steps), noise, guidance or Guidance())


def class_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[int], columns: int = 8,
               max_rows: int = 16) -> np.ndarray:
    """One row per class (the first ``max_rows`` of ``classes``, in that order), the first ``columns``
    samples asked for it (uint8 ``(N, C, H, W)`` with their asked ``labels`` ``(N,)``), black where a
    class has fewer: :func:`image_grid` of the rows."""
    rows = []
    for c in list(classes)[:max_rows]:
        picked = images[np.asarray(labels) == c][:columns]
        pad = np.zeros((columns - len(picked), *images.shape[1:]), dtype=images.dtype)
        rows.append(np.concatenate([picked, pad]))
    return image_grid(np.concatenate(rows), nrow=columns)


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
