"""Thin adapters between the catalog and :mod:`maskdm_pipeline.imaging`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from maskdm_pipeline import imaging

logger = logging.getLogger(__name__)

_MAX_LISTED_SKIPS = 1000


class NoUsableImagesError(ValueError):
    """The input held no image that could be converted."""


def _conversion_kwargs(params: Mapping[str, Any], log: imaging.ConversionLog) -> dict[str, Any]:
    return {
        "resolution": int(params["resolution"]),
        "channels": int(params["channels"]),
        "crop_spec": params.get("crop", "none"),
        "min_size": int(params.get("min_size", 0) or 0),
        "background": int(params.get("alpha_background", 0)),
        "log": log,
    }


def _convert_partitions(
    partitions: Mapping[str, Callable[[], Any]], params: Mapping[str, Any], log: imaging.ConversionLog
) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """A ``PartitionedDataset`` of images (``{relative path: loader}``) -> arrays.

    Labels come from the first sub-folder of each file when ``preprocess.labels`` is
    ``subfolder`` (the ImageFolder convention: ``root/<class>/<file>``).
    """
    kwargs = _conversion_kwargs(params, log)
    arrays, names = [], []
    for name in sorted(partitions):
        try:
            image = imaging.decode(partitions[name])
            arrays.append(imaging.convert(image, **kwargs))
            names.append(name)
        except imaging.SkipImage as reason:
            log.skip(name, str(reason))
            logger.warning("Skipping %s: %s", name, reason)
    if not arrays:
        return None, None, names
    labels = None
    if params.get("labels", "none") == "subfolder":
        classes = sorted({n.split("/")[0] for n in names})
        labels = np.array([classes.index(n.split("/")[0]) for n in names], dtype=np.int64)
    return np.stack(arrays), labels, names


def convert_images(raw_images: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Decode, convert (mode, crop, antialiased resize) and collect every usable image.

    Accepts either an embedded set (``{"images", "labels", "source"}``) or a
    ``PartitionedDataset`` mapping of lazy loaders (a user's own folder).
    """
    log = imaging.ConversionLog()
    if "images" in raw_images and isinstance(raw_images["images"], np.ndarray):
        source = str(raw_images.get("source", "embedded"))
        found = len(raw_images["images"])
        images = imaging.convert_array_images(raw_images["images"], **_conversion_kwargs(params, log))
        labels = raw_images.get("labels")
    else:
        source = "image folder"
        found = len(raw_images)
        images, labels, _ = _convert_partitions(raw_images, params, log)
    if images is None:
        reasons = log.skipped_by_reason()
        raise NoUsableImagesError(
            f"No usable image in the raw_images input ({found} files found, all skipped: {reasons}). "
            "Check the folder that `raw_images.path` points to in conf/<env>/catalog.yml."
        )
    logger.info("Converted %d of %d images from %s", len(images), found, source)
    return {"images": images, "labels": labels, "source": source, "found": found, "log": log}


def split_images(
    converted: dict[str, Any], params: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Seeded train / held-out split, optional few-shot subset of the training part, and the card."""
    images, labels = converted["images"], converted["labels"]
    seed = int(params.get("seed", 0))
    train_idx, heldout_idx = imaging.split_indices(len(images), float(params["heldout_fraction"]), seed)
    full_idx = train_idx
    full_train = len(train_idx)
    train_idx = imaging.subset_indices(train_idx, params.get("subset"), seed)

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
        "converted": dict(log.converted),
        "skipped": len(log.skipped),
        "skipped_by_reason": log.skipped_by_reason(),
        "skipped_files": log.skipped[:_MAX_LISTED_SKIPS],
        "checksum": imaging.checksum(train["images"], train["labels"], heldout["images"], heldout["labels"]),
    }
    logger.info(
        "Dataset: %d train, %d held-out at %dx%d, %d skipped", card["train"], card["heldout"],
        card["resolution"], card["resolution"], card["skipped"],
    )
    return train, heldout, card
