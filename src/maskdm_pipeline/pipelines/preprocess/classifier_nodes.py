"""The fd_clf feature space, fitted right after preprocessing because the training stages
use it for their periodic quality probes and the evaluate stage for the final scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from maskdm_pipeline import evaluation

logger = logging.getLogger(__name__)


def reference_split(primary_train: Mapping[str, Any]) -> tuple[Any, Any]:
    """The whole training split (before a few-shot subset): the metrics' real reference."""
    if "reference_images" in primary_train:
        return primary_train["reference_images"], primary_train.get("reference_labels")
    return primary_train["images"], primary_train.get("labels")


def fit_feature_classifier(primary_train: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Train the small classifier whose penultimate features define fd_clf (labelled data only)."""
    fd = params["fd_clf"]
    images, labels = reference_split(primary_train)
    state = evaluation.fit_feature_classifier(
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
    features = evaluation.classifier_features(classifier)
    if features is None:
        return {"available": False, "reason": classifier.get("reason")}
    n = int(params["fd_clf"]["num_samples"])
    reference = evaluation.reference_and_floor(features, reference_split(primary_train)[0], primary_heldout["images"], n)
    logger.info("fd_clf real-data floor: %.3f (%d held-out images vs %d training images)",
                reference["floor_fd_clf"], reference["floor_n"], reference["reference_n"])
    return {"available": True, **reference}
