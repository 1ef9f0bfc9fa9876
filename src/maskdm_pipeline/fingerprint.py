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
- ``code``: the code identity of the computation (:func:`code_identity`): each file of this
  package that it runs -> the digest of what the file computes (:mod:`maskdm_pipeline.codegraph`:
  comments and docstrings left out), so an edit of a module it runs, or imports, reruns it;
- ``libraries``: the Python version and the version of each other library that code imports,
  except the ones that compute no result (:data:`UNKEYED_LIBRARIES`);
- ``package``: this package's version.

:mod:`maskdm_pipeline.caching` keys the pipeline's outputs with it and the FID reference
statistics in the feature cache (``pipelines/evaluate``) are keyed with it, so both follow the
same rule. Pure: the standard library, the project's flattener and its code graph, no Kedro.

The content identities are computed here too: a file by the SHA-256 of its bytes, a folder that
a stage wrote by the SHA-256 of every file in it, and a folder of raw data by its listing
(relative path, size, modification time of every file: no file is opened, so a 30,000-image folder
is checked in a fraction of a second).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from maskdm_pipeline import __version__, codegraph
from maskdm_pipeline.dotted import flatten

__all__ = ["FORMAT", "SPEED_ONLY_KEYS", "UNKEYED_LIBRARIES", "code_identity", "file_digest", "files_read",
           "fingerprint", "folder_digest", "folder_listing", "key_document", "listing_digest", "reads_files",
           "speed_only"]

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

# Libraries (by import name) whose version stays out of code identities: they wire the pipeline
# (kedro, kedro_datasets: the catalog's readers and writers, whose output the cache hashes anyway),
# validate or read the configuration (pydantic, yaml), or show and log (click, rich, tqdm, mlflow);
# none of them computes a result, and an upgrade of one should not retrain a model. Every other
# library the code imports (torch, numpy, PIL, ema_pytorch, ...) is keyed by its version.
# docs/caching.md "What counts as code".
UNKEYED_LIBRARIES = ("kedro", "kedro_datasets", "pydantic", "yaml", "click", "rich", "tqdm", "mlflow")

_CHUNK = 1 << 20
_FILES_READ = "_files_read"  # the attribute reads_files sets on a node function

FilesFinder = Callable[[Mapping[str, Any]], Mapping[str, Path]]
F = TypeVar("F", bound=Callable[..., Any])


def speed_only(name: str) -> bool:
    """Whether the dotted parameter ``name`` is left out of fingerprints (:data:`SPEED_ONLY_KEYS`)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SPEED_ONLY_KEYS)


def key_document(what: Any, params: Mapping[str, Any] | None = None, inputs: Mapping[str, str] | None = None,
                 files: Mapping[str, str] | None = None, code: Mapping[str, str] | None = None,
                 libraries: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The document a fingerprint hashes.

    Args:
        what: names the computation (a string, or a mapping such as node name -> function).
        params: parameter blocks by name (``{"pretrain": {...}, "trainer": {...}}``) or dotted
            names; flattened to dotted names, :data:`SPEED_ONLY_KEYS` dropped.
        inputs: input name -> content identity.
        files: file name -> content hash, for files read that are not catalog inputs.
        code, libraries: the computation's code identity (:func:`code_identity`).
    """
    flat = {name: value for name, value in flatten(dict(params or {})).items() if not speed_only(name)}
    return {"format": FORMAT, "what": what, "params": flat, "inputs": dict(sorted((inputs or {}).items())),
            "files": dict(sorted((files or {}).items())), "code": dict(sorted((code or {}).items())),
            "libraries": dict(sorted((libraries or {}).items())), "package": __version__}


def code_identity(roots: Iterable[str], modules: Mapping[str, codegraph.Module] | None = None
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """The code a computation runs, given the modules it starts in (``roots``: dotted names, of this
    package or not): ``(code, libraries)``.

    ``code``: each module of this package that importing the roots runs (:func:`codegraph.closure`:
    what they import, directly or not, lazily too) by its file relative to the package
    (``training/loop.py``) -> its digest (:func:`codegraph.digest`: comments and docstrings left
    out). ``libraries``: ``python`` -> ``major.minor``, and each other library those modules import,
    by import name -> its installed version (``absent`` when not installed), :data:`UNKEYED_LIBRARIES`
    and the standard library left out.

    Args:
        modules: the package as read by :func:`codegraph.read_package`; by default the package as
            the interpreter imports it (:func:`codegraph.installed`).
    """
    modules = codegraph.installed() if modules is None else modules
    roots = list(roots)
    names = codegraph.closure(modules, roots)
    code = {modules[name].file: modules[name].digest for name in names}
    imported = [m for name in names for m in modules[name].imports] + [r for r in roots if r not in modules]
    own = {name.split(".")[0] for name in modules}
    tops = {m.split(".")[0] for m in imported} - own - {"__future__", *UNKEYED_LIBRARIES}
    libraries = {top: _version(top) for top in sorted(tops - set(sys.stdlib_module_names))}
    return code, {"python": f"{sys.version_info.major}.{sys.version_info.minor}", **libraries}


# Import names whose distribution is named otherwise: looked up directly, since finding any
# other one means reading the metadata of every installed distribution (a second, on a loaded
# 2-core machine, in every `kedro run`).
_DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "PyYAML"}


@functools.cache
def _version(top: str) -> str:
    """The installed version of the distribution that provides import name ``top``."""
    for name in (top, _DISTRIBUTION.get(top)):
        if name:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
    dists = sorted(set(importlib.metadata.packages_distributions().get(top, [])))
    return ",".join(f"{d} {importlib.metadata.version(d)}" for d in dists) or "absent"



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
