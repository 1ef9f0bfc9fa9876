"""Safe file I/O for every file the project writes: atomic writes, ``weights_only`` torch states,
and the ``maskdm-checkpoint/1`` training-state format.

The neutral floor between the math and its users: torch, numpy and the standard library only,
imported by ``training/`` (which writes checkpoints while it trains) and by ``datasets/`` (which
reads and writes them for the catalog), so neither needs the other.

- **Atomic:** :func:`atomic_write` is the one way a file or a folder is replaced: written aside,
  then swapped in, so a crash, a Ctrl-C or a full disk never leaves half a file where the last
  good one was (DESIGN.md: checkpoints are written atomically).
- **Safe to load:** a ``.pt`` file is a pickle, and an ordinary ``torch.load`` of a file from
  someone else runs whatever code its author put in it. :func:`load_torch_state` loads with
  ``weights_only=True`` and checks the zip archive's CRC-32s first (``torch.load`` never does, so
  a flipped byte would load silently as a different model).

Format ``maskdm-checkpoint/1`` (a dict; every leaf is a tensor, dict, list, tuple, str, int,
float, bool or None, so the restricted unpickler accepts it):

=============  =============================================================================
key            content
=============  =============================================================================
format         ``"maskdm-checkpoint/1"``
model          the raw (non-EMA) model ``state_dict`` (fine-tuning starts from it, METHOD.md 4)
ema            ``{"model": EMA weights, "step": updates so far}`` (training/ema.py), for sampling
optimizer      ``AdamW.state_dict()``
scaler         ``GradScaler.state_dict()`` for fp16, else None
step           int, optimizer steps taken so far
rng            generator states (uint8 tensors) and the data cursor (training/streams.py)
config         ``{"model": ..., "diffusion": ..., "stage": ..., "trainer": ...}`` plain dicts
history        list of ``{step, loss, lr, img_per_s, elapsed_s}`` logged every ``log_every``
stats          ``{wall_time_s, eval_time_s, images_seen, tokens_seen, img_per_s, ...}``
evals          (optional) list of eval results ``{step, elapsed_s, images_seen, ...}``
=============  =============================================================================
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import glob
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "REQUIRED_KEYS",
    "CheckpointError",
    "atomic_write",
    "check_plain",
    "remove_stale_temporaries",
    "is_checkpoint",
    "load_checkpoint",
    "load_torch_state",
    "save_checkpoint",
    "save_torch_state",
    "to_cpu",
    "to_plain",
    "validate_checkpoint",
]

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Replace the file or folder at ``path`` all at once: yield a path to fill, then swap it in.

    The yielded path has ``path``'s own name (so writers that pick a format from the suffix,
    such as PIL or ``np.savez``, work) inside a hidden sibling folder ``.<name>.<pid>-<random>.tmp``
    (``<pid>``: the writing process).
    Write a file there, or create and fill a folder. When the block ends without an error, the
    content is fsynced and moved over ``path`` in one step: ``os.replace`` for a file; for a
    folder, Linux's ``renameat2(RENAME_EXCHANGE)``, or elsewhere two renames (a crash between
    them leaves the old folder whole in the hidden sibling). The parent folder is fsynced so the
    rename itself survives a power cut.

    If the block raises (``KeyboardInterrupt`` included), the hidden sibling is removed and
    ``path`` is untouched. A ``kill -9`` can leave the hidden sibling behind; the next
    ``atomic_write`` to the same ``path`` removes it, so there must be one writer per path at a
    time (the project's rule: only rank 0 writes), and every run removes those of writers that
    are gone (:func:`remove_stale_temporaries`, from ``hooks.TemporaryFilesHook``).

    Raises:
        FileNotFoundError: the block wrote nothing at the yielded path.
        OSError: writing, fsyncing or renaming failed (disk full, read-only folder, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
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
    """Hidden siblings ``.<name>.*.tmp`` of earlier writes that were killed mid-way."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# The hidden sibling of an atomic_write in progress or killed: ".<name>.<pid>-<random>.tmp".
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove, in ``folder`` (not below), the hidden temporaries of :func:`atomic_write`\\ s whose
    process is gone (``kill -9``, an OOM kill, a power cut) and return them; those of live writers
    stay, so concurrent runs are safe. A folder of one holds a file with the real name
    (``pretrained.pt``) that a recursive listing would find.
    """
    folder = Path(folder)
    stale = [entry for entry in (folder.iterdir() if folder.is_dir() else ())
             if (match := _TEMPORARY.match(entry.name)) and not _alive(int(match.group(1)))]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _replace_folder(new: Path, path: Path) -> None:
    if not (path.is_dir() and not path.is_symlink()):
        if path.exists() or path.is_symlink():
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


# ---------------------------------------------------------------------------- plain values
# What torch's weights_only unpickler rebuilds without help. Plain values are compared by exact
# type: subclasses such as numpy.float64 (a float subclass) or a namedtuple pickle through
# their own globals, which the restricted unpickler refuses.
_PLAIN_TYPES = (str, int, float, bool, type(None))
_TORCH_LEAVES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(Exception):
    """A torch state file cannot be written or used; the message names the file and the fix."""


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise CheckpointError if ``obj`` holds anything ``weights_only`` loading would refuse.

    Checked at save time so that the error names the offending entry (e.g. a numpy float in
    an eval result) instead of surfacing much later as an unloadable file.
    """
    if type(obj) in _PLAIN_TYPES or isinstance(obj, _TORCH_LEAVES):
        return
    if type(obj) in (dict, collections.OrderedDict):  # state_dicts are OrderedDicts
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise CheckpointError(f"{where} has a key of type {type(key).__name__}; use str")
            check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) refuses; convert it to a tensor, number, str, list or dict"
    )


def to_cpu(obj: Any) -> Any:
    """Deep copy with every tensor detached onto the CPU (what ``weights_only`` files hold)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_plain(obj: Any) -> Any:
    """Eval results -> weights_only-safe values: 0-d tensors and numpy scalars become floats."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.detach().cpu()
    if type(obj) in (str, int, float, bool) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars (np.float64 is a float subclass) and 0-d arrays
        return obj.item()
    for base in (int, float, str):  # other subclasses, e.g. an IntEnum
        if isinstance(obj, base):
            return base(obj)
    return str(obj)


# ---------------------------------------------------------------------------- torch states
def save_torch_state(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write any ``weights_only``-loadable dict to ``path`` atomically; return the path.

    Raises:
        CheckpointError: ``state`` holds something ``weights_only`` loading would refuse
            (nothing is written).
        OSError: the write failed; the previous file at ``path`` is untouched.
    """
    path = Path(path)
    check_plain(state)
    with atomic_write(path) as target:
        torch.save(dict(state), target)
    return path


def load_torch_state(path: PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` after a CRC check, with every failure turned into a
    CheckpointError that names the file and the fix.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted (bytes changed after it
            was written), or holds Python objects the restricted unpickler refuses (the payload
            is refused before any of it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Run the stage that writes it first or fix the "
            "path in the catalog."
        )
    _verify_integrity(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" not in text.lower():
            raise _corrupted(path, exc) from exc
        detail = re.search(r"Unsupported (global|operand)[^\n]*", text)
        reason = detail.group(0).rstrip(". ") if detail else _first_line(exc)
        if detail and detail.group(1) == "global":
            raise CheckpointError(
                f"refused to load {path}: it contains Python objects that "
                f"torch.load(weights_only=True) does not allow ({reason}), so it was not loaded "
                "and none of it ran. A maskdm checkpoint holds only tensors and plain values; "
                "if the file comes from someone else, do not trust it."
            ) from exc
        raise CheckpointError(
            f"refused to load {path}: it is truncated or corrupted, or was not written by "
            f"torch.save (the restricted unpickler stopped at: {reason}); nothing in it ran. "
            "Delete it and rerun the stage that writes it, or restore an intact copy."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise _corrupted(path, exc) from exc
    return state


def _verify_integrity(path: Path) -> None:
    """Refuse a file whose bytes changed after it was written (disk or copy errors).

    ``torch.save`` writes a zip archive with a CRC-32 per entry, but ``torch.load`` never checks
    them. ``testzip`` reads the file once (about a second per GB) and checks them all. Files
    that are not zip archives are left to ``torch.load`` to judge.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _corrupted(path, exc) from exc
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its entry {bad!r} fails its CRC-32 check, so its bytes "
            "changed after it was written (a disk, network or copy error); nothing was loaded. "
            "Delete it and rerun the stage that writes it, or restore an intact copy."
        )


def _corrupted(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {path}: the file is truncated or corrupted "
        f"({type(exc).__name__}: {_first_line(exc)}). Delete it and rerun the stage that "
        "writes it, or restore an intact copy."
    )


def _first_line(exc: BaseException) -> str:
    """The first sentence of the first line (torch adds paragraphs of advice after the fact)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__


# ---------------------------------------------------------------------------- the format
CHECKPOINT_FORMAT = "maskdm-checkpoint/1"
REQUIRED_KEYS: tuple[str, ...] = (
    "format", "model", "ema", "optimizer", "scaler", "step", "rng", "config", "history", "stats",
)


def validate_checkpoint(state: Any, source: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``state`` is a ``maskdm-checkpoint/1`` dict."""
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{source} is not a maskdm checkpoint: it holds a {type(state).__name__}, not a dict "
            f"with format {CHECKPOINT_FORMAT!r}. Point the catalog at a file written by this "
            "pipeline's training stages."
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{source} is not a maskdm checkpoint: its 'format' tag is {state.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}. Point the catalog at a file written by this "
            "pipeline's training stages (a bare model state_dict is not enough)."
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{source} is not a complete maskdm checkpoint: missing keys {missing}. "
            "Rerun the training stage that writes it."
        )


def is_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` carries the ``maskdm-checkpoint/1`` tag (no deeper check)."""
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> Path:
    """Validate ``state`` as a ``maskdm-checkpoint/1`` dict and write it atomically."""
    validate_checkpoint(state, source=f"the state to be saved to {path}")
    return save_torch_state(state, path)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``maskdm-checkpoint/1`` dict safely (see :func:`load_torch_state`) and validate it.

    Raises:
        CheckpointError: as :func:`load_torch_state`, or the file is not a maskdm checkpoint.
    """
    state = load_torch_state(path, map_location)
    validate_checkpoint(state, source=str(path))
    return state
