"""Full training-state checkpoints (``data/06_models/*.pt``) as a Kedro dataset.

The file format and its safety live in :mod:`maskdm_pipeline.training.checkpoint` (pure torch):
atomic writes (temp file + rename) and ``torch.load(..., weights_only=True)``, so a checkpoint
from an untrusted source can never run code. This class only adapts it to the catalog.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def verify_integrity(path: Path) -> None:
    """Refuse a checkpoint whose bytes changed after it was written (disk or copy errors).

    ``torch.save`` writes a zip archive with a CRC-32 per entry, but ``torch.load`` never checks
    them: a flipped byte in the weights loads silently as a different model. ``testzip`` reads
    the file once (about a second per GB) and checks them all. Files that are not zip archives
    are left to ``torch.load`` to judge.
    """
    if not path.is_file() or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupted ({exc}). Delete it "
            "and rerun the stage that writes it, or restore an intact copy."
        ) from exc
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its entry {bad!r} fails its CRC-32 check, so its bytes "
            "changed after it was written (a disk, network or copy error); nothing was loaded. "
            "Delete it and rerun the stage that writes it, or restore an intact copy."
        )


def _load(path: Path) -> dict[str, Any]:
    verify_integrity(path)
    return load_checkpoint(path)


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
            return _load(self._filepath)
        except CheckpointError as exc:
            raise DatasetError(str(exc)) from exc

    def save(self, data: dict[str, Any]) -> None:
        try:
            save_checkpoint(data, self._filepath)
        except OSError as exc:  # disk full, folder not writable: the old file is untouched
            kept = ""
            if self._resume is not None and self._resume.is_file():
                kept = (f" The finished training state is still in {self._resume} (it is deleted only "
                        f"after {self._filepath.name} is written): free some space or fix the folder, "
                        "then rerun the same command; it saves without training again.")
            raise DatasetError(
                f"cannot write checkpoint {self._filepath}: {exc}. Any previous {self._filepath.name} "
                f"is untouched.{kept}"
            ) from exc
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
        return _load(self.path)

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
