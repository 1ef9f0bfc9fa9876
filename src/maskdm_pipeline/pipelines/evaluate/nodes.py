"""Thin adapters between the catalog and :mod:`maskdm_pipeline.metrics` / :mod:`maskdm_pipeline.fd_clf`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdm_pipeline import fd_clf, generation, workers
from maskdm_pipeline.datasets.feature_cache import FeatureCache
from maskdm_pipeline.devices import describe, resolve_device
from maskdm_pipeline.fingerprint import code_identity, file_digest, fingerprint, key_document, reads_files
from maskdm_pipeline.metrics import (
    FID_WEIGHTS_FILENAME,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    frechet_distance,
    hub_weights_path,
    resolve_inception_weights,
    stats,
    stats_from_batches,
)
from maskdm_pipeline.params import EvaluateParams, SampleParams
from maskdm_pipeline.training.config import TrainerConfig
from maskdm_pipeline.training.resume import stage_recipe

logger = logging.getLogger(__name__)

# A model's training cost: summed over its stages (MaskDM: pre-training + fine-tuning).
COST_KEYS = ("wall_time_s", "images_seen", "tokens_seen", "token_blocks_seen")
STAGE_KEYS = ("wall_time_s", "eval_time_s", "images_seen", "tokens_seen", "token_blocks_seen",
              "img_per_s", "steps", "device", "nproc")

WEIGHTS_PARAMETER = "evaluate.fid.weights_path"
# How a `kedro run` user points FID at the weights file: the metrics only know their argument.
_POINT_AT_WEIGHTS = (f"set the parameter `{WEIGHTS_PARAMETER}` to its path "
                     f"(e.g. kedro run --params {WEIGHTS_PARAMETER}=/path/to/{FID_WEIGHTS_FILENAME})")


def _inception(params: EvaluateParams, trainer: TrainerConfig, weights_path: Any = None) -> Any:
    """The Inception extractor, on ``trainer.nproc`` local workers when above 1 (same features)."""
    fid = params.fid
    kwargs = {"dims": fid.dims, "weights_path": weights_path or fid.weights_path, "batch_size": fid.batch_size,
              "allow_download": fid.allow_download, "download_timeout": 10.0}
    return workers.features_on(workers.construct, (InceptionFeatures, kwargs), dims=fid.dims,
                                batch_size=fid.batch_size, nproc=trainer.nproc,
                                device=str(resolve_device(trainer.device)))


def reference_key(dims: int, checksum: str, images: np.ndarray, weights: Path) -> str:
    """The feature cache's key of the Inception reference statistics: a fingerprint by the
    project's one rule (:mod:`maskdm_pipeline.fingerprint`) of the feature layer, the images
    (the dataset card's content checksum, their count and shape), the weights file's content and
    the code that computes them (the extractor, the statistics and the workers, with what they
    import)."""
    code, libraries = code_identity(sorted({InceptionFeatures.__module__, stats_from_batches.__module__,
                                            workers.__name__}))
    document = key_document(
        what="Inception pool features of the reference split: mean and covariance",
        params={"evaluate.fid.dims": int(dims)},
        inputs={"reference_images": f"{checksum}:n{len(images)}:{'x'.join(map(str, images.shape[1:]))}"},
        files={FID_WEIGHTS_FILENAME: file_digest(weights)},
        code=code,
        libraries=libraries,
    )
    return f"inception-pool{dims}_{fingerprint(document)}"


def fid_weights(params: Mapping[str, Any]) -> dict[str, Path]:
    """The Inception weights file FID reads, where ``evaluate.fid.weights_path`` says, else the
    torch hub cache (``{}`` with FID off): what the nodes below declare to the cache."""
    fid = params["evaluate"]["fid"]
    if not fid["enabled"]:
        return {}
    path = Path(fid["weights_path"]).expanduser() if fid["weights_path"] else hub_weights_path()
    return {FID_WEIGHTS_FILENAME: path}


@reads_files(fid_weights)
def inception_reference(
    primary_train: Mapping[str, Any],
    dataset_card: Mapping[str, Any],
    cache: FeatureCache,
    params: EvaluateParams,
    trainer: TrainerConfig,
) -> dict[str, Any]:
    """Inception statistics of the training images (``mu`` ``(D,)``, ``sigma`` ``(D, D)``, float64
    tensors), from the feature cache when the images and the weights are unchanged.

    Without the real weights this returns ``available: False`` and the exact message of where
    to put the file; FID is then reported as null, never computed from other weights.
    """
    fid = params.fid
    if not fid.enabled:
        return {"available": False, "reason": "evaluate.fid.enabled=false"}
    images = fd_clf.reference_split(primary_train)[0]
    try:
        weights = resolve_inception_weights(fid.weights_path, allow_download=fid.allow_download,
                                            download_timeout=10.0)
    except InceptionWeightsUnavailable as exc:
        reason = exc.explain(_POINT_AT_WEIGHTS)
        logger.warning("FID unavailable, reported as null. %s", reason)
        return {"available": False, "reason": reason}
    key = reference_key(fid.dims, dataset_card["checksum"], images, weights)
    cached = cache.get(key)
    if cached is not None:
        logger.info("FID reference statistics from the cache (%s)", key)
        mu, sigma = cached
    else:
        extractor = _inception(params, trainer, weights)
        mu, sigma = stats_from_batches(extractor.batches(images))  # the shards, batch by batch
        cache.put(key, mu, sigma, {"n": len(images), "dims": fid.dims, "checksum": dataset_card["checksum"],
                                   "weights": str(weights)})
    # Tensors: the catalog keeps the result as a weights_only torch state (inception_reference).
    return {"available": True, "mu": torch.from_numpy(np.asarray(mu)), "sigma": torch.from_numpy(np.asarray(sigma)),
            "n": len(images), "key": key}


@reads_files(fid_weights)
def score_samples(
    samples: Mapping[str, np.ndarray],
    classifier: Mapping[str, Any],
    clf_reference: Mapping[str, Any],
    inc_reference: Mapping[str, Any],
    params: EvaluateParams,
    trainer: TrainerConfig,
) -> dict[str, Any]:
    """fd_clf at the fixed N of ``evaluate.fd_clf.num_samples`` and FID at all samples, the
    features on ``trainer.nproc`` local workers when above 1 (:mod:`maskdm_pipeline.workers`);
    a class-conditional model's samples (with their asked ``labels``) also get the fd_clf
    classifier's accuracy against the asked class, overall and per class (``fd_clf.class_accuracy``)."""
    images = samples["images"]
    scores: dict[str, Any] = {"n_samples": int(len(images))}
    inception_on = describe(resolve_device(trainer.device)) if inc_reference.get("available", False) else None
    # The fd_clf classifier is LeNet-sized: its features are computed on the CPU on any machine.
    logger.info("Scoring %d samples: fd_clf features on cpu, %s", len(images),
                f"Inception features on {inception_on}" if inception_on else "no Inception features (FID unavailable)")
    scores.update(fd_clf.score(images, classifier, clf_reference, params.fd_clf.num_samples, nproc=trainer.nproc))
    if "labels" in samples:  # unconditional samples have none, and their scores are what they were
        scores.update(fd_clf.class_accuracy(images, samples["labels"], classifier))
    if not inc_reference.get("available", False):
        scores.update(fid=None, fid_n=None, fid_reason=inc_reference.get("reason"))
    else:
        extractor = _inception(params, trainer)
        mu, sigma = stats(extractor(images))
        scores.update(fid=frechet_distance(mu, sigma, inc_reference["mu"], inc_reference["sigma"]),
                      fid_n=int(len(images)), fid_reference_n=inc_reference["n"], fid_reason=None)
    return scores


def collect_metrics(
    maskdm: Mapping[str, Any],
    baseline: Mapping[str, Any],
    clf_reference: Mapping[str, Any],
    maskdm_sampling: Mapping[str, Any],
    baseline_sampling: Mapping[str, Any],
    pretrain: Mapping[str, Any],
    finetune: Mapping[str, Any],
    baseline_accounting: Mapping[str, Any],
) -> dict[str, Any]:
    """``metrics.json``: quality per model, the real-data floor, per-stage compute (token-blocks
    too: what the network computed, dense blocks included) and each model's recipe by stage
    (``training.resume.stage_recipe``)."""
    accountings = {"pretrain": pretrain, "finetune": finetune, "baseline": baseline_accounting}
    stages = {name: {k: acc.get("stats", {}).get(k) for k in STAGE_KEYS} for name, acc in accountings.items()}
    recipes = {name: stage_recipe(acc.get("config") or {}) for name, acc in accountings.items()}
    maskdm_cost = {k: (stages["pretrain"][k] or 0) + (stages["finetune"][k] or 0) for k in COST_KEYS}
    maskdm, baseline = _overall(maskdm), _overall(baseline)
    metrics = {
        "maskdm": {**maskdm, "sampling": dict(maskdm_sampling), "training_cost": maskdm_cost,
                   "recipe": {s: recipes[s] for s in ("pretrain", "finetune")}},
        "baseline": {**baseline, "sampling": dict(baseline_sampling),
                     "training_cost": {k: stages["baseline"][k] for k in COST_KEYS},
                     "recipe": {"baseline": recipes["baseline"]}},
        "real_floor": {
            "fd_clf": clf_reference.get("floor_fd_clf"),
            "fd_clf_n": clf_reference.get("floor_n"),
            "reference_n": clf_reference.get("reference_n"),
        },
        "stages": stages,
    }
    for model in ("maskdm", "baseline"):
        logger.info("%s: fd_clf %s (N=%s), FID %s%s", model, metrics[model]["fd_clf"], metrics[model]["fd_clf_n"],
                    metrics[model]["fid"], f", class accuracy {metrics[model]['class_accuracy']}"
                    if "class_accuracy" in metrics[model] else "")
    return metrics


def _overall(scores: Mapping[str, Any]) -> dict[str, Any]:
    """A model's scores for metrics.json: the per-class accuracies stay in ``<model>_scores.json``."""
    return {k: v for k, v in scores.items() if k != "class_accuracy_per_class"}


def guidance_sweep(
    checkpoint: Mapping[str, Any],
    samples: Mapping[str, np.ndarray],
    sampling_info: Mapping[str, Any],
    classifier: Mapping[str, Any],
    clf_reference: Mapping[str, Any],
    sample: SampleParams,
    params: EvaluateParams,
    trainer: TrainerConfig,
) -> dict[str, Any]:
    """fd_clf and class accuracy at each guidance scale of ``sample.guidance_sweep``
    (``fd_clf.guidance_sweep``), on ``evaluate.fd_clf.num_samples`` samples each, with
    ``sample``'s guidance mode, interval, classes, sampler and seed; and each guidance mode's
    forward-pass FLOPs per sample. The sample stage's own samples stand for the point at
    ``sample.guidance_scale`` when ``sampling_info`` says they were drawn with these settings (the
    same images: each depends on its seed and index alone), which saves drawing them twice.
    ``available: false`` and the reason where there is nothing to sweep (no scale asked, cfg of an
    unconditional checkpoint)."""
    model = generation.model_from_checkpoint(checkpoint, weights="ema")
    if not sample.guidance_sweep:
        return {"available": False, "reason": "sample.guidance_sweep is empty"}
    if sample.guidance == "cfg" and not model.conditional:
        return {"available": False, "reason": "cfg guidance needs a class-conditional model (its weak branch is the "
                "no-label pass) and this one is unconditional; sample.guidance=sparse sweeps it"}
    classes = sample.for_model(model, scale=max(sample.guidance_sweep))[0]
    diffusion = checkpoint["config"]["diffusion"]
    names = generation.class_names(classes, model)
    drawn = {sample.guidance_scale: samples["images"]} if _drawn_so(sampling_info, sample, names) else None
    return fd_clf.guidance_sweep(
        model, classifier, clf_reference, scales=sample.guidance_sweep, guidance=sample.guidance_settings(),
        classes=classes, num_samples=params.fd_clf.num_samples, schedule=diffusion["schedule"], drawn=drawn,
        prediction=diffusion["prediction"], sampler=sample.sampler, steps=sample.steps, eta=sample.eta,
        seed=sample.seed, batch_size=sample.batch_size, device=resolve_device(trainer.device),
        precision=trainer.precision, nproc=trainer.nproc)


def _drawn_so(info: Mapping[str, Any], sample: SampleParams, classes: list[str | int] | None) -> bool:
    """Whether the sample stage's record (``<model>_sampling.json``) says its samples were drawn with
    ``sample``'s sampler, steps, eta, seed and guidance, and these classes (as the record names
    them, ``generation.class_names``). A record without guidance keys was unguided (w = 1), where
    the mode, the interval and the ratio make no difference."""
    def effective(scale: float, mode: str, interval: Any, ratio: Any) -> tuple[Any, ...]:
        if scale == 1:
            return (1.0,)
        return (scale, mode, None if interval is None else list(interval), ratio if mode == "sparse" else None)

    recorded = effective(info.get("guidance_scale", 1.0), info.get("guidance"), info.get("guidance_interval"),
                         info.get("sparse_mask_ratio"))
    wanted = effective(sample.guidance_scale, sample.guidance, sample.guidance_interval, sample.sparse_mask_ratio)
    return recorded == wanted and info.get("classes") == classes and all(
        info.get(key) == getattr(sample, key) for key in ("sampler", "steps", "eta", "seed"))
