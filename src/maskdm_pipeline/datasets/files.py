"""The kedro-datasets classes the catalog uses for JSON, CSV, text, images and figures, with
every save written atomically (``atomic.atomic_write``).

The kedro-datasets classes open the destination itself and write into it, so a crash, a Ctrl-C
or a full disk mid-write leaves a truncated ``metrics.json`` or ``report.md`` where the last good
one was, and the cache (``maskdm_pipeline.caching``) would then see a file that is neither the old
result nor the new one. These subclasses change one thing: during a save, the path the parent
class writes to is a scratch path that ``atomic_write`` swaps in once the write has finished.
Loading, ``preview`` (kedro-viz uses it), arguments and file formats are the parent classes'.
A path on another file system than the local one (``s3://...``) is saved by the parent class as
it is (``atomic_write`` works on local paths).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pillow import ImageDataset as _ImageDataset
from kedro_datasets.text import TextDataset as _TextDataset

from maskdm_pipeline.atomic import atomic_write
from maskdm_pipeline.datasets.previews import ImagePreviewMixin

__all__ = ["AtomicSaveMixin", "CSVDataset", "ImageDataset", "JSONDataset", "MatplotlibDataset", "TextDataset"]

_LOCAL = ("file", "local")


class AtomicSaveMixin:
    """Put before a kedro-datasets file dataset class: its ``save`` then writes to a scratch path
    that :func:`~maskdm_pipeline.atomic.atomic_write` swaps in when the write has finished.

    It works through ``_get_save_path``, which every kedro-datasets file dataset asks for the
    path it writes to (and ``atomic_write`` gives the scratch file the destination's own name, so
    formats picked from the suffix are the same).
    """

    _protocol: str
    _atomic_target: PurePosixPath | None = None

    @property
    def filepath(self) -> Path:
        """The local file this dataset reads and writes (what the cache fingerprints)."""
        return Path(get_filepath_str(self._filepath, self._protocol))  # type: ignore[attr-defined]

    def save(self, data: Any) -> None:
        if self._protocol not in _LOCAL:
            super().save(data)  # type: ignore[misc]
            return
        final = Path(get_filepath_str(super()._get_save_path(), self._protocol))  # type: ignore[misc]
        with atomic_write(final) as target:
            self._atomic_target = PurePosixPath(target)
            try:
                super().save(data)  # type: ignore[misc]
            finally:
                self._atomic_target = None

    def _get_save_path(self) -> PurePosixPath:
        if self._atomic_target is not None:
            return self._atomic_target
        return super()._get_save_path()  # type: ignore[misc]


class JSONDataset(AtomicSaveMixin, _JSONDataset):
    """``kedro_datasets.json.JSONDataset``, saved atomically."""


class CSVDataset(AtomicSaveMixin, _CSVDataset):
    """``kedro_datasets.pandas.CSVDataset``, saved atomically."""


class TextDataset(AtomicSaveMixin, _TextDataset):
    """``kedro_datasets.text.TextDataset``, saved atomically."""


class ImageDataset(ImagePreviewMixin, AtomicSaveMixin, _ImageDataset):
    """``kedro_datasets.pillow.ImageDataset``, saved atomically, with the image as its kedro-viz
    preview (kedro-datasets gives this class none)."""


class MatplotlibDataset(AtomicSaveMixin, _MatplotlibDataset):
    """``kedro_datasets.matplotlib.MatplotlibDataset`` for one figure, saved atomically."""
