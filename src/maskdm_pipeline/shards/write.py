"""Writing shards: a streaming writer per group and the folder's ``index.json``."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maskdm_pipeline.shards.format import (
    CHUNK_BYTES,
    DIGEST_BYTES,
    FORMAT,
    GROUPS,
    INDEX,
    SHARD_BYTES,
    combine_checksums,
    content_checksum,
    row_digests,
)

_HEADER_BYTES = 128  # fixed .npy header length, so it can be rewritten once the count is known

def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header for uint8 C-order data, padded to a fixed length (numpy's
    reader takes any length), so it can be rewritten in place once the row count is known."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)}, }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class ShardWriter:
    """Streams uint8 rows ``(k, C, H, W)`` into the numbered ``.npy`` shards of one group.

    Rows go to the files with plain writes (no memory map), so the writer's memory does not
    grow with the number of rows; only the digests (16 bytes a row) are kept until
    :meth:`finish`. Write into a folder that is being written aside (``atomic.atomic_write``).
    """

    def __init__(self, folder: Path, prefix: str, item_shape: tuple[int, int, int],
                 max_shard_bytes: int = SHARD_BYTES) -> None:
        self.folder, self.prefix = Path(folder), prefix
        self.item_shape = tuple(int(s) for s in item_shape)
        self.row_bytes = int(np.prod(self.item_shape))
        self.max_rows = max(1, max_shard_bytes // max(self.row_bytes, 1))
        self.shards: list[dict[str, Any]] = []
        self._digests: list[np.ndarray] = []
        self._handle: Any = None
        self._rows_in_file = 0
        self.count = 0

    def write(self, rows: np.ndarray, digests: np.ndarray | None = None) -> None:
        """Append ``rows`` (uint8, the item shape); ``digests``: their :func:`row_digests`, if known."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        if rows.shape[1:] != self.item_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} written to shards of {self.item_shape}")
        self._digests.append(row_digests(rows) if digests is None else np.asarray(digests, np.uint8))
        start = 0
        while start < len(rows):
            if self._handle is None:
                self._open()
            take = min(len(rows) - start, self.max_rows - self._rows_in_file)
            self._handle.write(rows[start:start + take].data)
            self._rows_in_file += take
            self.count += take
            start += take
            if self._rows_in_file == self.max_rows:
                self._close_file()

    def _open(self) -> None:
        name = f"{self.prefix}images-{len(self.shards):05d}.npy"
        self._handle = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _close_file
        self._handle.write(_npy_header((self.max_rows, *self.item_shape)))
        self.shards.append({"file": name, "rows": 0})

    def _close_file(self) -> None:
        handle, self._handle = self._handle, None
        try:
            handle.seek(0)
            handle.write(_npy_header((self._rows_in_file, *self.item_shape)))
        finally:
            handle.close()
        self.shards[-1]["rows"] = self._rows_in_file
        self._rows_in_file = 0

    def finish(self, labels: np.ndarray | None) -> dict[str, Any]:
        """Close the last shard, write labels and digests; return the group's index entry."""
        if self._handle is not None:
            self._close_file()
        digests = (np.concatenate(self._digests) if self._digests
                   else np.empty((0, DIGEST_BYTES), np.uint8))
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if len(labels) != self.count:
                raise ValueError(f"{len(labels)} labels for {self.count} images")
            np.save(self.folder / f"{self.prefix}labels.npy", labels)
        np.save(self.folder / f"{self.prefix}digests.npy", digests)
        return {"count": self.count, "shape": list(self.item_shape), "dtype": "uint8",
                "shards": self.shards, "labels": None if labels is None else f"{self.prefix}labels.npy",
                "digests": f"{self.prefix}digests.npy",
                "checksum": content_checksum(self.item_shape, digests, labels)}

    def abort(self) -> None:
        """Close an open shard file (after a failure; the folder aside is then removed)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def write_index(folder: Path, groups: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``index.json`` for ``groups`` (prefix -> :meth:`ShardWriter.finish` entry); return it."""
    index = {"format": FORMAT,
             "checksum": combine_checksums(*(groups[p]["checksum"] if p in groups else None for p in GROUPS)),
             "groups": {f"{p}images": dict(groups[p]) for p in GROUPS if p in groups},
             "meta": dict(meta)}
    (Path(folder) / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def iter_chunks(images: Any, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """``images[a:b]`` as numpy arrays in row order, each at most ``max_bytes`` (at least a row)."""
    step = max(1, max_bytes // max(int(np.prod(images.shape[1:])), 1))  # uint8: a byte a value
    for start in range(0, len(images), step):
        yield np.asarray(images[start:start + step])


