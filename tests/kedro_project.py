"""Throw-away copies of this Kedro project for tests that start the real `kedro` CLI.

A copy holds ``conf/`` (without ``local``), ``pyproject.toml``, ``.telemetry``, the notebooks,
an empty ``src/`` (the package itself is installed) and the ``data/`` layer folders, so a test
never touches the repository's own ``data/`` or ``mlflow.db``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models",
          "07_model_output", "08_reporting")


def make_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir(exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "notebooks", root / "notebooks")
    (root / "src").mkdir(exist_ok=True)
    for layer in LAYERS:
        (root / "data" / layer).mkdir(parents=True, exist_ok=True)
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    """One torch thread per process: with several processes on 2 cores, more threads only wait."""
    env = dict(os.environ)
    env.update(KEDRO_DISABLE_TELEMETRY="1", COLUMNS="200", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def kedro(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``kedro <args>`` in ``root`` the way a user does, through the installed console script."""
    script = Path(sys.executable).with_name("kedro")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kedro"]
    return subprocess.run([*command, *args], cwd=root, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
