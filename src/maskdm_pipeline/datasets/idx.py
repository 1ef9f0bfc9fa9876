"""IDX files in the catalog: the format MNIST, Fashion-MNIST, KMNIST and EMNIST ship as.

The format (LeCun et al., http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a 4-byte magic
number, two zero bytes, a type byte (``0x08`` unsigned byte, ..., ``0x0E`` double) and the number
of dimensions; then each dimension as a big-endian int32; then the values, big-endian, in C
order. Image files have 3 dimensions ``(N, rows, cols)`` (or 4, ``(N, rows, cols, channels)``);
label files have one, ``(N,)``. Files are read as they are or gzip-compressed (``.gz``, told
apart by their first two bytes, not by their name).

Why our own forty lines and not a library: torchvision's MNIST readers want its folder layout
and a download step, and the one-purpose PyPI readers are unmaintained; the format is two
lines of ``numpy.frombuffer``. What we add is the checks, each ending in one line that names the
file (:class:`~maskdm_pipeline.datasets.errors.UnreadableFileError`).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.datasets.errors import UnreadableFileError

__all__ = ["IdxDataset", "read_idx"]

# The type byte -> numpy dtype (big-endian, as the format stores them).
_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: no such file; point the catalog entry at the IDX file") from None
    except (OSError, EOFError) as exc:  # EOFError, BadGzipFile (an OSError): a cut or damaged .gz
        raise UnreadableFileError(f"{path}: cannot be read as IDX ({type(exc).__name__}: {exc}); "
                                  "download or copy the file again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds, in its own dtype (native byte order), C order.

    Raises:
        UnreadableFileError: the file is missing, not an IDX file (its magic number), or shorter
            or longer than its header says; the message names the file.
    """
    path = Path(path)
    data = _bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _TYPES or data[3] == 0:
        raise UnreadableFileError(
            f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}, expected 0000 then a type "
            "byte 08/09/0b/0c/0d/0e and the number of dimensions); point the catalog entry at an IDX file")
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UnreadableFileError(f"{path}: truncated: its header needs {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        how = "truncated" if len(data) < expected else "longer than its header says"
        raise UnreadableFileError(f"{path}: {how}: shape {tuple(shape)} needs {expected} bytes, the file has "
                                  f"{len(data)}; download or copy the file again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str | Path) else [str(v) for v in value]


class IdxDataset(AbstractDataset[None, dict[str, Any]]):
    """IDX image files (with their label files) as ``{"images": uint8 (N, C, H, W), "labels":
    int64 (N,) or None, "source": str}``, what the preprocess pipeline converts like any source.

    Example ``catalog.yml`` entry (Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

        raw_images:
          type: maskdm_pipeline.datasets.IdxDataset
          path: /usr/share/datasets/fashion-mnist      # the folder; relative: to the project root
          images: train-images-idx3-ubyte.gz
          labels: train-labels-idx1-ubyte.gz

    ``images`` and ``labels`` each take one file name in ``path`` or a list (concatenated in
    order, e.g. the train and test files of a set: the pipeline makes its own split); ``labels``
    may be left out (then no fd_clf). ``transpose: true`` swaps rows and columns of every image (EMNIST stores
    its images transposed). Read-only.

    Raises (on load, one line naming the file): :class:`UnreadableFileError` for a missing,
    damaged or truncated file, an image file that is not 3- or 4-dimensional or not uint8,
    labels that are not one integer per image, or image and label counts that differ.
    """

    def __init__(self, path: str, images: str | list[str], labels: str | list[str] | None = None,
                 transpose: bool = False, metadata: dict[str, Any] | None = None):
        folder = Path(path)  # `path`, so that Kedro makes a relative one absolute against the project
        self._images = [folder / p for p in _names(images)]
        self._labels = [folder / p for p in _names(labels)]
        if not self._images:
            raise DatasetError("IdxDataset: `images` names no file")
        if self._labels and len(self._labels) != len(self._images):
            raise DatasetError(f"IdxDataset: {len(self._images)} image files but {len(self._labels)} label files; "
                               "give one label file per image file, in the same order, or none")
        self._folder, self._transpose = folder, bool(transpose)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        images = [self._image_array(path) for path in self._images]
        labels = None
        if self._labels:
            labels = [self._label_array(path, len(array), image_path)
                      for path, array, image_path in zip(self._labels, images, self._images, strict=True)]
        return {"images": np.concatenate(images), "labels": None if labels is None else np.concatenate(labels),
                "source": ", ".join(p.name for p in self._images)}

    def _image_array(self, path: Path) -> np.ndarray:
        array = read_idx(path)
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
            raise UnreadableFileError(
                f"{path}: holds {array.dtype} of shape {array.shape}, not images; an IDX image file holds uint8 "
                "(N, rows, cols) or (N, rows, cols, 1 or 3 channels)")
        array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(array.swapaxes(2, 3)) if self._transpose else array

    @staticmethod
    def _label_array(path: Path, count: int, image_path: Path) -> np.ndarray:
        labels = read_idx(path)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UnreadableFileError(f"{path}: holds {labels.dtype} of shape {labels.shape}, not labels; an IDX "
                                      "label file holds one integer per image")
        if len(labels) != count:
            raise UnreadableFileError(f"{path}: {len(labels)} labels for the {count} images of {image_path.name}; "
                                      "pair each image file with its own label file")
        return labels.astype(np.int64)

    def content_identity(self) -> str:
        """The SHA-256 of every file, in order (what the cache keys preprocessing on): the same
        files copied elsewhere, or with new modification times, are the same input."""
        # Imported here: fingerprint brings pandas, which loading the images does not need.
        from maskdm_pipeline.fingerprint import file_digest

        whole = hashlib.sha256()
        for path in [*self._images, *self._labels]:
            whole.update(f"{file_digest(path) if path.is_file() else 'missing'}\n".encode())
        return f"idx:sha256:{whole.hexdigest()}"

    def save(self, data: None) -> None:
        raise DatasetError(f"IdxDataset({self._images[0]}) is read-only: it reads your IDX files")

    def _exists(self) -> bool:
        return all(p.is_file() for p in [*self._images, *self._labels])

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._folder), "images": [p.name for p in self._images],
                "labels": [p.name for p in self._labels], "transpose": self._transpose}
