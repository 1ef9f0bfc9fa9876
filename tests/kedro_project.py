"""Throw-away copies of this Kedro project for tests that start the real `kedro` CLI.

A copy holds ``conf/`` (without ``local``), ``pyproject.toml``, ``.telemetry``, the notebooks,
an empty ``src/`` (the package itself is installed) and the ``data/`` layer folders, so a test
never touches the repository's own ``data/`` or ``mlflow.db``.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

from devkit import PROJECT_ROOT, kedro_command, make_project_copy


def make_project(root: Path) -> Path:
    return make_project_copy(root, PROJECT_ROOT, copy_src=False, notebooks=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """One torch thread per process: with several processes on 2 cores, more threads only wait.

    No ``COLUMNS`` and no ``PYTHONWARNINGS``: the tests read the output a user gets in a pipe,
    where every log record must be one full line and the project's own commands print no
    warning the user can do nothing about (tests/pipelines/test_console.py).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "PYTHONWARNINGS")}
    env.update(KEDRO_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def load_params(root: Path = PROJECT_ROOT, env_name: str = "smoke",
                runtime_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merged parameters exactly as ``kedro run --env <env_name> --params ...`` sees them."""
    from kedro.config import OmegaConfigLoader

    from maskdm_pipeline import settings

    args = {**settings.CONFIG_LOADER_ARGS, "default_run_env": env_name}
    with warnings.catch_warnings():  # pytest restores the filters settings.py set at import around each test
        warnings.filterwarnings("ignore", **settings.KEDRO_RESOLVER_DEPRECATION)
        loader = OmegaConfigLoader(str(root / "conf"), env=env_name, runtime_params=runtime_params, **args)
        return dict(loader["parameters"])


def kedro(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``kedro <args>`` in ``root`` the way a user does, through the installed console script."""
    return subprocess.run([*kedro_command(), *args], cwd=root, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
