"""The benchmark suite's ``sampling`` section: wall time of the same N samples with DDPM 1000,
DDIM 250, DDIM 50 and DPM-Solver++(2M) 25, each beside its fd_clf against the real data, as
ratios to DDIM 250.

The model is the fine-tuned MaskDM checkpoint with the pipeline's fd_clf classifier and
reference when they exist, else an untrained ``tiny`` U-ViT (speed only, quality null with the
reason). The samplers take turns after a warm-up; the median of the repeats is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.fileio import load_torch_state
from maskdm_pipeline.models import build_uvit, count_parameters

REFERENCE_SAMPLER = "ddim-250"
# Below this many fine-tuning steps (the quick start trains 3,500) every sampler draws the same
# poor images, so fd_clf ratios near 1 say nothing about the samplers (e.g. a smoke-run checkpoint).
MIN_TRAINED_STEPS = 1000


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting: ``name`` as ``sample.sampler`` spells it, ``steps`` (None: all T)."""

    name: str
    steps: int | None
    label: str

    @property
    def key(self) -> str:
        return f"{self.name}-{self.steps or 1000}"


SAMPLERS = (
    SamplerSpec("ddpm", None, "DDPM 1000"),
    SamplerSpec("ddim", 250, "DDIM 250"),
    SamplerSpec("ddim", 50, "DDIM 50"),
    SamplerSpec("dpm++2m", 25, "DPM-Solver++ 25"),
)


@dataclass
class SamplingSource:
    """The model to sample from and, when available, the fd_clf feature space and reference."""

    model: nn.Module
    schedule: str
    prediction: str
    info: dict[str, Any]
    features: Callable[[np.ndarray], np.ndarray] | None = None
    reference: tuple[np.ndarray, np.ndarray] | None = None
    quality_reason: str | None = None


def untrained_source(reason: str, preset: str = "tiny", **overrides: Any) -> SamplingSource:
    """A randomly initialised U-ViT: speed only, quality null with ``reason``."""
    torch.manual_seed(0)
    model = build_uvit(preset, **overrides).eval()
    info = {"source": "untrained", "preset": preset, "overrides": overrides,
            "params": count_parameters(model), "img_size": model.img_size}
    return SamplingSource(model, "linear", "x0", info, quality_reason=reason)


def load_sampling_source(data_dir: Path) -> SamplingSource:
    """The fine-tuned MaskDM checkpoint with the pipeline's fd_clf classifier and reference,
    or an untrained ``tiny`` model (quality null, with the reason) when they are missing."""
    ckpt = data_dir / "06_models" / "finetuned.pt"
    if not ckpt.is_file():
        return untrained_source(f"no trained checkpoint at {ckpt} (run `kedro run` first): "
                                "speed measured on an untrained tiny U-ViT, quality not measured")
    state = load_torch_state(ckpt)
    diffusion = state["config"]["diffusion"]
    model = generation.model_from_checkpoint(state)
    info = {"source": "checkpoint", "path": str(ckpt), "trained_steps": int(state["step"]),
            "model_config": state["config"]["model"], "params": count_parameters(model),
            "img_size": model.img_size}
    source = SamplingSource(model, diffusion["schedule"], diffusion["prediction"], info)
    clf_path = data_dir / "04_feature" / "feature_classifier.pt"
    ref_path = data_dir / "04_feature" / "fd_clf_reference.pt"
    missing = [str(p) for p in (clf_path, ref_path) if not p.is_file()]
    if missing:
        source.quality_reason = f"missing {', '.join(missing)} (run `kedro run --pipelines preprocess`)"
        return source
    features = fd_clf.classifier_features(load_torch_state(clf_path))
    reference = load_torch_state(ref_path)
    if features is None or not reference.get("available", True):
        source.quality_reason = "the fd_clf classifier is unavailable (the training data have no labels)"
        return source
    clf = features.config
    if (clf.in_chans, clf.height, clf.width) != (model.in_chans, model.img_size, model.img_size):
        source.quality_reason = (
            f"the fd_clf classifier takes {clf.in_chans}x{clf.height}x{clf.width} images but the "
            f"checkpoint makes {model.in_chans}x{model.img_size}x{model.img_size} ones (outputs of "
            "different runs?)")
        return source
    source.features = features
    source.reference = (reference["mu"].double().numpy(), reference["sigma"].double().numpy())
    info["fd_clf_reference_n"] = reference.get("reference_n")
    info["fd_clf_real_data_floor"] = reference.get("floor_fd_clf")
    info["fd_clf_real_data_floor_n"] = reference.get("floor_n")
    if info["trained_steps"] < MIN_TRAINED_STEPS:
        info["quality_caveat"] = (
            f"the checkpoint has only {info['trained_steps']} training steps (a smoke run?): all "
            "samplers draw similarly poor images, so the fd_clf ratios say little about them")
    return source


def bench_samplers(
    source: SamplingSource,
    *,
    num_samples: int,
    repeats: int = 3,
    ddpm_repeats: int = 1,
    samplers: tuple[SamplerSpec, ...] = SAMPLERS,
    eta: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Wall time of ``num_samples`` samples (one batch) per sampler, interleaved; fd_clf beside it.

    A short DPM-Solver++ run warms the model up first; then the samplers take turns for
    ``repeats`` rounds (DDPM, the slowest by far, only for ``ddpm_repeats``). Every run
    uses the same seed, so repeats draw the same images; fd_clf is computed once per sampler.
    """
    device = torch.device(device)
    common = {"num_samples": num_samples, "batch_size": num_samples, "schedule": source.schedule,
              "prediction": source.prediction, "eta": eta, "seed": seed, "device": device}
    generation.generate(source.model, sampler="dpm++2m", steps=2, **common)  # warm-up
    times: dict[str, list[float]] = {s.key: [] for s in samplers}
    images: dict[str, np.ndarray] = {}
    for round_ in range(max(repeats, ddpm_repeats)):
        for spec in samplers:
            if round_ >= (ddpm_repeats if spec.name == "ddpm" else repeats):
                continue
            start = time.perf_counter()
            images[spec.key], _ = generation.generate(
                source.model, sampler=spec.name, steps=spec.steps, **common)
            times[spec.key].append(time.perf_counter() - start)
    results: dict[str, Any] = {}
    for spec in samplers:
        fd = None
        if source.features is not None and source.reference is not None:
            fd = fd_clf.distance_to_reference(source.features, images[spec.key], *source.reference)
        med = statistics.median(times[spec.key])
        results[spec.key] = {"sampler": spec.name, "steps": spec.steps, "label": spec.label,
                             "repeats": len(times[spec.key]), "seconds_median": med,
                             "seconds_all": times[spec.key], "img_per_s": num_samples / med,
                             "fd_clf": fd}
    ref = results.get(REFERENCE_SAMPLER)
    for r in results.values():
        r["speedup_vs_reference"] = ref["seconds_median"] / r["seconds_median"] if ref else None
        r["fd_clf_ratio_vs_reference"] = (r["fd_clf"] / ref["fd_clf"] if ref and ref["fd_clf"]
                                          and r["fd_clf"] is not None else None)
    return {"model": source.info, "schedule": source.schedule, "prediction": source.prediction,
            "num_samples": num_samples, "batch_size": num_samples, "seed": seed, "eta": eta,
            "device": str(device), "reference": REFERENCE_SAMPLER,
            "quality_metric": "fd_clf" if source.features is not None else None,
            "quality_reason": source.quality_reason, "results": results}
