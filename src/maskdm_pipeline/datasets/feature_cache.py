"""A keyed cache of feature statistics (mean, covariance) for the FID reference side."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.datasets.arrays import NpzDataset


class FeatureCache:
    """Feature statistics (mean, covariance) on disk, one ``.npz`` per key.

    The key is a fingerprint (:mod:`maskdm_pipeline.fingerprint`, the project's one rule for cache
    keys) of everything the statistics depend on (the images, the feature extractor and its
    weights file), so they are computed once and reused until any of it changes.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".npz")

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                return archive["mu"], archive["sigma"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is recomputed, never trusted

    def put(self, key: str, mu: np.ndarray, sigma: np.ndarray, about: dict[str, Any] | None = None) -> None:
        NpzDataset(str(self._path(key))).save({"mu": mu, "sigma": sigma, "about": np.array(json.dumps(about or {}))})


class FeatureCacheDataset(AbstractDataset[None, FeatureCache]):
    """Catalog entry for a :class:`FeatureCache` folder (``data/04_feature``)."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> FeatureCache:
        return FeatureCache(self._path)

    def save(self, data: None) -> None:
        raise DatasetError("the feature cache is written by the nodes that use it")

    def content_identity(self) -> None:
        """Not part of its readers' fingerprints: each entry is keyed by everything that determines
        it (``maskdm_pipeline.fingerprint``), so what the folder holds never changes a result."""
        return None

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
