"""Seeded train / held-out splits and few-shot subsets (pure numpy, no Kedro)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the last ``round(n * heldout_fraction)`` (at least 1) are held out.

    Both parts keep the shuffled order: sources are often sorted (the embedded MNIST digits come
    class by class), and anything that later takes "the first N" of a sorted split would see a
    few classes only (a first-256 real-data floor was once 35x too high for exactly this reason).
    """
    order = np.random.default_rng(seed).permutation(n)
    n_heldout = min(max(1, round(n * heldout_fraction)), n - 1)
    return order[: n - n_heldout], order[n - n_heldout :]


def subset_indices(indices: np.ndarray, subset: float | int | None, seed: int) -> np.ndarray:
    """A seeded subset of the training indices: a fraction in (0, 1] or a count (few-shot runs)."""
    if subset is None:
        return indices
    # A float is a fraction of the training split (0.1 = 10%), an int a count (300 images).
    if isinstance(subset, float):
        count = max(1, round(len(indices) * subset))
    else:
        count = int(subset)
    count = min(count, len(indices))
    chosen = np.random.default_rng(seed + 1).permutation(len(indices))[:count]
    return indices[chosen]  # shuffled, like split_indices


def check_same_dataset(*splits: Mapping[str, Any]) -> None:
    """Refuse splits written by different preprocessing runs (``meta.dataset_checksum``, set by
    the split node), e.g. a run killed between saving the training and the held-out shards.

    Raises:
        ValueError: the splits disagree; the message names their folders and the rerun.
    """
    seen = {s.get("meta", {}).get("dataset_checksum") for s in splits if isinstance(s.get("meta"), Mapping)}
    if len(seen) > 1:
        where = ", ".join(str(getattr(s["images"], "folder", "?")) for s in splits)
        raise ValueError(f"{where} come from different preprocessing runs (was one interrupted?): "
                         "rerun `kedro run --pipelines preprocess`.")
