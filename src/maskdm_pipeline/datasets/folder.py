"""A folder of image files in the catalog, listed leanly (:mod:`maskdm_pipeline.listing`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.listing import FileListing, scan_folder

__all__ = ["ImageFolder"]


class ImageFolder(AbstractDataset[None, FileListing]):
    """Every file under ``path`` (recursively, sorted by relative path), as a
    :class:`~maskdm_pipeline.listing.FileListing`: no file is opened and about ``len(path) + 24``
    bytes are kept per file, where ``partitions.PartitionedDataset`` of ``pillow.ImageDataset``
    builds a dataset object per file (~1.5 KB each). The images are decoded later, in parallel,
    by the preprocess pipeline; a file that is not a usable image is skipped there with its reason.

    Example ``catalog.yml`` entry::

        raw_images:
          type: maskdm_pipeline.datasets.ImageFolder
          path: /datasets/my_faces        # `path`, so Kedro makes a relative one absolute
          suffixes: [.jpg, .png]          # optional: only these (case-insensitive); default every file

    Read-only.
    """

    def __init__(self, path: str, suffixes: list[str] | None = None, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._suffixes = tuple(s.lower() for s in suffixes or ())
        self.metadata = metadata

    def load(self) -> FileListing:
        try:
            return scan_folder(self._path, self._suffixes)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise DatasetError(str(exc)) from None

    def content_identity(self) -> str:
        """What the folder holds, for the cache (``maskdm_pipeline.caching``): its listing, the
        (relative path, size, modification time) of every file this entry loads
        (:func:`maskdm_pipeline.fingerprint.listing_digest`); no file is opened, so a folder of
        hundreds of thousands of images is checked in the time of one directory walk."""
        # Imported here: fingerprint brings pandas, which listing the folder for a node does not need.
        from maskdm_pipeline.fingerprint import listing_digest

        try:
            listing = scan_folder(self._path, self._suffixes)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        return listing_digest(listing.entries())

    def save(self, data: None) -> None:
        raise DatasetError(f"ImageFolder({self._path}) is read-only: it lists your images")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "suffixes": list(self._suffixes)}
