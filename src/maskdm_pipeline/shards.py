"""Memory-mapped image shards: the on-disk form of every image set a stage reads (DESIGN.md, "Data
at scale"). Neutral file I/O (numpy and the standard library), imported by ``datasets/`` (which
writes and loads them for the catalog) and by ``training/`` (whose workers open them).

A shard folder (written whole by :func:`maskdm_pipeline.fileio.atomic_write`)::

    index.json                      counts, item shape, shard files, content checksums, metadata
    images-00000.npy ...            uint8 (n_i, C, H, W); np.load(path, mmap_mode="r") opens each
    labels.npy                      int64 (n,) class labels (absent when unlabelled)
    digests.npy                     uint8 (n, 16): BLAKE2b-128 of each image's bytes
    reference_images-00000.npy ...  an optional second group ("reference_"), same layout

Why not one ``.npz`` (the old format): an ``.npz`` is a zip archive, which numpy cannot memory-map,
so every reader held the whole split in memory, and every DDP worker got its own pickled copy.
Why ``.npy`` shards of at most ``SHARD_BYTES`` rather than one file per split: files of a size
that copy tools, object stores and partial re-copies handle well; a reader sees one array
either way (:class:`ShardArray`).

The **content checksum** of a group is SHA-256 over the item shape, the per-image digests in row
order and the labels: it changes exactly when what training reads changes (any pixel, the order
or a label), does not depend on how the rows are cut into shards, and needs no pass over the
pixels once the digests exist (the conversion computes them as it goes). The folder's checksum
combines its groups'; the caching of later stages chains from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT", "GROUPS", "INDEX", "SHARD_BYTES", "RowView", "ShardArray", "ShardError", "ShardWriter",
    "combine_checksums", "content_checksum", "folder_checksum", "iter_chunks", "open_shards", "row_digests",
    "take_rows", "write_index",
]

FORMAT = "maskdm-shards/1"
INDEX = "index.json"
SHARD_BYTES = 1 << 30  # at most 1 GiB of pixels per shard file
GROUPS = ("", "reference_")  # key prefixes: images/labels/digests and reference_images/...
DIGEST_BYTES = 16
CHUNK_BYTES = 64 << 20  # rows read or written per step when streaming (bounded memory)
_HEADER_BYTES = 128  # fixed .npy header length, so it can be rewritten once the count is known
RERUN = "rerun `kedro run --pipelines preprocess`"


class ShardError(Exception):
    """A shard folder is missing, incomplete or inconsistent; the message names the file and
    what to do."""


# ---------------------------------------------------------------------------- checksums
def row_digests(rows: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 of each row's bytes: uint8 ``(k, 16)`` for ``rows`` of shape ``(k, ...)``."""
    rows = np.ascontiguousarray(rows)
    out = np.empty((len(rows), DIGEST_BYTES), dtype=np.uint8)
    for i, row in enumerate(rows):
        out[i] = np.frombuffer(hashlib.blake2b(row.data, digest_size=DIGEST_BYTES).digest(), np.uint8)
    return out


def content_checksum(item_shape: tuple[int, ...], digests: np.ndarray, labels: np.ndarray | None) -> str:
    """SHA-256 (hex) of one group's content: item shape, per-row digests in order, labels."""
    digest = hashlib.sha256(f"{FORMAT}|uint8|{tuple(int(s) for s in item_shape)}|{len(digests)}|".encode())
    digest.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    digest.update(b"labels:" + (b"none" if labels is None else np.asarray(labels, dtype="<i8").tobytes()))
    return digest.hexdigest()


def combine_checksums(*checksums: str | None) -> str:
    """One SHA-256 over several checksums in order (None for an absent part)."""
    return hashlib.sha256("|".join(c or "none" for c in checksums).encode()).hexdigest()


def folder_checksum(data: Mapping[str, Any]) -> str:
    """The checksum :func:`write_index` gives a folder written from ``data`` (``{"images",
    "digests", "labels", ["reference_..."]}``), computed from the digests alone."""
    return combine_checksums(*(
        content_checksum(tuple(data[f"{p}images"].shape[1:]), data[f"{p}digests"], data.get(f"{p}labels"))
        if data.get(f"{p}images") is not None else None for p in GROUPS))


# ---------------------------------------------------------------------------- writing
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
    :meth:`finish`. Write into a folder that is being written aside (``fileio.atomic_write``).
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


# ---------------------------------------------------------------------------- reading
def take_rows(images: Any, indices: np.ndarray) -> np.ndarray:
    """``images[indices]`` as a numpy array for any array-like here (ShardArray, RowView, ndarray,
    tensor)."""
    if isinstance(images, ShardArray | RowView):
        return images.take(indices)
    return np.asarray(images[indices])


class ShardArray:
    """The images of one shard group as one read-only uint8 array ``(N, C, H, W)``.

    Indexing (an int, a slice, or a 1-D integer array in any order) returns a numpy copy of the
    rows; the memory maps behind it are opened on first use, in the process that uses them.
    Pickles as its file names only: a DDP worker that receives one opens the shards itself, so
    no image data travels through pickles or shared memory.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folder: Path, files: Iterable[str], rows: Iterable[int],
                 item_shape: tuple[int, int, int]) -> None:
        self.folder = Path(folder)
        self.files = tuple(files)
        self.rows = tuple(int(r) for r in rows)
        self.item_shape = tuple(int(s) for s in item_shape)
        self._starts = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])
        self._maps: list[np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self._starts[-1]), *self.item_shape)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ShardArray({self.folder}, shape={self.shape}, {len(self.files)} shard(s))"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for name in self.files:
                try:
                    maps.append(np.asarray(np.load(self.folder / name, mmap_mode="r")))
                except (OSError, ValueError) as exc:
                    raise ShardError(f"cannot open shard {self.folder / name} ({exc}); {RERUN}") from exc
            self._maps = maps
        return self._maps

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        if np.isscalar(key) or (hasattr(key, "ndim") and key.ndim == 0):
            return self.take(np.asarray([int(key)]))[0]
        return self.take(np.asarray(key))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (1-D ints, any order, negatives allowed) as a new array, in that order.

        Read in the order given: sorting the indices first (for sequential disk reads) measured
        1.3-1.5x slower per batch on page-cached shards (64 and 256 random rows of 64x64 RGB),
        and a random training batch has no sequential run to gain on disk either.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        maps = self._open()
        if len(maps) == 1:
            return maps[0][idx]
        out = np.empty((idx.size, *self.item_shape), dtype=np.uint8)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = maps[s][idx[sel] - self._starts[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All rows in memory (small sets and tests; streaming readers slice instead)."""
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)


class RowView:
    """Rows ``rows`` of an array-like ``base`` (a split of a converted set), read on demand."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, base: Any, rows: np.ndarray) -> None:
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *tuple(self.base.shape[1:]))

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return take_rows(self.base, self.rows[np.asarray(indices, dtype=np.int64)])

    def __getitem__(self, key: Any) -> np.ndarray:
        if np.isscalar(key):
            return self.take(np.asarray([int(key)]))[0]
        return take_rows(self.base, self.rows[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = take_rows(self.base, self.rows)
        return out if dtype is None else out.astype(dtype)


# ---------------------------------------------------------------------------- opening, checked
def _read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX
    if not folder.is_dir():
        legacy = folder.with_name(folder.name + ".npz")
        if legacy.is_file():
            raise ShardError(
                f"{legacy} is the old single-archive format, which this version no longer reads "
                f"(it reads the shard folder {folder}/): {RERUN} to write it."
            )
        raise ShardError(f"{folder} does not exist: {RERUN} first.")
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ShardError(f"{path} is missing, so {folder} is incomplete; {RERUN}.") from exc
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is unreadable ({exc}); {RERUN}.") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} index; {RERUN}.")
    return index


def _check_shard(path: Path, rows: int, item_shape: tuple[int, ...]) -> None:
    """Header and size against the index: a missing, truncated or foreign file is refused."""
    if not path.is_file():
        raise ShardError(f"shard {path} is missing (listed in {path.parent / INDEX}); {RERUN}.")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError) as exc:
        raise ShardError(f"shard {path} has no valid .npy header ({exc}); {RERUN}.") from exc
    if dtype != np.uint8 or fortran or tuple(shape) != (rows, *item_shape):
        raise ShardError(
            f"shard {path} holds {dtype} {tuple(shape)} but {path.parent / INDEX} lists "
            f"uint8 {(rows, *item_shape)}: the index disagrees with the shards; {RERUN}."
        )
    expected, actual = offset + rows * int(np.prod(item_shape)), path.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise ShardError(f"shard {path} is {what} ({actual} bytes, expected {expected}); {RERUN}.")


def _side_array(folder: Path, name: str, count: int, what: str) -> np.ndarray:
    path = folder / name
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise ShardError(f"{what} file {path} is missing; {RERUN}.") from exc
    except (OSError, ValueError) as exc:
        raise ShardError(f"{what} file {path} is unreadable ({exc}); {RERUN}.") from exc
    if len(array) != count:
        raise ShardError(f"{path} has {len(array)} rows but {folder / INDEX} counts {count} images; {RERUN}.")
    return array


def open_shards(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Open a shard folder, checked against its index (headers and sizes, no pixel read).

    Returns ``{"images": ShardArray, "labels": int64 (N,) | None, "digests": uint8 (N, 16),
    [the same with "reference_"], "checksum": str, "meta": dict}``.

    Raises:
        ShardError: the folder, its index or a shard is missing, truncated or disagrees with the
            index (also for a project that still has the old ``<name>.npz``); one line naming
            the file and the command that rewrites it.
    """
    folder = Path(folder)
    index = _read_index(folder)
    out: dict[str, Any] = {"checksum": index.get("checksum"), "meta": index.get("meta", {})}
    try:
        groups = {p: index["groups"][f"{p}images"] for p in GROUPS if f"{p}images" in index["groups"]}
        if "" not in groups:
            raise KeyError("images")
        for prefix, group in groups.items():
            shape = tuple(int(s) for s in group["shape"])
            files, rows = [s["file"] for s in group["shards"]], [int(s["rows"]) for s in group["shards"]]
            count = int(group["count"])
            if sum(rows) != count:
                raise ShardError(f"{folder / INDEX} lists shards of {sum(rows)} rows for {count} images; {RERUN}.")
            for name, n in zip(files, rows, strict=True):
                _check_shard(folder / name, n, shape)
            out[f"{prefix}images"] = ShardArray(folder, files, rows, shape)
            labels = group.get("labels")
            out[f"{prefix}labels"] = None if labels is None else np.array(_side_array(folder, labels, count, "labels"))
            out[f"{prefix}digests"] = _side_array(folder, group["digests"], count, "digests")
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{folder / INDEX} is incomplete or malformed ({type(exc).__name__}: {exc}); {RERUN}.") from exc
    return out
