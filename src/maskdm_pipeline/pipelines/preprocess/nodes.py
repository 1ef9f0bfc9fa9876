"""Thin adapters between the catalog and :mod:`maskdm_pipeline.imaging`,
:mod:`maskdm_pipeline.splitting` and :mod:`maskdm_pipeline.fd_clf`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from maskdm_pipeline import fd_clf, imaging, splitting
from maskdm_pipeline.imaging import convert_images

__all__ = ["convert_images", "fd_clf_reference", "fit_fd_clf_classifier", "split_images"]

logger = logging.getLogger(__name__)

_MAX_LISTED_SKIPS = 1000


def split_images(
    converted: dict[str, Any], params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Seeded train / held-out split, optional few-shot subset of the training part, and the card."""
    images, labels = converted["images"], converted["labels"]
    seed = int(params.get("seed", 0))
    train_idx, heldout_idx = splitting.split_indices(len(images), float(params["heldout_fraction"]), seed)
    full_idx = train_idx
    full_train = len(train_idx)
    train_idx = splitting.subset_indices(train_idx, params.get("subset"), seed)

    def part(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"images": images[idx], "labels": None if labels is None else labels[idx]}

    train, heldout = part(train_idx), part(heldout_idx)
    if len(train_idx) < full_train:
        # Few-shot runs train on the subset, but metrics keep the whole training split as their
        # real reference (stored only when it differs, so nothing is duplicated otherwise).
        full = part(full_idx)
        train.update(reference_images=full["images"], reference_labels=full["labels"])
    log: imaging.ConversionLog = converted["log"]
    card = {
        "source": converted["source"],
        "resolution": int(params["resolution"]),
        "channels": int(params["channels"]),
        "crop": params.get("crop", "none"),
        "found": converted["found"],
        "used": int(len(images)),
        "train": int(len(train_idx)),
        "train_before_subset": int(full_train),
        "subset": params.get("subset"),
        "heldout": int(len(heldout_idx)),
        "seed": seed,
        "labels": labels is not None,
        "num_classes": None if labels is None else int(len(np.unique(labels))),
        **(converted.get("classes") or {}),
        "converted": dict(log.converted),
        "skipped": len(log.skipped),
        "skipped_by_reason": log.skipped_by_reason(),
        "skipped_files": log.skipped[:_MAX_LISTED_SKIPS],
        "checksum": splitting.checksum(train["images"], train["labels"], heldout["images"], heldout["labels"]),
    }
    logger.info(
        "Dataset: %d train, %d held-out at %dx%d, %d skipped", card["train"], card["heldout"],
        card["resolution"], card["resolution"], card["skipped"],
    )
    return train, heldout, card


# The fd_clf feature space, fitted right after preprocessing because the training stages use it
# for their periodic quality probes and the evaluate stage for the final scores.


def fit_fd_clf_classifier(primary_train: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Train the small classifier whose penultimate features define fd_clf (labelled data only);
    ``params`` is the ``evaluate`` block."""
    fd = params["fd_clf"]
    images, labels = fd_clf.reference_split(primary_train)
    state = fd_clf.fit_feature_classifier(
        images, labels if fd["enabled"] else None,
        epochs=int(fd["epochs"]), seed=int(fd["seed"]),
    )
    if state["available"]:
        logger.info("fd_clf classifier: %.1f%% accuracy on its own held-out split", 100 * state["test_accuracy"])
    else:
        logger.warning("fd_clf unavailable: %s", state["reason"] if fd["enabled"] else "evaluate.fd_clf.enabled=false")
    return state


def fd_clf_reference(
    primary_train: Mapping[str, Any],
    primary_heldout: Mapping[str, Any],
    classifier: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Reference statistics of the training images and the real-data floor at N."""
    features = fd_clf.classifier_features(classifier)
    if features is None:
        return {"available": False, "reason": classifier.get("reason")}
    n = int(params["fd_clf"]["num_samples"])
    images = fd_clf.reference_split(primary_train)[0]
    reference = fd_clf.reference_and_floor(features, images, primary_heldout["images"], n)
    logger.info("fd_clf real-data floor: %.3f (%d held-out images vs %d training images)",
                reference["floor_fd_clf"], reference["floor_n"], reference["reference_n"])
    return {"available": True, **reference}
