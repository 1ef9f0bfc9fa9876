"""Full training-state checkpoints (``data/06_models/*.pt``) as a Kedro dataset.

The file format and its safety live in :mod:`maskdm_pipeline.training.checkpoint` (pure torch):
atomic writes (temp file + rename) and ``torch.load(..., weights_only=True)``, so a checkpoint
from an untrusted source can never run code. This class only adapts it to the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class TorchCheckpointDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """A MaskDM training state (model, EMA, optimizer, step, RNG states, config) on disk."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    @property
    def filepath(self) -> Path:
        return self._filepath

    def load(self) -> dict[str, Any]:
        try:
            return load_checkpoint(self._filepath)
        except CheckpointError as exc:
            raise DatasetError(str(exc)) from exc

    def save(self, data: dict[str, Any]) -> None:
        save_checkpoint(data, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
