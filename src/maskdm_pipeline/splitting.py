"""Seeded train / held-out splits, few-shot subsets and the checksum of the split arrays (pure
numpy, no Kedro)."""

from __future__ import annotations

import hashlib

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


def checksum(*arrays: np.ndarray | None) -> str:
    """SHA-256 over shapes, dtypes and bytes: the key for cached reference statistics."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
