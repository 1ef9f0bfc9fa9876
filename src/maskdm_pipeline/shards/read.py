"""Reading shards: one array over a group's files (memory-mapped for rows by index, plain reads
for slices), row views, and opening a folder checked against its index."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from maskdm_pipeline.shards.format import FORMAT, GROUPS, INDEX, RERUN, ShardError, folder_checksum

# madvise where the platform has it (Linux, macOS); elsewhere plain memory maps.
_ADVISE = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_RANDOM") and hasattr(mmap, "MADV_WILLNEED")


def take_rows(images: Any, indices: np.ndarray) -> np.ndarray:
    """``images[indices]`` as a numpy array for any array-like here (ShardArray, RowView, ndarray,
    tensor)."""
    if isinstance(images, ShardArray | RowView):
        return images.take(indices)
    return np.asarray(images[indices])


class ShardArray:
    """The images of one shard group as one read-only uint8 array ``(N, C, H, W)``.

    Indexing (an int, a slice, or a 1-D integer array in any order) returns a numpy copy of the
    rows, read two ways. Rows by index (a training batch, a shuffled split) come from memory
    maps advised ``MADV_RANDOM``, after a ``MADV_WILLNEED`` for exactly the rows' pages. Measured
    on 20 batches of 64 random rows of sets that were not in the page cache (evicted with
    ``posix_fadvise``; disk reads from ``/proc/self/io``): with the kernel's default read-around
    a 2.4 GB set of 64x64 RGB rows read 2.1 GB from disk for 15 MB of rows; ``MADV_RANDOM``
    alone read 20 MB but faulted page by page (16 ms a batch; 230 ms at 256x256); with the
    ``WILLNEED`` requests all of a batch's reads overlap (2.5 ms; 11 ms at 256x256), against 4 and
    23 ms with one ``pread`` per row. Page-cached, a batch costs 0.2 ms (0.1 ms without the
    requests). Slices (sequential scans: features, copies) are read with ``readinto`` of the
    whole range: one large read, no page faults. Files are opened on first use, in the process
    that uses them: the object pickles as its file names only, so a DDP worker that receives
    one opens the shards itself, and no image travels through pickles or shared memory.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, folder: Path, files: Iterable[str], rows: Iterable[int],
                 item_shape: tuple[int, int, int]) -> None:
        self.folder = Path(folder)
        self.files = tuple(files)
        self.rows = tuple(int(r) for r in rows)
        self.item_shape = tuple(int(s) for s in item_shape)
        self._row_bytes = int(np.prod(self.item_shape))
        self._starts = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])
        self._maps: list[np.ndarray] | None = None
        self._mmaps: list[mmap.mmap] = []
        self._offsets: list[int] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self._starts[-1]), *self.item_shape)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ShardArray({self.folder}, shape={self.shape}, {len(self.files)} shard(s))"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None, "_mmaps": []}

    def check_files(self) -> list[int]:
        """Check every shard against the index (header and size; ShardError otherwise), once;
        returns where each shard's pixels start."""
        if self._offsets is None:
            self._offsets = [_check_shard(self.folder / name, n, self.item_shape)
                             for name, n in zip(self.files, self.rows, strict=True)]
        return self._offsets

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for name, n, offset in zip(self.files, self.rows, self.check_files(), strict=True):
                with open(self.folder / name, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                if _ADVISE:
                    mapped.madvise(mmap.MADV_RANDOM)
                flat = np.frombuffer(mapped, np.uint8, count=n * self._row_bytes, offset=offset)
                maps.append(flat.reshape(n, *self.item_shape))
                self._mmaps.append(mapped)
            self._maps = maps
        return self._maps

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.read(start, max(start, stop)) if step == 1 else self.take(np.arange(start, stop, step))
        if np.isscalar(key) or (hasattr(key, "ndim") and key.ndim == 0):
            return self.take(np.asarray([int(key)]))[0]
        return self.take(np.asarray(key))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``0 <= start <= stop <= N``), read from the files in one pass."""
        out = np.empty((stop - start, *self.item_shape), dtype=np.uint8)
        view = memoryview(out).cast("B")
        done = 0
        for s in range(len(self.files)):
            lo, hi = max(start, int(self._starts[s])), min(stop, int(self._starts[s + 1]))
            if lo >= hi:
                continue
            size = (hi - lo) * self._row_bytes
            with open(self.folder / self.files[s], "rb") as handle:
                handle.seek(self.check_files()[s] + (lo - int(self._starts[s])) * self._row_bytes)
                got = 0
                while got < size:
                    n = handle.readinto(view[done + got:done + size])
                    if not n:
                        raise ShardError(f"shard {self.folder / self.files[s]} ended early; {RERUN}.")
                    got += n
            done += size
        return out

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
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        if _ADVISE:  # ask for exactly these rows' pages, all at once: the reads then overlap
            begin = np.asarray(self.check_files(), np.int64)[shard] + (idx - self._starts[shard]) * self._row_bytes
            aligned = begin - begin % mmap.PAGESIZE
            for s, a, length in zip(shard.tolist(), aligned.tolist(), (begin + self._row_bytes - aligned).tolist(),
                                    strict=True):
                self._mmaps[s].madvise(mmap.MADV_WILLNEED, a, length)
        if len(maps) == 1:
            return maps[0][idx]
        out = np.empty((idx.size, *self.item_shape), dtype=np.uint8)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = maps[s][idx[sel] - self._starts[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All rows in memory (small sets and tests; streaming readers slice instead)."""
        out = self.read(0, len(self))
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


def _check_shard(path: Path, rows: int, item_shape: tuple[int, ...]) -> int:
    """Header and size against the index: a missing, truncated or foreign file is refused.
    Returns where the pixels start (the header's length)."""
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
    return offset


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
            index (shapes, sizes, or the content checksum against the digests and labels), also
            for a project that still has the old ``<name>.npz``; one line naming the file and the
            command that rewrites it.
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
            array = ShardArray(folder, files, rows, shape)
            array.check_files()
            out[f"{prefix}images"] = array
            labels = group.get("labels")
            out[f"{prefix}labels"] = None if labels is None else np.array(_side_array(folder, labels, count, "labels"))
            out[f"{prefix}digests"] = _side_array(folder, group["digests"], count, "digests")
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(
            f"{folder / INDEX} is incomplete or malformed ({type(exc).__name__}: {exc}); {RERUN}.") from exc
    computed = folder_checksum(out)  # from the digests and labels: 16 + 8 bytes an image, no pixel
    if out["checksum"] != computed:
        raise ShardError(f"{folder / INDEX} gives the content checksum {str(out['checksum'])[:12]}... but the "
                         f"digests and labels in {folder} give {computed[:12]}...: the index disagrees with the "
                         f"shards; {RERUN}.")
    return out
