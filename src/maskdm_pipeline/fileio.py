"""Safe file I/O for every file the project writes: atomic writes, ``weights_only`` torch states,
and the ``maskdm-checkpoint/1`` training-state format.

The neutral floor between the math and its users: torch, numpy and the standard library only,
imported by ``training/`` (which writes checkpoints while it trains) and by ``datasets/`` (which
reads and writes them for the catalog), so neither needs the other.

- **Atomic:** every file is written through :func:`maskdm_pipeline.atomic.atomic_write`
  (written aside, then swapped in; DESIGN.md: checkpoints are written atomically).
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

A checkpoint's identity for the cache (:func:`checkpoint_identity`) is a hash of what its readers
use: ``format``, ``model``, ``ema``, ``step`` and ``config`` (:data:`IDENTITY_KEYS`), not its
bytes, which hold wall times.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from maskdm_pipeline.atomic import PathLike, atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "IDENTITY_KEYS",
    "REQUIRED_KEYS",
    "CheckpointError",
    "check_plain",
    "checkpoint_identity",
    "from_bytes",
    "is_checkpoint",
    "load_checkpoint",
    "load_torch_state",
    "save_checkpoint",
    "save_torch_state",
    "state_digest",
    "to_bytes",
    "to_cpu",
    "to_plain",
    "validate_checkpoint",
]

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


def to_bytes(obj: Any) -> bytes:
    """``obj`` (a state dict, a module) as ``torch.save`` bytes, to pass to or from a spawned
    process: passed as tensors, torch's multiprocessing pickler would put every tensor in
    /dev/shm (64 MB in a default Docker container; GBs for a paper-size model's state)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, *, weights_only: bool = True) -> Any:
    """:func:`to_bytes`'s object back, on the CPU. ``weights_only=False`` only for objects this
    program's own parent process sent a moment before (a module), never for bytes from a file."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only)


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
# What the readers of a final checkpoint use: sampling the EMA weights, ``config.model`` and
# ``config.diffusion`` and the step (recorded beside the samples); fine-tuning the raw or EMA
# weights and ``config.model``; the whole config, small, describes the weights to any other
# reader. Left out: ``optimizer``, ``scaler`` and ``rng``, which only resuming reads (a stage
# resumes from its resume slot, never from a final checkpoint: fine-tuning starts a fresh
# optimizer), and ``history``, ``stats`` and ``evals``, which hold wall times and throughputs
# (the stage's own history and accounting outputs carry them to the report).
IDENTITY_KEYS: tuple[str, ...] = ("format", "model", "ema", "step", "config")


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


def state_digest(obj: Any) -> str:
    """SHA-256 (hex) of a ``weights_only`` state (:func:`check_plain`'s kinds of values), the same
    for equal content however it was written: dicts in sorted key order, each tensor by its dtype,
    shape and raw bytes (on the CPU, contiguous), plain values by type and ``repr``.

    Raises:
        CheckpointError: ``obj`` holds a value of another kind.
    """
    digest = hashlib.sha256()
    _feed(digest, obj, "state")
    return digest.hexdigest()


def _feed(digest: Any, obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().to("cpu").contiguous()
        digest.update(f"tensor:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        digest.update(f"dict:{len(obj)}\n".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            digest.update(f"key:{type(key).__name__}:{key}\n".encode())
            _feed(digest, obj[key], f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple):
        digest.update(f"{type(obj).__name__}:{len(obj)}\n".encode())
        for i, value in enumerate(obj):
            _feed(digest, value, f"{where}[{i}]")
    elif type(obj) in _PLAIN_TYPES or isinstance(obj, torch.dtype | torch.device | torch.Size):
        digest.update(f"{type(obj).__name__}:{obj!r}\n".encode())
    else:
        raise CheckpointError(f"{where} is a {type(obj).__qualname__}, which a state digest does not take")


def checkpoint_identity(state: Mapping[str, Any]) -> str:
    """``checkpoint:<hex>``: the :func:`state_digest` of the :data:`IDENTITY_KEYS` of a
    ``maskdm-checkpoint/1`` dict. Equal for two runs whose weights, EMA weights, config and step
    are equal, whatever their wall times; any changed weight changes it."""
    return "checkpoint:" + state_digest({key: state.get(key) for key in IDENTITY_KEYS})
