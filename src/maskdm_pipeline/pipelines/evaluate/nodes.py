"""Thin adapters between the catalog and :mod:`maskdm_pipeline.metrics` / :mod:`maskdm_pipeline.fd_clf`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from maskdm_pipeline import fd_clf
from maskdm_pipeline.datasets.feature_cache import FeatureCache
from maskdm_pipeline.devices import resolve_device
from maskdm_pipeline.metrics import (
    FID_WEIGHTS_FILENAME,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    frechet_distance,
    stats,
    stats_from_batches,
)

logger = logging.getLogger(__name__)

WEIGHTS_PARAMETER = "evaluate.fid.weights_path"
# How a `kedro run` user points FID at the weights file: the metrics only know their argument.
_POINT_AT_WEIGHTS = (f"set the parameter `{WEIGHTS_PARAMETER}` to its path "
                     f"(e.g. kedro run --params {WEIGHTS_PARAMETER}=/path/to/{FID_WEIGHTS_FILENAME})")


def _inception(params: Mapping[str, Any], device: str) -> InceptionFeatures:
    fid = params["fid"]
    return InceptionFeatures(
        dims=int(fid["dims"]), weights_path=fid.get("weights_path"), device=device,
        batch_size=int(fid["batch_size"]), allow_download=bool(fid["allow_download"]), download_timeout=10.0,
    )


def inception_reference(
    primary_train: Mapping[str, Any],
    dataset_card: Mapping[str, Any],
    cache: FeatureCache,
    params: Mapping[str, Any],
    trainer: Mapping[str, Any],
) -> dict[str, Any]:
    """Inception statistics of the training images, from the cache when the data are unchanged.

    Without the real weights this returns ``available: False`` and the exact message of where
    to put the file; FID is then reported as null, never computed from other weights.
    """
    fid = params["fid"]
    if not fid["enabled"]:
        return {"available": False, "reason": "evaluate.fid.enabled=false"}
    images = fd_clf.reference_split(primary_train)[0]
    key = f"inception-pool{fid['dims']}_{dataset_card['checksum'][:16]}_{images.shape[-1]}px_n{len(images)}"
    cached = cache.get(key)
    if cached is not None:
        logger.info("FID reference statistics from the cache (%s)", key)
        return {"available": True, "mu": cached[0], "sigma": cached[1], "n": len(images), "key": key}
    try:
        extractor = _inception(params, str(resolve_device(trainer.get("device", "auto"))))
    except InceptionWeightsUnavailable as exc:
        reason = exc.explain(_POINT_AT_WEIGHTS)
        logger.warning("FID unavailable, reported as null. %s", reason)
        return {"available": False, "reason": reason}
    mu, sigma = stats_from_batches(extractor.batches(images))  # the shards, batch by batch
    cache.put(key, mu, sigma, {"n": len(images), "dims": fid["dims"], "checksum": dataset_card["checksum"]})
    return {"available": True, "mu": mu, "sigma": sigma, "n": len(images), "key": key}


def score_samples(
    samples: Mapping[str, np.ndarray],
    classifier: Mapping[str, Any],
    clf_reference: Mapping[str, Any],
    inc_reference: Mapping[str, Any],
    params: Mapping[str, Any],
    trainer: Mapping[str, Any],
) -> dict[str, Any]:
    """fd_clf at the fixed N of ``evaluate.fd_clf.num_samples`` and FID at all samples."""
    images = samples["images"]
    scores: dict[str, Any] = {"n_samples": int(len(images))}
    scores.update(fd_clf.score(images, classifier, clf_reference, int(params["fd_clf"]["num_samples"])))
    if not inc_reference.get("available", False):
        scores.update(fid=None, fid_n=None, fid_reason=inc_reference.get("reason"))
    else:
        extractor = _inception(params, str(resolve_device(trainer.get("device", "auto"))))
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
    """``metrics.json``: quality per model, the real-data floor, and per-stage compute."""
    def stage(acc: Mapping[str, Any]) -> dict[str, Any]:
        s = acc.get("stats", {})
        keys = ("wall_time_s", "eval_time_s", "images_seen", "tokens_seen", "img_per_s", "steps", "device", "nproc")
        return {k: s.get(k) for k in keys}

    stages = {"pretrain": stage(pretrain), "finetune": stage(finetune), "baseline": stage(baseline_accounting)}
    maskdm_cost = {k: (stages["pretrain"][k] or 0) + (stages["finetune"][k] or 0)
                   for k in ("wall_time_s", "images_seen", "tokens_seen")}
    metrics = {
        "maskdm": {**maskdm, "sampling": dict(maskdm_sampling), "training_cost": maskdm_cost},
        "baseline": {**baseline, "sampling": dict(baseline_sampling),
                     "training_cost": {k: stages["baseline"][k] for k in ("wall_time_s", "images_seen", "tokens_seen")}},
        "real_floor": {
            "fd_clf": clf_reference.get("floor_fd_clf"),
            "fd_clf_n": clf_reference.get("floor_n"),
            "reference_n": clf_reference.get("reference_n"),
        },
        "stages": stages,
    }
    for model in ("maskdm", "baseline"):
        logger.info("%s: fd_clf %s (N=%s), FID %s", model, metrics[model]["fd_clf"], metrics[model]["fd_clf_n"],
                    metrics[model]["fid"])
    return metrics
