"""Full training-state checkpoints: atomic writes and safe (``weights_only``) loads.

DESIGN.md decides that ``data/06_models/*.pt`` hold the full training state, written atomically
and loaded with ``torch.load(..., weights_only=True)``. Full state, because METHOD.md section 4
describes 200k-step runs that must survive interruption; atomic, because a crash or a Ctrl-C
while writing must never destroy the last good checkpoint; ``weights_only``, because a ``.pt``
file is a pickle and an ordinary ``torch.load`` of a checkpoint from someone else runs whatever
code its author put in it.

Format ``maskdm-checkpoint/1`` (a dict; every leaf is a tensor, dict, list, tuple, str, int,
float, bool or None, so the restricted unpickler accepts it):

=============  =============================================================================
key            content
=============  =============================================================================
format         ``"maskdm-checkpoint/1"``
model          the raw (non-EMA) model ``state_dict`` (fine-tuning starts from it, section 4)
ema            ``EMA.state_dict()`` (training/ema.py), the weights used for sampling
optimizer      ``AdamW.state_dict()``
scaler         ``GradScaler.state_dict()`` for fp16, else None
step           int, optimizer steps taken so far
rng            generator states (uint8 tensors) and the data cursor, see training/loop.py
config         ``{"model": ..., "diffusion": ..., "stage": ..., "trainer": ...}`` plain dicts
history        list of ``{step, loss, lr, img_per_s, elapsed_s}`` logged every ``log_every``
stats          ``{wall_time_s, eval_time_s, images_seen, tokens_seen, img_per_s, ...}``
evals          (optional) list of eval results ``{step, elapsed_s, images_seen, ...}``
=============  =============================================================================
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "REQUIRED_KEYS",
    "CheckpointError",
    "check_plain",
    "load_checkpoint",
    "save_checkpoint",
    "validate_checkpoint",
]

CHECKPOINT_FORMAT = "maskdm-checkpoint/1"
REQUIRED_KEYS: tuple[str, ...] = (
    "format", "model", "ema", "optimizer", "scaler", "step", "rng", "config", "history", "stats",
)

# What torch's weights_only unpickler rebuilds without help. Plain values are compared by exact
# type: subclasses such as numpy.float64 (a float subclass) or a namedtuple pickle through
# their own globals, which the restricted unpickler refuses.
_PLAIN_TYPES = (str, int, float, bool, type(None))
_TORCH_LEAVES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(Exception):
    """A checkpoint file cannot be written or used; the message names the file and the fix."""


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


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate ``state`` as a ``maskdm-checkpoint/1`` dict and write it atomically."""
    path = Path(path)
    validate_checkpoint(state, source=f"the state to be saved to {path}")
    return save_torch_state(state, path)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_torch_state(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write any ``weights_only``-loadable dict to ``path`` atomically; return the path.

    The bytes go to a temp file in the same folder (``os.replace`` is only atomic within one
    file system), are fsynced, then renamed over ``path``; the folder is fsynced so the rename
    itself survives a power cut. If anything fails, the previous file at ``path`` is untouched.
    """
    path = Path(path)
    check_plain(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())  # mkstemp makes 0600 files; keep the usual umask
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave a stray temp file either.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


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


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a ``maskdm-checkpoint/1`` dict safely (see :func:`load_torch_state`) and validate it.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted, is not a maskdm
            checkpoint, or holds Python objects the restricted unpickler refuses (the payload
            is refused before any of it runs).
    """
    state = load_torch_state(path, map_location)
    validate_checkpoint(state, source=str(path))
    return state


def load_torch_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError that
    names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist. Run the stage that writes it first (e.g. "
            "`kedro run --pipelines pretrain`) or fix the path in the catalog."
        )
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


def _corrupted(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {path}: the file is truncated or corrupted "
        f"({type(exc).__name__}: {_first_line(exc)}). Delete it and rerun the stage that "
        "writes it, or restore an intact copy."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
