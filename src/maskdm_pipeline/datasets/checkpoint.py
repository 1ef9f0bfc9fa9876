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

    def __init__(
        self, filepath: str, resume_filepath: str | None = None, metadata: dict[str, Any] | None = None
    ):
        """``resume_filepath``: the stage's periodic resume checkpoint, deleted once the final
        state is safely on disk (so a later rerun starts afresh instead of resuming a finished run)."""
        self._filepath = Path(filepath)
        self._resume = Path(resume_filepath) if resume_filepath else None
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
        if self._resume is not None:
            self._resume.unlink(missing_ok=True)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class CheckpointSlot:
    """Where a training stage keeps its periodic resume checkpoint.

    A node gets the slot (not its contents) so it can write to it every ``checkpoint_every``
    steps, resume from it after an interruption, and clear it once the stage has finished and
    its final checkpoint is saved by the catalog.
    """

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        """The saved state; a corrupt file raises (it is never silently replaced by a fresh start)."""
        return load_checkpoint(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"CheckpointSlot({str(self.path)!r})"


class CheckpointSlotDataset(AbstractDataset[None, CheckpointSlot]):
    """Catalog entry for a :class:`CheckpointSlot` (``data/06_models/<stage>.resume.pt``)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> CheckpointSlot:
        return CheckpointSlot(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError("a CheckpointSlot is written by its training node, not by the catalog")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
