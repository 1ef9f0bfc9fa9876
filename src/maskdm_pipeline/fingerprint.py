"""The one rule that keys every cached result of the project (issue 14; DESIGN.md "Caching").

A fingerprint is the SHA-256 of one canonical JSON document naming everything that determines a
result:

- ``what``: the computation itself (for a part of the pipeline: its nodes and the functions they
  call), so that two different computations never share a key, even on the same inputs;
- ``params``: every parameter block it reads, whole, as dotted names, minus :data:`SPEED_ONLY_KEYS`
  (settings that change how fast a result comes, not what it is);
- ``inputs``: the content identity of each input (name -> identity string, e.g. ``sha256:...``);
- ``files``: the content hash of each file it reads that is not a catalog input (the FID weights),
  as its node function declares them (:func:`reads_files`);
- ``package``: this package's version (new code may compute something else).

:mod:`maskdm_pipeline.caching` keys the pipeline's outputs with it and the FID reference
statistics in the feature cache (``pipelines/evaluate``) are keyed with it, so both follow the
same rule. Pure: the standard library and the project's flattener, no Kedro.

The content identities are computed here too: a file by the SHA-256 of its bytes, a folder that
a stage wrote by the SHA-256 of every file in it, and a folder of raw data by its listing
(relative path, size, modification time of every file: no file is opened, so a 30,000-image folder
is checked in a fraction of a second).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from maskdm_pipeline import __version__
from maskdm_pipeline.tracking import flatten

__all__ = ["FORMAT", "SPEED_ONLY_KEYS", "file_digest", "files_read", "fingerprint", "folder_digest",
           "folder_listing", "key_document", "listing_digest", "reads_files", "speed_only"]

FORMAT = "maskdm-fingerprint/1"

# Dotted parameter names (fnmatch patterns) left out of every fingerprint: they change how fast a
# result comes, not what it is. The process and node counts of DDP and its rendezvous (the global
# batch, the seeds and each sample's noise do not depend on them), the sampling batch (each sample
# draws its noise from its own seed), the preprocessing workers, and whether a stage resumes from
# its resume checkpoint (a resumed run equals an uninterrupted one). docs/caching.md "Keys left
# out of fingerprints".
SPEED_ONLY_KEYS = (
    "trainer.nproc", "trainer.nnodes", "trainer.rdzv_*", "trainer.max_restarts",
    "sample.batch_size", "preprocess.workers",
    "pretrain.resume", "finetune.resume", "baseline.resume",
)

_CHUNK = 1 << 20
_FILES_READ = "_files_read"  # the attribute reads_files sets on a node function

FilesFinder = Callable[[Mapping[str, Any]], Mapping[str, Path]]
F = TypeVar("F", bound=Callable[..., Any])


def speed_only(name: str) -> bool:
    """Whether the dotted parameter ``name`` is left out of fingerprints (:data:`SPEED_ONLY_KEYS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SPEED_ONLY_KEYS)


def key_document(what: Any, params: Mapping[str, Any] | None = None, inputs: Mapping[str, str] | None = None,
                 files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The document a fingerprint hashes.

    Args:
        what: names the computation (a string, or a mapping such as node name -> function).
        params: parameter blocks by name (``{"pretrain": {...}, "trainer": {...}}``) or dotted
            names; flattened to dotted names, :data:`SPEED_ONLY_KEYS` dropped.
        inputs: input name -> content identity.
        files: file name -> content hash, for files read that are not catalog inputs.
    """
    flat = {name: value for name, value in flatten(dict(params or {})).items() if not speed_only(name)}
    return {"format": FORMAT, "what": what, "params": flat, "inputs": dict(sorted((inputs or {}).items())),
            "files": dict(sorted((files or {}).items())), "package": __version__}


def reads_files(finder: FilesFinder) -> Callable[[F], F]:
    """Declare on a node function the files it reads besides its catalog inputs (the FID weights).

    ``finder(params)``, given the validated parameter tree as plain values
    (``Params.model_dump(mode="json")``), returns ``{label: path}`` (``{}``: none with these
    parameters). The content hash of each file goes into the ``files`` of the fingerprint of what
    runs the node (:mod:`maskdm_pipeline.caching`), so another file there makes it stale. The
    function itself is returned, unwrapped: Kedro reads its signature."""
    def declare(func: F) -> F:
        setattr(func, _FILES_READ, finder)
        return func

    return declare


def files_read(func: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Path]:
    """The files ``func`` declared with :func:`reads_files`, for ``params``; ``{}`` when none."""
    finder = getattr(func, _FILES_READ, None)
    return dict(finder(params)) if finder is not None else {}


def fingerprint(document: Mapping[str, Any]) -> str:
    """SHA-256 (64 hex digits) of ``document`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes (read in 1 MiB chunks).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def folder_digest(folder: str | os.PathLike[str]) -> str:
    """``sha256-tree:<hex>`` of every file under ``folder``: relative paths and contents."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest(path)}\n".encode())
    return f"sha256-tree:{digest.hexdigest()}"


def listing_digest(entries: Iterable[tuple[str, int, int]]) -> str:
    """``listing:<hex>`` of ``(relative POSIX path, size, mtime in ns)`` entries in sorted path
    order: the identity of a raw folder (:func:`folder_listing`, and the lean ``ImageFolder``
    dataset from its own listing, ``listing.FileListing.entries``)."""
    digest = hashlib.sha256()
    for name, size, mtime_ns in entries:
        digest.update(f"{name}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return f"listing:{digest.hexdigest()}"


def folder_listing(folder: str | os.PathLike[str]) -> str:
    """``listing:<hex>`` of every file under ``folder``: relative path, size and modification time
    (ns), no file opened. Any file added, removed, resized or rewritten changes it."""
    folder = Path(folder)

    def entries() -> Iterator[tuple[str, int, int]]:
        for path in _files(folder):
            stat = path.stat()
            yield path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns

    return listing_digest(entries())
