"""A dict of numpy arrays stored as one ``.npz`` file (no pickle, atomic write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from maskdm_pipeline.atomic import atomic_write
from maskdm_pipeline.datasets.errors import UnreadableFileError


class NpzDataset(AbstractDataset[dict[str, np.ndarray], dict[str, np.ndarray]]):
    """Saves and loads ``{name: ndarray}`` as an uncompressed ``.npz``.

    Loading uses ``allow_pickle=False``, so an archive can never execute code; ``None`` values
    are dropped on save (for example ``labels`` of an unlabelled image folder).
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        if not self._filepath.exists():
            raise UnreadableFileError(
                f"{self._filepath} does not exist: run the stage that writes it first "
                "(for example `kedro run --pipelines preprocess`)"
            )
        try:
            with np.load(self._filepath, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError) as exc:
            raise UnreadableFileError(
                f"{self._filepath} is not a readable .npz archive ({exc}); delete it and rerun "
                "the stage that writes it"
            ) from exc

    def save(self, data: dict[str, np.ndarray]) -> None:
        arrays = {k: np.asarray(v) for k, v in data.items() if v is not None}
        # A handle, not a path: np.savez would append ".npz" to a name without it.
        with atomic_write(self._filepath) as target, open(target, "wb") as handle:
            np.savez(handle, **arrays)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
