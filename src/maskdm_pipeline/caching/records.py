"""Fingerprint records beside the outputs, and the identity of what a dataset holds.

Record format ``maskdm-fingerprint/1``: one JSON file beside each output,
``<file>.fingerprint.json`` (beside a folder, never inside it), written atomically:

==============  ==============================================================================
key             content
==============  ==============================================================================
format          ``"maskdm-fingerprint/1"``
fingerprint     SHA-256 (hex) of the key document: ``format``, ``what``, ``params``, ``inputs``,
                ``files``, ``code``, ``libraries``, ``package`` below
                (:func:`maskdm_pipeline.fingerprint.fingerprint`)
what            node name -> function, for the part of the pipeline that wrote the output
params          dotted parameter names -> values, of every block the part reads, speed-only
                keys left out (``fingerprint.SPEED_ONLY_KEYS``)
inputs          catalog input -> content identity (``sha256:...``, ``listing:...``, ...)
files           files read that are not catalog inputs (the FID weights) -> content hash
code            each file of the package the part runs (``training/loop.py``) -> the digest of
                what it computes (:func:`maskdm_pipeline.fingerprint.code_identity`); a record
                without it (written before code identities) is stale: "code identity not recorded"
libraries       ``python`` and each library that code imports -> its version (``torch``: ``2.5.1``)
package         ``maskdm_pipeline.__version__``
dataset         the catalog name of this output
stage, part     the stage (registered pipeline) and the part's label within it
path            the output's path as the catalog gives it
written         when the record was written (ISO 8601, UTC)
session_id      the Kedro session (``kedro run``) that wrote it: the MLflow hook's ``cache.<stage>``
                tags say ``ran`` for the parts this run wrote, ``up to date`` for the others
content         the output's own content identity (its readers' ``inputs`` entry)
stamp           a cheap signature of the output on disk (size and mtime; a folder's listing),
                so that an unchanged output is not hashed again
==============  ==============================================================================

A dataset may define ``content_identity() -> str | None`` (``maskdm_pipeline.datasets``; a
checkpoint: its weights, EMA weights, config and step, not its wall times); without it a file is
identified by the SHA-256 of its bytes, a folder a stage wrote by the SHA-256 of its files, and a
raw folder (no stage writes it) by its listing (no file opened).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskdm_pipeline.atomic import atomic_write
from maskdm_pipeline.fingerprint import FORMAT, file_digest, folder_digest, folder_listing

SUFFIX = ".fingerprint.json"
_LOCAL = (None, "file", "local")
_UNDEFINED = object()


class RecordUnreadable(Exception):
    """A fingerprint record that exists but cannot be used; the message says why."""


def dataset_path(dataset: Any) -> Path | None:
    """The local file or folder a dataset reads and writes (``filepath`` / ``path``, or the
    private ``_filepath`` / ``_path`` of Kedro's and kedro-datasets' classes); None for a dataset
    without one, or on another file system."""
    if getattr(dataset, "_protocol", None) not in _LOCAL:
        return None
    for attribute in ("filepath", "path", "_filepath", "_path"):
        value = getattr(dataset, attribute, None)
        if isinstance(value, str | Path) or hasattr(value, "as_posix"):
            return Path(str(value))
    return None


def record_path(path: Path) -> Path:
    """``data/06_models/pretrained.pt`` -> ``data/06_models/pretrained.pt.fingerprint.json``."""
    return path.with_name(path.name + SUFFIX)


def read_record(path: Path) -> dict[str, Any] | None:
    """The record beside ``path``; None when there is none.

    Raises:
        RecordUnreadable: it exists but is not a readable ``maskdm-fingerprint/1`` record.
    """
    file = record_path(path)
    if not file.exists():
        return None
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordUnreadable(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RecordUnreadable(f"format {got!r}, expected {FORMAT!r}")
    missing = [k for k in ("fingerprint", "params", "inputs", "content", "stamp", "written") if k not in record]
    if missing:
        raise RecordUnreadable(f"missing {', '.join(missing)}")
    return record


def write_record(path: Path, record: dict[str, Any]) -> None:
    with atomic_write(record_path(path)) as target:
        target.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _own(dataset: Any) -> Any:
    method = getattr(dataset, "content_identity", None)
    return method() if callable(method) else _UNDEFINED


def exempt(dataset: Any) -> bool:
    """Whether what ``dataset`` holds never changes its readers' results (its
    ``content_identity()`` is None: a keyed cache, a resume slot)."""
    return _own(dataset) is None


def content(dataset: Any, path: Path | None, folder: Callable[[Path], str] = folder_digest) -> str:
    """What a stage's output holds: its own identity, else its bytes' hash (a folder: ``folder``,
    by default the hash of its files); a dataset without a local path by its description."""
    own = _own(dataset)
    if own is not _UNDEFINED:
        return str(own)
    if path is None:
        return f"dataset:{dataset!r}"
    if path.is_dir():
        return folder(path)
    return file_digest(path) if path.is_file() else "missing"


def raw_identity(dataset: Any, path: Path | None) -> str:
    """What an input no stage writes holds: as :func:`content`, but a folder by its listing (no
    file opened: a raw image folder may hold hundreds of thousands)."""
    return content(dataset, path, folder=folder_listing)


def stamp(dataset: Any, path: Path) -> str:
    """A cheap signature of an output on disk: a file's size and modification time (whatever its
    own identity costs: a checkpoint's loads the file), a folder's own identity (a shard folder's
    reads its index), else its listing. Equal stamps: the output was not touched since."""
    if path.is_file():
        info = path.stat()
        return f"size:{info.st_size}:mtime_ns:{info.st_mtime_ns}"
    own = _own(dataset)
    if own is not _UNDEFINED:
        return str(own)
    return folder_listing(path) if path.is_dir() else "missing"


def touched(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file or folder, None when missing: every atomic write changes it."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns
