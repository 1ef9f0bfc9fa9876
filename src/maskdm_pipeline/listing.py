"""A lean listing of a folder of files (standard library and numpy, no Kedro).

Why our own instead of ``partitions.PartitionedDataset``: that dataset builds one dataset object
per file (about 1.5 KB each: 1.5 GB of Python objects for a million images) before anything is
read. :func:`scan_folder` walks the tree with ``os.scandir`` (no file is opened; sizes and
modification times come from the directory entries), and :class:`FileListing` keeps what it found
packed: every relative path in one UTF-8 byte string with an offset array, plus the sizes and
modification times as int64 arrays, about ``len(path) + 24`` bytes per file.

:func:`shown`: a path as the project's messages show it, relative to the project when inside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["FileListing", "scan_folder", "shown"]


class FileListing:
    """Files under ``root``: relative POSIX paths in sorted order, with size and modification time.

    ``listing[i]`` is the i-th relative path, ``listing.path(i)`` its absolute path;
    :meth:`entries` gives ``(relative path, size in bytes, mtime in ns)`` for fingerprints that
    need no file opened. Picklable and small, so decoding workers receive it whole.
    """

    def __init__(self, root: Path, names: list[str], sizes: list[int], mtimes_ns: list[int]) -> None:
        self.root = Path(root)
        encoded = [name.encode("utf-8", "surrogateescape") for name in names]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.mtimes_ns = np.asarray(mtimes_ns, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._blob[start:stop].decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def path(self, i: int) -> Path:
        return self.root / self[i]

    def entries(self) -> Iterator[tuple[str, int, int]]:
        """``(relative path, size, mtime_ns)`` per file, in sorted path order."""
        for i in range(len(self)):
            yield self[i], int(self.sizes[i]), int(self.mtimes_ns[i])

    def __repr__(self) -> str:
        return f"FileListing({self.root}, {len(self)} files)"


def scan_folder(root: str | os.PathLike[str], suffixes: tuple[str, ...] = ()) -> FileListing:
    """Every file under ``root`` (recursively), sorted by relative path; no file is opened.

    Links to folders are listed as files and not followed (so a link to a parent folder cannot
    send the walk round in circles; decoding then skips it with its reason), like broken links.
    ``suffixes`` (lower case, with the dot), when given, keeps only names that end in one.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise (NotADirectoryError if root.exists() else FileNotFoundError)(
            f"{root} is not a folder: set `path` of the raw images entry in conf/<env>/catalog.yml "
            "to the folder that holds your images")
    found: list[tuple[str, int, int]] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        with os.scandir(root / prefix if prefix else root) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel + "/")
                    continue
                if suffixes and not entry.name.lower().endswith(suffixes):
                    continue
                try:  # a link's target, so that editing the target changes the entry
                    stat = entry.stat()
                except OSError:  # a broken link, or gone since the listing: decoding says which
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except OSError:
                        stat = None
                size, mtime = (-1, -1) if stat is None else (stat.st_size, stat.st_mtime_ns)
                found.append((rel, size, mtime))
    found.sort()
    return FileListing(root, [f[0] for f in found], [f[1] for f in found], [f[2] for f in found])


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as a message shows it: relative to the working directory (the project, where
    ``kedro run`` starts) when it lies inside it, e.g. ``data/06_models/pretrained.pt``; else as
    given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
