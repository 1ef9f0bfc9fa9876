"""Full training-state checkpoints (``data/06_models/*.pt``) in the catalog, and the resume slot
each training stage keeps while it runs.

The file format and its safety (atomic writes, CRC check, ``weights_only`` loads) live in
:mod:`maskdm_pipeline.fileio`; these classes only adapt them to the catalog.

Each stage has two entries: its final checkpoint (``pretrained``, a :class:`TorchCheckpointDataset`)
and its resume slot (``pretrain_resume``, a :class:`CheckpointSlotDataset`, the one place the
resume file's path is declared). The engine writes the slot every ``checkpoint_every`` steps and
once more after the last step; once the final checkpoint is on disk, the slot is cleared by
``hooks.CheckpointSlotHook`` so that a later run of the stage starts afresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.datasets.torch_state import TorchStateDataset
from maskdm_pipeline.fileio import CheckpointError, checkpoint_identity, load_checkpoint, save_checkpoint
from maskdm_pipeline.listing import shown


class TorchCheckpointDataset(TorchStateDataset):
    """A MaskDM training state (model, EMA, optimizer, step, RNG states, config) on disk: a torch
    state that must be a ``maskdm-checkpoint/1`` dict, on load and on save."""

    _read = staticmethod(load_checkpoint)
    _write = staticmethod(save_checkpoint)

    def content_identity(self) -> str:
        """What the checkpoint holds for its readers, for the cache (``maskdm_pipeline.caching``):
        :func:`~maskdm_pipeline.fileio.checkpoint_identity`, a hash of its weights, EMA weights,
        config and step, not of its bytes, which hold wall times. A training stage rerun that
        gives bitwise the same weights leaves its readers (sampling, fine-tuning) current.

        The file is loaded (CRC-checked) and hashed: about a second per GB, once per write, since
        the cache checks an output by its size and modification time before it hashes it. A file
        that is missing or does not load gets an identity of its own (the cache then reruns the
        stage that writes it)."""
        if not self._filepath.exists():
            return "missing"
        try:
            return checkpoint_identity(self._read(self._filepath))
        except CheckpointError as exc:
            return f"unreadable:{exc}"


class CheckpointSlot:
    """Where a training stage keeps its periodic resume checkpoint.

    A node gets the slot (not its contents) so that the engine can write to it every
    ``checkpoint_every`` steps and after the last one, and so that a rerun resumes from it after
    an interruption. :meth:`clear` deletes it once the final checkpoint is saved by the catalog
    (``hooks.CheckpointSlotHook``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

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
    """Catalog entry for a :class:`CheckpointSlot` (``data/06_models/<stage>.resume.pt``).

    The path is given as ``filepath`` so that Kedro resolves it against the project root, as it
    does for every other dataset (a run started from a sub-folder must use the same file).
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> CheckpointSlot:
        return CheckpointSlot(self._filepath)

    @property
    def filepath(self) -> Path:
        return self._filepath

    def save(self, data: None) -> None:
        raise DatasetError("a CheckpointSlot is written by its training node, not by the catalog")

    def content_identity(self) -> None:
        """Not part of its stage's fingerprint: resuming gives the result of an uninterrupted run.
        That the file exists is what counts (:meth:`blocks_current`)."""
        return None

    def blocks_current(self) -> str | None:
        """Why the stage that reads this slot is not current (``maskdm_pipeline.caching``): the
        file exists, left by an unfinished run, which the next run continues; None when it does
        not."""
        if not self._filepath.exists():
            return None
        return f"resume checkpoint {shown(self._filepath)} exists: an unfinished run, which continues from it"

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
