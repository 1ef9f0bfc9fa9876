"""The package's own source as the interpreter imports it: every module, what it imports, and a
digest of what it computes.

One reader for two users: the cache keys each part of the pipeline by the source of the modules it
runs (:func:`maskdm_pipeline.fingerprint.code_identity`, docs/caching.md "What counts as code"),
and the floors of docs/architecture.md are checked on the same import graph
(tests/unit/test_layering.py). Written here, with :mod:`ast`, because both need, from one parse
of each file and without importing anything, each module's own imports (the edges the floors are
checked on) and its syntax tree (the digest); the standard library's ``modulefinder`` gives the
set of modules a script reaches, compiling each and following every import into torch and the
other libraries.

- **Imports** are read wherever they are, lazy imports inside functions included; ``from a import
  b`` is module ``a.b`` when that module exists, else ``a``. A module that imports by name
  (``importlib.import_module``, as ``datasets/__init__.py`` does) is taken to import every module
  of its package: the names are not known before it runs.
- **Digest** of a module: the SHA-256 of its syntax tree (``ast.dump``, no line numbers) with the
  docstrings of the module, its classes and functions removed. Comments never reach the tree, and
  neither does layout, so an edit of comments, docstrings, blank lines or line breaks leaves the
  digest as it was; any edit of what runs changes it. The tree's format is the interpreter's, so a
  new Python minor version changes every digest (the cache names the Python version).

Pure: the standard library only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGE", "Module", "closure", "digest", "imported_modules", "installed", "module_name", "read_package"]

PACKAGE = "maskdm_pipeline"
_BY_NAME = "import_module"  # importlib.import_module: a module loaded by a name known only when it runs


@dataclass(frozen=True)
class Module:
    """One module of the package.

    Attributes:
        name: dotted, ``maskdm_pipeline.training.loop`` (a package by its own name).
        file: its path relative to the package folder, POSIX (``training/loop.py``): how the
            cache names it.
        imports: absolute names of every module it imports (of this package and others).
        digest: :func:`digest` of its source.
    """

    name: str
    file: str
    imports: frozenset[str]
    digest: str


def module_name(relative: Path, package: str = PACKAGE) -> str:
    """``training/loop.py`` -> ``maskdm_pipeline.training.loop``; ``training/__init__.py`` ->
    ``maskdm_pipeline.training``."""
    parts = [package, *relative.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str | ast.AST, name: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """Absolute names of the modules ``source`` (the text of module ``name``, or its tree) imports,
    wherever the import statement is (``from a import b`` is ``a.b`` when that is a module in
    ``known``; a call of ``import_module`` is every module of ``known`` in this module's package).

    Raises:
        SyntaxError: ``source`` is not valid Python.
    """
    tree = ast.parse(source) if isinstance(source, str) else source
    here, known = name if is_package else name.rpartition(".")[0], set(known)
    return {module for node in ast.walk(tree) for module in _imports(node, name, here, known)}


def _imports(node: ast.AST, name: str, here: str, known: set[str]) -> Iterable[str]:
    """What one node of module ``name`` (in package ``here``) imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = here.split(".")[: len(here.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
    if isinstance(node, ast.Call):
        func = node.func
        if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) == _BY_NAME:
            return [m for m in known if m.startswith(here + ".") and m != name]
    return ()


_SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _drop_docstring(node: ast.AST) -> None:
    """Remove the docstring of a module, class or function node (its first statement, where it is a
    string: what ``ast.get_docstring`` reads)."""
    if isinstance(node, _SCOPES) and node.body:
        first = node.body[0]
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            node.body = node.body[1:]


def _dump_digest(tree: ast.AST) -> str:
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def digest(tree: ast.Module) -> str:
    """SHA-256 (hex) of ``tree`` without its docstrings, as ``ast.dump`` writes it (no line
    numbers or columns): what the module computes, not how its text is laid out or commented.
    The docstrings are removed from ``tree`` itself."""
    for node in ast.walk(tree):
        _drop_docstring(node)
    return _dump_digest(tree)


def read_package(folder: str | Path, package: str = PACKAGE) -> dict[str, Module]:
    """Every module under ``folder`` (the package's own folder), by name, each file read, parsed
    and walked once (its imports, then :func:`digest`).

    Raises:
        OSError: a file cannot be read.
        SyntaxError: a file is not valid Python (the interpreter would refuse it too).
    """
    folder = Path(folder)
    files = {module_name(p.relative_to(folder), package): p for p in sorted(folder.rglob("*.py"))}
    known = set(files)
    modules: dict[str, Module] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports: set[str] = set()
        for node in ast.walk(tree):  # a node's children are queued before it is changed
            imports.update(_imports(node, name, here, known))
            _drop_docstring(node)
        modules[name] = Module(name, path.relative_to(folder).as_posix(), frozenset(imports), _dump_digest(tree))
    return modules


@functools.cache
def installed(package: str = PACKAGE) -> dict[str, Module]:
    """:func:`read_package` of ``package`` where the interpreter imports it from (its import spec:
    the source folder of an editable install, ``site-packages`` of an installed wheel), not from a
    checkout beside it. Read once per process: the code a run judges is the code it started with.

    Raises:
        ModuleNotFoundError: ``package`` cannot be imported.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not an importable package")
    return read_package(next(iter(spec.submodule_search_locations)), package)


def closure(modules: Mapping[str, Module], roots: Iterable[str]) -> list[str]:
    """The modules of ``modules`` whose code ``roots`` use, sorted: the roots and what they import of
    the package, directly or not, and the packages above each of them (whose ``__init__.py`` runs
    first). A package above counts by its own file, not by what it imports in turn, unless it is
    imported itself: ``from maskdm_pipeline.training.config import TrainerConfig`` runs
    ``training/__init__.py``, which imports the whole engine, yet what the importer computes
    depends on ``training/config.py`` (and ``training/__init__.py``'s own lines), not on the
    training loop. Names outside ``modules`` (other libraries) are left out."""
    imported: set[str] = set()
    todo = [r for r in roots if r in modules]
    while todo:
        name = todo.pop()
        if name not in imported:
            imported.add(name)
            todo += [m for m in modules[name].imports if m in modules and m not in imported]
    parents = {name.rsplit(".", n)[0] for name in imported for n in range(1, name.count(".") + 1)}
    return sorted(imported | (parents & set(modules)))
