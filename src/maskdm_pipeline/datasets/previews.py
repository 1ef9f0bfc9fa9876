"""What kedro-viz shows when a user clicks an image dataset in the DAG.

kedro-viz (``kedro viz build --include-previews``) calls a dataset's ``preview`` method and reads
the kind of preview from its return annotation (kedro-datasets' ``ImagePreview``: the file's
bytes in base64, shown as an image). kedro-datasets gives one to ``MatplotlibDataset`` but not
to ``pillow.ImageDataset``, which holds the sample grids.
"""

from __future__ import annotations

import base64

from kedro_datasets._typing import ImagePreview

__all__ = ["ImagePreviewMixin"]


class ImagePreviewMixin:
    """A ``preview`` for a kedro-datasets file dataset (``_fs``, ``_protocol``,
    ``_get_load_path``) that holds an image: put it before the dataset class in the bases."""

    def preview(self) -> ImagePreview:
        """The image file's bytes, base64-encoded, as kedro-viz shows an ``ImagePreview``."""
        from kedro.io.core import get_filepath_str

        path = get_filepath_str(self._get_load_path(), self._protocol)  # type: ignore[attr-defined]
        with self._fs.open(path, mode="rb") as handle:  # type: ignore[attr-defined]
            return ImagePreview(base64.b64encode(handle.read()).decode("ascii"))
