"""A folder of PNG files, one per sample, replaced whole on every save.

Our own instead of ``partitions.PartitionedDataset``: that one writes each partition into the
existing folder and never removes the others, so after sampling 64 images and then 8 the folder
that ``python -m pytorch_fid`` is pointed at held 64 PNGs, 56 of them from the earlier run
(``shared/repros/fail-01-stale-sample-pngs.sh``). Here the new folder is written aside and swapped
in by :func:`~maskdm_pipeline.atomic.atomic_write`: readers see the old folder or the new one,
never a mix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from PIL import Image

from maskdm_pipeline.atomic import atomic_write


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


class PngFolderDataset(AbstractDataset[Mapping[str, Image.Image], dict[str, Callable[[], Image.Image]]]):
    """Saves ``{name: PIL image}`` as ``<path>/<name>.png`` (names may contain ``/`` for
    sub-folders) and loads ``{name: function returning the image}``, sorted by name, as
    ``PartitionedDataset`` does (images are opened only when called).

    Example ``catalog.yml`` entry::

        maskdm_sample_pngs:
          type: maskdm_pipeline.datasets.PngFolderDataset
          path: data/07_model_output/maskdm_png

    Raises:
        DatasetError: on load, the folder does not exist; on save, a name leaves the folder
            (absolute, or with ``..``); the previous folder is then untouched.
    """

    SUFFIX = ".png"

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    @property
    def path(self) -> Path:
        """The folder (what the cache fingerprints; its fingerprint lies beside it, not in it)."""
        return self._path

    def load(self) -> dict[str, Callable[[], Image.Image]]:
        if not self._path.is_dir():
            raise DatasetError(f"{self._path} does not exist: run the stage that writes it first "
                               "(`kedro run --pipelines sample`)")
        files = sorted(self._path.rglob(f"*{self.SUFFIX}"))
        return {p.relative_to(self._path).as_posix()[: -len(self.SUFFIX)]: partial(_open, p) for p in files}

    def save(self, data: Mapping[str, Image.Image]) -> None:
        for name in data:
            parts = PurePosixPath(name).parts
            if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
                raise DatasetError(f"{self._path}: the image name {name!r} would leave the folder")
        with atomic_write(self._path) as target:
            target.mkdir()
            for name, image in data.items():
                file = target / f"{name}{self.SUFFIX}"
                file.parent.mkdir(parents=True, exist_ok=True)
                image.save(file, format="PNG")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
