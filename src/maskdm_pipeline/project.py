"""Every path the project reads or writes is relative to the project root, wherever Kedro starts.

Kedro supports starting a project from a sub-folder (``kedro run`` in ``notebooks/``, a notebook
with ``%load_ext kedro.ipython``), but it resolves only the catalog keys named ``filepath``,
``path`` and ``filename`` against the project root. Everything else stays relative to the
working directory, so a run from ``notebooks/`` used other files than the same run from the
root. This module closes the two gaps the project has:

- **Parameters that name files** (``params.ProjectPath``, e.g. ``evaluate.fid.weights_path``;
  :func:`path_parameters` lists them):
  :class:`ProjectContext` (``settings.CONTEXT_CLASS``) resolves them against the project root
  before any node or hook sees them. The same context validates the whole parameter tree once,
  when it is made.
- **The log file of conf/logging.yml**: Kedro looks for ``conf/logging.yml`` in the working
  directory only, so from a sub-folder it silently used its own defaults, without the file
  handler, and a logging.yml found there would write ``info.log`` into that folder.
  :func:`use_project_logging` applies the project's own file with its ``filename``\\ s resolved
  against the root.

The MLflow store and its artifact folder are resolved by
``tracking.mlflow_hook.MlflowTrackingHook``, which knows the project root from the context.

What a user wrote wrong in ``conf/`` (a file that is not YAML, a catalog entry of an unknown type)
ends in one line naming the file: :mod:`maskdm_pipeline.configuration`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kedro.framework.context import KedroContext
from kedro.utils import find_kedro_project
from pydantic import BaseModel

from maskdm_pipeline.params import Params, names_a_path, parameter_fields, validate_parameters

__all__ = ["ProjectContext", "path_parameters", "resolve_path_parameters", "use_project_logging"]

logger = logging.getLogger("kedro.framework.project")  # where Kedro says which logging file it uses


class ProjectContext(KedroContext):
    """Kedro's context, with the merged parameters validated once and every ``ProjectPath``
    parameter resolved against the project root.

    The whole tree (conf + ``--params``, whatever ``--pipelines`` selects) is checked by
    :func:`maskdm_pipeline.params.validate_parameters` as the context is made: every Kedro
    command that loads the project (``kedro run``, ``catalog``, ``ipython``, ``viz``) makes one,
    and does so before any hook (``after_context_created``) or the catalog reads a parameter. A
    problem stops the command with exit status 2 and one line per parameter; nothing has run.
    The result is kept as ``validated_params`` (a :class:`~maskdm_pipeline.params.Params`), for
    the cache and the hooks; the nodes get their typed blocks from Kedro's ``params:`` inputs.

    ``params`` feeds the catalog's ``params:`` entries and the ``parameters`` dataset, so the
    nodes, the hooks and MLflow all see the same absolute path.
    """

    validated_params: Params

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loader = self.config_loader
        self.validated_params = validate_parameters(loader["parameters"], runtime_params=loader.runtime_params)

    @property
    def params(self) -> dict[str, Any]:
        return resolve_path_parameters(super().params, self.project_path)

    def _get_catalog(self, *args: Any, **kwargs: Any) -> Any:
        """Kedro's catalog (``_get_catalog`` is its documented place to change how the catalog is
        made), every entry built at once: a mistake in one ends the command in one line before
        anything runs (:func:`maskdm_pipeline.configuration.built_catalog`)."""
        from maskdm_pipeline.configuration import built_catalog

        return built_catalog(lambda: super(ProjectContext, self)._get_catalog(*args, **kwargs), self.config_loader)


def use_project_logging(cwd: Path | None = None) -> Path | None:
    """Apply the project's ``conf/logging.yml`` when Kedro was started in a sub-folder of the
    project, with each handler's relative ``filename`` resolved against the project root.

    Nothing changes when Kedro was started at the root (it found the file itself) or when
    ``KEDRO_LOGGING_CONFIG`` names a file (the user's explicit choice). Returns the file applied.
    """
    if os.environ.get("KEDRO_LOGGING_CONFIG"):
        return None
    cwd = (cwd or Path.cwd()).resolve()
    root = find_kedro_project(cwd)
    if root is None or Path(root).resolve() == cwd:
        return None
    path = next((p for p in (Path(root) / "conf" / "logging.yml", Path(root) / "conf" / "logging.yaml")
                 if p.is_file()), None)
    if path is None:
        return None
    from kedro.framework.project import configure_logging

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    for handler in (config.get("handlers") or {}).values():
        filename = handler.get("filename") if isinstance(handler, dict) else None
        if isinstance(filename, str) and not Path(filename).expanduser().is_absolute():
            handler["filename"] = str(Path(root).resolve() / filename)
    configure_logging(config)
    logger.info("Using '%s' as logging configuration (the project's; Kedro was started in %s).", path, cwd)
    return path


# ---------------------------------------------------------------------------- path parameters
def path_parameters() -> list[str]:
    """The dotted names of every :data:`ProjectPath` parameter, e.g. ``evaluate.fid.weights_path``."""
    return [name for name, annotation in parameter_fields().items() if names_a_path(annotation)]


def resolve_path_parameters(params: Mapping[str, Any], root: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of the parameter tree with every relative :data:`ProjectPath` value made absolute
    against ``root`` (``~`` expanded); absolute values, nulls and URLs are kept as they are.
    Blocks Kedro has already turned into models are copied with the new value."""
    resolved = dict(params)
    for dotted in path_parameters():
        keys = dotted.split(".")
        value = _get(resolved, keys)
        if isinstance(value, str) and value and "://" not in value:
            path = Path(value).expanduser()
            resolved = _replaced(resolved, keys, str(path if path.is_absolute() else Path(root) / path))
    return resolved


def _get(tree: Any, keys: list[str]) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, Mapping) else getattr(tree, key, None)
    return tree


def _replaced(tree: Any, keys: list[str], value: Any) -> Any:
    """``tree`` with ``tree[keys[0]]...[keys[-1]] = value``, copied along the way."""
    head, *rest = keys
    new = _replaced(_get(tree, [head]), rest, value) if rest else value
    if isinstance(tree, BaseModel):
        return tree.model_copy(update={head: new})
    return {**tree, head: new}
