"""Every path the project reads or writes is relative to the project root, wherever Kedro starts.

Kedro supports starting a project from a sub-folder (``kedro run`` in ``notebooks/``, a notebook
with ``%load_ext kedro.ipython``), but it resolves only the catalog keys named ``filepath``,
``path`` and ``filename`` against the project root. Everything else stays relative to the
working directory, so a run from ``notebooks/`` used other files than the same run from the
root. This module closes the two gaps the project has:

- **Parameters that name files** (``params.ProjectPath``, e.g. ``evaluate.fid.weights_path``):
  :class:`ProjectContext` (``settings.CONTEXT_CLASS``) resolves them against the project root
  before any node or hook sees them.
- **The log file of conf/logging.yml**: Kedro looks for ``conf/logging.yml`` in the working
  directory only, so from a sub-folder it silently used its own defaults, without the file
  handler, and a logging.yml found there would write ``info.log`` into that folder.
  :func:`use_project_logging` applies the project's own file with its ``filename``\\ s resolved
  against the root.

The MLflow store and its artifact folder are resolved by ``hooks.MlflowTrackingHook``, which
knows the project root from the context.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from kedro.framework.context import KedroContext
from kedro.utils import find_kedro_project

from maskdm_pipeline.params import resolve_path_parameters

__all__ = ["ProjectContext", "use_project_logging"]

logger = logging.getLogger("kedro.framework.project")  # where Kedro says which logging file it uses


class ProjectContext(KedroContext):
    """Kedro's context, with every ``ProjectPath`` parameter resolved against the project root.

    ``params`` feeds the catalog's ``params:`` entries and the ``parameters`` dataset, so the
    nodes, the hooks and MLflow all see the same absolute path.
    """

    @property
    def params(self) -> dict[str, Any]:
        return resolve_path_parameters(super().params, self.project_path)


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
