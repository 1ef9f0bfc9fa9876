"""Small torch states (the fd_clf classifier and its reference statistics) as a Kedro dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.datasets.errors import UnreadableFileError
from maskdm_pipeline.fileio import CheckpointError, load_torch_state, save_torch_state


class TorchStateDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Any dict of tensors and plain values; atomic save, CRC-checked ``weights_only`` load."""

    _read = staticmethod(load_torch_state)
    _write = staticmethod(save_torch_state)

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        try:
            return self._read(self._filepath)
        except CheckpointError as exc:
            raise UnreadableFileError(str(exc)) from exc

    def save(self, data: dict[str, Any]) -> None:
        try:
            self._write(data, self._filepath)
        except OSError as exc:  # disk full, folder not writable: the old file is untouched
            raise DatasetError(
                f"cannot write checkpoint {self._filepath}: {exc}. Any previous "
                f"{self._filepath.name} is untouched."
            ) from exc

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
