"""Atomic writes: the one way a file or a folder the project writes is replaced.

Written aside, then swapped in, so a crash, a Ctrl-C or a full disk never leaves half a file
where the last good one was (DESIGN.md: checkpoints are written atomically). The neutral floor:
the standard library only. Used by ``fileio.py`` (torch states and checkpoints), every catalog
dataset that writes (``datasets/``), the fingerprint records (``caching/``) and the hook that
removes the temporaries of killed writers (``hooks.TemporaryFilesHook``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["ForeignWriterGone", "PathLike", "atomic_write", "host_name", "process_alive", "remove_stale_temporaries",
           "temporary_prefix"]

PathLike = str | os.PathLike[str]
# Whether the writer of another host's temporary is gone, from its host and the temporary's mtime
# (seconds since the epoch): a pid means nothing off its own host, so the caller judges (the run
# lock's leases, runlock.RunLock.foreign_writer_gone).
ForeignWriterGone = Callable[[str, float], bool]


@functools.cache
def host_name() -> str:
    """This machine's name as temporaries and the run lock record it: ``socket.gethostname()``
    with every character outside ``[A-Za-z0-9.-]`` as ``-``, so a name splits back unambiguously."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"


def temporary_prefix(name: str) -> str:
    """The start of the hidden temporary of a write to ``name`` by this process:
    ``.<name>.<pid>@<host>-`` (a random part and ``.tmp`` follow), so that whoever finds it knows
    which process on which machine wrote it, and removes it only once that writer is gone."""
    return f".{name}.{os.getpid()}@{host_name()}-"


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Replace the file or folder at ``path`` all at once: yield a path to fill, then swap it in.

    The yielded path has ``path``'s own name (so writers that pick a format from the suffix,
    such as PIL or ``np.savez``, work) inside a hidden sibling folder
    ``.<name>.<pid>@<host>-<random>.tmp`` (:func:`temporary_prefix`: the writing process and its
    machine).
    Write a file there, or create and fill a folder. When the block ends without an error, the
    content is fsynced and moved over ``path`` in one step: ``os.replace`` for a file; for a
    folder, Linux's ``renameat2(RENAME_EXCHANGE)``, or elsewhere two renames (a crash between
    them leaves the old folder whole in the hidden sibling). The parent folder is fsynced so the
    rename itself survives a power cut.

    A ``path`` that is a symbolic link, or lies in a linked folder (a data folder the user put on
    another disk: ``data/06_models -> /disk2/models``), is written where the link points: the
    hidden sibling lies beside the link's target and replaces it, and the link stays a link. A
    rename over the link itself would replace it with a real file or folder, and the next run
    would write on the project's disk.

    If the block raises (``KeyboardInterrupt`` included), the hidden sibling is removed and
    ``path`` is untouched. A ``kill -9`` can leave the hidden sibling behind; the next
    ``atomic_write`` to the same ``path`` removes those of this machine whose writer is gone, and
    every run removes those of writers that are gone (:func:`remove_stale_temporaries`, from
    ``hooks.TemporaryFilesHook``). A live writer's sibling is never touched, so two writers of one
    path (two nodes of a job on a shared folder) each swap in a complete file, one after the other.

    Raises:
        FileNotFoundError: the block wrote nothing at the yielded path.
        OSError: writing, fsyncing or renaming failed (disk full, read-only folder, ...).
    """
    path = Path(os.path.realpath(path))  # through every link: the target is replaced, never the link
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    scratch = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent))
    target = scratch / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {path}")
        _fsync_tree(target)
        if target.is_dir():
            _replace_folder(target, path)
        else:
            os.replace(target, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale(path: Path) -> None:
    """Hidden siblings ``.<name>.*.tmp`` of earlier writes on this machine whose writer is gone."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _writer_gone(stale, None):
            _remove(stale)


# The hidden sibling of an atomic_write in progress or killed: ".<name>.<pid>@<host>-<random>.tmp"
# (before hosts were recorded: ".<name>.<pid>-<random>.tmp", read as this machine's). The random
# part never holds "-", so a host name with "-" splits back whole; the name part is matched lazily,
# so a host name with ".<digits>" (node.42) is not read as the pid.
_TEMPORARY = re.compile(r"^\..+?\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9.-]+))?-[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(folder: PathLike, foreign: ForeignWriterGone | None = None) -> list[Path]:
    """Remove, in ``folder`` (not below), the hidden temporaries of :func:`atomic_write`\\ s whose
    writer is gone (``kill -9``, an OOM kill, a power cut) and return them. A folder of one holds a
    file with the real name (``pretrained.pt``) that a recursive listing would find.

    The writer of a temporary of this machine is gone when its process is; one of another machine
    is judged by ``foreign(host, mtime)`` (its pid means nothing here) and kept when ``foreign`` is
    None. Those of live writers stay, so concurrent runs and the nodes of a job on a shared folder
    are safe.
    """
    folder = Path(folder)
    stale = [entry for entry in (folder.iterdir() if folder.is_dir() else ()) if _writer_gone(entry, foreign)]
    for entry in stale:
        _remove(entry)
    return stale


def _writer_gone(entry: Path, foreign: ForeignWriterGone | None) -> bool:
    """Whether ``entry`` is an atomic_write temporary whose writer is gone (False for any other name)."""
    match = _TEMPORARY.match(entry.name)
    if match is None:
        return False
    host = match.group("host")
    if host is None or host == host_name():
        return not process_alive(int(match.group("pid")))
    if foreign is None:
        return False
    try:
        return foreign(host, entry.lstat().st_mtime)
    except FileNotFoundError:  # its writer swapped it in or removed it meanwhile
        return False


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (another user's counts)."""
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _replace_folder(new: Path, path: Path) -> None:
    """Swap the folder ``new`` in at ``path`` (no link: :func:`atomic_write` resolved them)."""
    if not path.is_dir():
        if path.exists():
            path.unlink()
        os.rename(new, path)
    elif not _exchange(new, path):
        os.rename(path, new.with_name(new.name + ".old"))  # removed with the hidden sibling
        os.rename(new, path)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux >= 3.15); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. a file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_tree(path: Path) -> None:
    paths = [path] if not path.is_dir() else [*sorted(path.rglob("*")), path]
    for item in paths:
        if item.is_dir():
            _fsync_dir(item)
        else:
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
