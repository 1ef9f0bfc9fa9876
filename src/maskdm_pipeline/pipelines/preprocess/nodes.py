"""Thin adapters between the catalog and :mod:`maskdm_pipeline.conversion`,
:mod:`maskdm_pipeline.splitting` and :mod:`maskdm_pipeline.fd_clf`.

The images never pass through a node whole: ``convert_images`` returns the conversion still to
run (the catalog's shard dataset runs it while it writes), ``split_images`` returns row views of
the converted set (read and written in chunks by the same dataset), and the fd_clf nodes read the
memory-mapped splits in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from maskdm_pipeline import fd_clf, splitting
from maskdm_pipeline.conversion import Conversion, convert_images
from maskdm_pipeline.imaging import ConversionLog
from maskdm_pipeline.params import EvaluateParams, PreprocessParams
from maskdm_pipeline.shards import RowView, combine_checksums, folder_checksum

__all__ = ["convert_images", "convert_pretrain_images", "fd_clf_reference", "fit_fd_clf_classifier",
           "split_images", "start_conversion"]

logger = logging.getLogger(__name__)

_MAX_LISTED_SKIPS = 1000


def start_conversion(raw_images: Any, params: PreprocessParams) -> Conversion:
    """``raw_images`` -> the conversion of every image (run by the catalog's shard dataset, in
    ``preprocess.workers`` processes, into ``converted_images``)."""
    return Conversion(raw_images, params, workers=params.workers)


def convert_pretrain_images(
    raw_pretrain_images: Any, params: PreprocessParams, pretrain_data: str
) -> Conversion | dict[str, Any]:
    """The images of masked pre-training on a source set (``pretrain.data: source``, the paper's
    VGGFace2 -> CelebA-HQ transfer, METHOD.md section 4.4), converted exactly like the target
    (same resolution and channels, so the weights transfer), into their own shards.

    Here rather than in the pretrain stage so that the one stage that decodes images does it
    (same workers, skip reasons and checks), and so that a pre-training rerun (another mask
    ratio) reads shards instead of decoding the source again. With ``pretrain.data: target`` the
    folder is written empty, and raw_pretrain_images is not read. ``pretrain_data`` is
    ``params:pretrain.data`` alone, not the whole block: the cache keys this node by the
    parameters it takes, and another mask ratio must not make the conversion stale.
    """
    if pretrain_data == "source":
        return Conversion(raw_pretrain_images, params, workers=params.workers, label="raw_pretrain_images")
    shape = (params.channels, params.resolution, params.resolution)
    return {"images": np.empty((0, *shape), np.uint8), "labels": None,
            "meta": {"pretrain_data": "target", "note": "pretrain.data is target: nothing to convert"}}


def _converted(converted: Any) -> dict[str, Any]:
    """The converted set as loaded from the catalog; an in-memory run (no catalog entry) hands
    over the Conversion itself, converted here in memory."""
    if isinstance(converted, Conversion):
        return convert_images(converted.raw, converted.params, converted.workers)
    return converted


def split_images(
    converted: Any, params: PreprocessParams
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Seeded train / held-out split, optional few-shot subset of the training part, and the card.

    ``converted``: ``{"images": (N, C, R, R) uint8 array-like, "labels", "digests", "meta"}``
    (the ``converted_images`` shards). Returns the two splits as row views plus their labels and
    digests (written as shards by the catalog) and the dataset card, whose ``checksum`` is the
    content checksum of both splits (:func:`maskdm_pipeline.shards.folder_checksum`).
    """
    converted = _converted(converted)
    images, labels, digests = converted["images"], converted["labels"], converted["digests"]
    info = converted["meta"]
    seed = params.seed
    train_idx, heldout_idx = splitting.split_indices(len(images), params.heldout_fraction, seed)
    full_idx = train_idx
    full_train = len(train_idx)
    train_idx = splitting.subset_indices(train_idx, params.subset, seed)

    def part(idx: np.ndarray, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}images": RowView(images, idx), f"{prefix}digests": np.asarray(digests[idx]),
                f"{prefix}labels": None if labels is None else np.asarray(labels[idx])}

    train, heldout = part(train_idx), part(heldout_idx)
    if len(train_idx) < full_train:
        # Few-shot runs train on the subset, but metrics keep the whole training split as their
        # real reference (stored only when it differs, so nothing is duplicated otherwise).
        train.update(part(full_idx, "reference_"))
    log = ConversionLog(dict(info["converted"]), list(info["skipped"]))
    card = {
        "source": info["source"],
        "resolution": params.resolution,
        "channels": params.channels,
        "crop": params.crop,
        "found": int(info["found"]),
        "used": int(len(images)),
        "train": int(len(train_idx)),
        "train_before_subset": int(full_train),
        "subset": params.subset,
        "heldout": int(len(heldout_idx)),
        "seed": seed,
        "labels": labels is not None,
        "num_classes": None if labels is None else int(len(np.unique(labels))),
        **(info.get("classes") or {}),
        "converted": dict(log.converted),
        "skipped": len(log.skipped),
        "skipped_by_reason": log.skipped_by_reason(),
        "skipped_files": log.skipped[:_MAX_LISTED_SKIPS],
        "checksum": combine_checksums(folder_checksum(train), folder_checksum(heldout)),
    }
    for split, name in ((train, "train"), (heldout, "heldout")):
        split["meta"] = {"split": name, "dataset_checksum": card["checksum"]}
    logger.info(
        "Dataset: %d train, %d held-out at %dx%d, %d skipped", card["train"], card["heldout"],
        card["resolution"], card["resolution"], card["skipped"],
    )
    return train, heldout, card


# The fd_clf feature space, fitted right after preprocessing because the training stages use it
# for their periodic quality probes and the evaluate stage for the final scores.


def fit_fd_clf_classifier(primary_train: Mapping[str, Any], params: EvaluateParams) -> dict[str, Any]:
    """Train the small classifier whose penultimate features define fd_clf (labelled data only);
    ``params`` is the ``evaluate`` block."""
    fd = params.fd_clf
    images, labels = fd_clf.reference_split(primary_train)
    state = fd_clf.fit_feature_classifier(images, labels if fd.enabled else None, epochs=fd.epochs, seed=fd.seed)
    if state["available"]:
        # LeNet-sized: trained on the CPU on any machine (it takes seconds).
        logger.info("fd_clf classifier: %.1f%% accuracy on its own held-out split (trained on cpu)",
                    100 * state["test_accuracy"])
    else:
        logger.warning("fd_clf unavailable: %s", state["reason"] if fd.enabled else "evaluate.fd_clf.enabled=false")
    return state


def fd_clf_reference(
    primary_train: Mapping[str, Any],
    primary_heldout: Mapping[str, Any],
    classifier: Mapping[str, Any],
    params: EvaluateParams,
) -> dict[str, Any]:
    """Reference statistics of the training images and the real-data floor at N."""
    splitting.check_same_dataset(primary_train, primary_heldout)
    features = fd_clf.classifier_features(classifier)
    if features is None:
        return {"available": False, "reason": classifier.get("reason")}
    n = params.fd_clf.num_samples
    images = fd_clf.reference_split(primary_train)[0]
    reference = fd_clf.reference_and_floor(features, images, primary_heldout["images"], n)
    logger.info("fd_clf real-data floor: %.3f (%d held-out images vs %d training images)",
                reference["floor_fd_clf"], reference["floor_n"], reference["reference_n"])
    return {"available": True, **reference}
