"""What a user wrote wrong in ``conf/`` ends in one line that names the file or the entry, with
exit status 2 (:class:`~maskdm_pipeline.console.UsageMistake`), before anything runs, for every
Kedro command that reads the configuration (``run``, ``viz``, ``catalog``, ``ipython``).

- :class:`ProjectConfigLoader` (``settings.CONFIG_LOADER_CLASS``): Kedro's ``OmegaConfigLoader``,
  whose refusals (an environment without a folder, a file that is not YAML, a key set twice, an
  ``${...}`` that does not resolve) reached the user as a traceback; here they are worded, with
  the valid environments, the parser's reason and the line as an editor counts it.
- :func:`built_catalog` (``project.ProjectContext._get_catalog``): Kedro builds each catalog entry
  lazily, at its first use, which is inside a hook or a node's load, after an MLflow run was
  opened; every entry is built as the catalog is made, and a refused one (an unknown ``type``,
  an argument its class does not take, a missing one, a value it refuses) is named with its file
  and what is valid.

The parameters have their own schema (``params.py``), the command line its own checks
(``cli.py``).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kedro.config import MissingConfigException, OmegaConfigLoader

from maskdm_pipeline.console import UsageMistake, choices
from maskdm_pipeline.listing import shown

__all__ = ["ProjectConfigLoader", "built_catalog", "catalog_problem"]

_ENTRY = re.compile(r"(?:dataset|catalog entry) '([^']+)'", re.IGNORECASE)


class ProjectConfigLoader(OmegaConfigLoader):
    """Kedro's ``OmegaConfigLoader``; what it refuses in ``conf/`` is one :class:`UsageMistake`:

    - an environment without a folder (``--env nosuch``, ``KEDRO_ENV``): Kedro's
      ``MissingConfigException``, with the environments there are;
    - a file that is not valid YAML: Kedro's ``ParserError`` (it names the file, with a 0-based
      line), with the parser's own reason;
    - a key set twice in one environment: Kedro's ``ValueError`` (it names both files);
    - an ``${...}`` that does not resolve: OmegaConf's error, which names the key;
    - a file whose top level is not a mapping (a list, a bare value): Kedro fails with an
      ``AttributeError`` deep inside its duplicate check, so the loader finds the file itself.

    Any other ``MissingConfigException`` (no ``credentials*`` or ``mlflow*`` file, for which
    Kedro and the hooks have defaults) passes through unchanged.
    """

    def __getitem__(self, key: str) -> dict[str, Any]:
        from omegaconf.errors import OmegaConfBaseException

        try:
            return super().__getitem__(key)
        except MissingConfigException:
            self._check_environment()
            raise
        except yaml.YAMLError as exc:
            raise UsageMistake(_not_yaml(exc)) from exc
        except OmegaConfBaseException as exc:
            dotted = getattr(exc, "full_key", None) or ""
            files = [shown(p) for p in self.files(key) if dotted and _holds(_read(p), dotted.split("."))]
            where = f"{files[-1]}: {dotted}" if files else f"conf/ {key}: {dotted}" if dotted else f"conf/ {key}"
            raise UsageMistake(f"{where}: {str(exc).splitlines()[0]}") from exc
        except ValueError as exc:
            if not str(exc).startswith("Duplicate keys found in "):
                raise
            lines = [re.sub(r"(/\S+?)(?= and |: )", lambda m: shown(m.group(1)), line)
                     for line in str(exc).splitlines()]
            raise UsageMistake(f"{'; '.join(lines)}: set each key in one file of an environment") from exc
        except (AttributeError, TypeError):
            culprit = next(self._not_mappings(key), None)
            if culprit is None:
                raise
            raise UsageMistake(f"{shown(culprit)} is not a mapping of keys (its top level is a list or a single "
                               "value): write it as `key: value` lines") from None

    def files(self, key: str) -> Iterator[Path]:
        """The local files of ``key`` (``catalog``, ``parameters``, ...) by Kedro's patterns, in
        the base environment, then in the run's."""
        env = self.env or self.default_run_env
        for folder in dict.fromkeys(Path(self.conf_source) / name for name in (self.base_env, env) if name):
            for pattern in self.config_patterns.get(key, []):
                for path in sorted(folder.glob(pattern)):
                    if path.suffix in (".yml", ".yaml", ".json") and path.is_file():
                        yield path

    def _check_environment(self) -> None:
        """The one line for an environment whose folder does not exist (local configuration)."""
        env = self.env or self.default_run_env
        root = Path(self.conf_source)
        if self._protocol != "file" or not env or (root / env).is_dir():
            return
        given = f"KEDRO_ENV={env}" if os.environ.get("KEDRO_ENV") == env else f"--env {env}"
        there = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != self.base_env) \
            if root.is_dir() else []
        raise UsageMistake(f"{given}: no such environment (there is no folder {shown(root / env)}); "
                           f"{choices(env, there, 'environments')}")

    def _not_mappings(self, key: str) -> Iterator[Path]:
        for path in self.files(key):
            content = _read(path)
            if content is not None and not isinstance(content, dict):
                yield path


def _holds(tree: Any, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _not_yaml(exc: Exception) -> str:
    """``<file> is not valid YAML: <the parser's reason> (line L, column C)`` from Kedro's
    ``ParserError`` (which names the file) and its cause, the parser's own error."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    mark = getattr(cause, "problem_mark", None)
    match = re.search(r"file (.+?), unable to read", str(exc))
    name = shown(match.group(1)) if match else "a configuration file"
    problem = getattr(cause, "problem", None) or str(cause).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{name} is not valid YAML: {problem}{where}"


# ---------------------------------------------------------------------------- the catalog
def built_catalog(make: Callable[[], Any], loader: Any) -> Any:
    """``make()`` (Kedro's catalog) with every entry built (``catalog.get``), or a
    :class:`UsageMistake` naming the entry Kedro refused (:func:`catalog_problem`)."""
    from kedro.io import DatasetError

    try:
        catalog = make()
        for name in catalog.keys():
            catalog.get(name)
    except DatasetError as exc:
        line = catalog_problem(exc, loader)
        if line is None:
            raise
        raise UsageMistake(line) from exc
    return catalog


def catalog_problem(error: BaseException, loader: Any) -> str | None:
    """The line for Kedro's refusal of a catalog entry (``error``), with the file that defines
    it (``loader``: the run's :class:`ProjectConfigLoader`); None when ``error`` names no entry."""
    match = _ENTRY.search(str(error))
    if match is None:
        return None
    name = match.group(1)
    entry = (loader["catalog"] or {}).get(name)
    files = [shown(p) for p in loader.files("catalog") if isinstance(_read(p), dict) and name in _read(p)]
    head = f"{files[-1]}: catalog entry {name}" if files else f"catalog entry {name}"
    if not isinstance(entry, Mapping):
        return (f"{head} is not a mapping of `type:` and the dataset's arguments (an entry that only holds "
                "values to interpolate must start with an underscore)")
    if "type" not in entry:
        return f"{head} has no `type:` (e.g. maskdm_pipeline.datasets.ImageFolder)"
    cls = _dataset_class(str(entry["type"]))
    if cls is None:
        return f"{head}: type {entry['type']} does not exist; {_types_near(str(entry['type']))}"
    cause = error.__cause__
    if isinstance(cause, TypeError):
        return f"{head}: {_arguments_problem(cls, entry, cause)}"
    reason = str(cause) if cause is not None else str(error).strip().splitlines()[0]
    return f"{head}: {cls.__name__} refused its arguments: {reason}"


def _dataset_class(type_name: str) -> type | None:
    """The class Kedro's ``parse_dataset_definition`` would load for ``type_name`` (its prefixes
    ``kedro.io.``, ``kedro_datasets.``, none), or None."""
    from kedro.io import AbstractDataset
    from kedro.utils import load_obj

    for prefix in ("kedro.io.", "kedro_datasets.", ""):
        try:
            found = load_obj(prefix + type_name)
        except Exception:  # noqa: BLE001 - any import failure means: not this prefix
            continue
        if isinstance(found, type) and issubclass(found, AbstractDataset):
            return found
    return None


def _types_near(type_name: str) -> str:
    """The dataset classes of the module ``type_name`` names (with Kedro's prefixes), closest
    first; the project's own when that module does not exist."""
    import importlib

    from kedro.io import AbstractDataset

    module_name, _, cls_name = type_name.rpartition(".")
    for prefix in ("kedro.io.", "kedro_datasets.", ""):
        try:
            module = importlib.import_module(prefix + module_name) if module_name else None
        except Exception:  # noqa: BLE001
            continue
        if module is None:
            break
        names = [n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_")]
        classes = [n for n in names if _is_dataset(module, n, AbstractDataset)]
        if classes:
            return f"{module_name} has no dataset {cls_name}; {choices(cls_name, classes, 'datasets there')}"
    from maskdm_pipeline import datasets

    ours = [f"maskdm_pipeline.datasets.{n}" for n in datasets.__all__ if n.endswith(("Dataset", "Folder"))]
    return (f"there is no module {module_name or type_name} (nor kedro_datasets.{module_name or type_name}); "
            f"{choices(type_name, ours, 'project datasets')}")


def _is_dataset(module: Any, name: str, base: type) -> bool:
    """Whether ``module.name`` is a dataset class; kedro-datasets' groups import each class on
    first access, which fails without its optional dependency: then its name decides."""
    try:
        found = getattr(module, name)
    except Exception:  # noqa: BLE001 - an optional dependency that is not installed
        return name.endswith("Dataset")
    return isinstance(found, type) and issubclass(found, base)


def _arguments_problem(cls: type, entry: Mapping[str, Any], error: TypeError) -> str:
    """An argument the class does not take, or one it needs and the entry lacks, named with the
    arguments the class takes; else the ``TypeError`` as it is."""
    accepted = [p for p in inspect.signature(cls).parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = [p.name for p in accepted]
    given = [k for k in entry if k not in ("type", "versioned")]
    for key in given:
        if key not in names and not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()):
            return f"{cls.__name__} takes no argument {key}; {choices(key, names, 'arguments')}"
    missing = [p.name for p in accepted if p.default is p.empty and p.name not in given]
    if missing:
        return f"{cls.__name__} needs the argument {missing[0]} (its arguments: {', '.join(names)})"
    return f"{cls.__name__} refused its arguments: {error}"
