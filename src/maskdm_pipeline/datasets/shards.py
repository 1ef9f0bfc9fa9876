"""Memory-mapped image shards in the catalog (``data/02_intermediate/converted_images/``,
``data/03_primary/{train,heldout,pretrain_source}/``); the format is :mod:`maskdm_pipeline.shards`.

Saving streams: a node returns either a :class:`~maskdm_pipeline.conversion.Conversion` (run here,
chunk by chunk, while the shards are written: Kedro's lazy saving) or a mapping of array-likes
(``{"images", "labels", "digests", "reference_images", ..., "meta"}``, e.g. row views of the
converted set), read and written in chunks of at most 64 MB. Either way the whole folder is
written aside and swapped in at the end (:func:`maskdm_pipeline.atomic.atomic_write`): a killed or
failed run, a full disk included, leaves the previous shards as they were.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from maskdm_pipeline.atomic import atomic_write
from maskdm_pipeline.conversion import Conversion
from maskdm_pipeline.datasets.errors import UnreadableFileError, UnwritableFileError
from maskdm_pipeline.imaging import NoUsableImagesError
from maskdm_pipeline.shards import (
    GROUPS,
    RERUN,
    SHARD_BYTES,
    ShardError,
    ShardWriter,
    iter_chunks,
    open_shards,
    write_index,
)

__all__ = ["ShardDataset"]

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


class ShardDataset(AbstractDataset[Any, dict[str, Any]]):
    """A folder of memory-mapped uint8 image shards with its ``index.json``.

    Loads as ``{"images": ShardArray (N, C, H, W), "labels": int64 (N,) | None, "digests",
    ["reference_images", "reference_labels", "reference_digests",] "checksum", "meta"}``, after
    checking every shard against the index (headers and sizes; no pixel is read).

    Example ``catalog.yml`` entry::

        primary_train:
          type: maskdm_pipeline.datasets.ShardDataset
          path: data/03_primary/train        # `path`, so Kedro makes it absolute

    ``max_shard_bytes``: pixels per shard file (default 1 GiB).
    """

    def __init__(self, path: str, max_shard_bytes: int = SHARD_BYTES, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._max_shard_bytes = int(max_shard_bytes)
        self.metadata = metadata

    @property
    def path(self) -> Path:
        """The shard folder (what the cache fingerprints; its record lies beside it, not in it)."""
        return self._path

    def load(self) -> dict[str, Any]:
        try:
            return open_shards(self._path)
        except ShardError as exc:
            raise UnreadableFileError(str(exc)) from exc

    def content_identity(self) -> str:
        """What the folder holds, for the cache (``maskdm_pipeline.caching``): its index's content
        checksum (the item shape, every image's digest in order, the labels: no pixel is read)
        and a hash of the index's ``meta`` (what the dataset card is made of: counts, skipped
        files, classes). Shards cut differently but holding the same images give the same identity,
        so a rerun of preprocessing that wrote the same content reruns nothing after it.

        A folder that does not open cleanly (missing, truncated, an index that disagrees) gets
        an identity of its own, so the cache sees it changed and reruns the stage that writes it.
        """
        if not self._path.exists():
            return "missing"
        try:
            data = open_shards(self._path)
        except ShardError as exc:
            return f"unreadable:{exc}"
        meta = hashlib.sha256(json.dumps(data["meta"], sort_keys=True, default=str).encode()).hexdigest()
        return f"shards:{data['checksum']}:meta:{meta[:16]}"

    def save(self, data: Conversion | Mapping[str, Any]) -> None:
        writers: list[ShardWriter] = []
        try:
            with atomic_write(self._path) as folder:
                folder.mkdir()
                if isinstance(data, Conversion):
                    writer = ShardWriter(folder, "", data.item_shape, self._max_shard_bytes)
                    writers.append(writer)
                    data.run(writer)
                    write_index(folder, {"": writer.finish(data.labels)}, data.summary())
                else:
                    groups = {}
                    for prefix in GROUPS:
                        if data.get(f"{prefix}images") is not None:
                            writer = ShardWriter(folder, prefix, tuple(data[f"{prefix}images"].shape[1:]),
                                                 self._max_shard_bytes)
                            writers.append(writer)
                            groups[prefix] = _write_group(writer, data, prefix)
                    write_index(folder, groups, data.get("meta", {}))
        except NoUsableImagesError as exc:
            raise DatasetError(str(exc)) from None
        except ShardError as exc:  # a source read from other shards that do not open
            raise UnreadableFileError(str(exc)) from exc
        except OSError as exc:
            if exc.errno not in _DISK_ERRNOS:
                raise
            shard = next((w.shards[-1]["file"] for w in reversed(writers) if w.shards), None)
            where = f" (while writing {shard})" if shard else ""
            kept = ("the previous shards there are untouched" if (self._path / "index.json").exists()
                    else "nothing was written there")
            raise UnwritableFileError(
                f"cannot write shards to {self._path}{where}: {exc.strerror or exc} [Errno {exc.errno}]; "
                f"{kept}. Free some space (or fix the folder's permissions) and {RERUN}."
            ) from exc
        finally:
            for writer in writers:
                writer.abort()

    def _exists(self) -> bool:
        """The folder's index, or an older version's single archive beside it (``train.npz``):
        loading that names its format and the command that rewrites it, which a reader's "does
        not exist" (caching/fit.py) would hide."""
        return (self._path / "index.json").is_file() or self._path.with_name(f"{self._path.name}.npz").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


def _write_group(writer: ShardWriter, data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    images, digests = data[f"{prefix}images"], data.get(f"{prefix}digests")
    start = 0
    for chunk in iter_chunks(images):
        stop = start + len(chunk)
        writer.write(chunk, None if digests is None else np.asarray(digests[start:stop]))
        start = stop
    return writer.finish(data.get(f"{prefix}labels"))
