"""Development tools that the tests, the benchmarks and the experiments share; not part of the
installed package (``src/maskdm_pipeline``), and not of any of the three folders that use it.

- :func:`make_project_copy`: a throw-away copy of this Kedro project, where a real ``kedro run``
  cannot touch the repository's own ``data/`` or ``mlflow.db``;
- :func:`kedro_command`: the ``kedro`` command as a user starts it, from the interpreter in use;
- :func:`machine_info`, :func:`cpu_name`, :func:`load_average`: what a timing was measured on,
  recorded beside every benchmark and experiment result.

Imported as ``devkit`` with the project root on ``sys.path``: ``python -m benchmarks`` and
``python -m experiments.claim`` are started from the root, which Python puts first on the path,
and pytest adds the root itself (``pythonpath`` in pyproject.toml). torch is imported only by
:func:`machine_info`, so the test helpers that copy projects stay light.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["LAYERS", "PROJECT_ROOT", "cpu_name", "kedro_command", "load_average", "machine_info",
           "make_project_copy"]

PROJECT_ROOT = Path(__file__).resolve().parent
LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input",
          "06_models", "07_model_output", "08_reporting")


def make_project_copy(dest: Path, project_root: Path = PROJECT_ROOT, *, copy_src: bool = True,
                      notebooks: bool = False) -> Path:
    """A throw-away copy of the project in ``dest``: conf/ (without local/), pyproject.toml,
    .telemetry, src/ and empty data layers; the one copy helper of benchmarks, experiments and
    tests.

    ``copy_src=False`` leaves src/ empty, so the installed package runs (experiments resume their
    copies later and must not run a stale snapshot); ``notebooks`` copies notebooks/ too.
    """
    shutil.copytree(project_root / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    if copy_src:
        shutil.copytree(project_root / "src", dest / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    else:
        (dest / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    if notebooks:
        shutil.copytree(project_root / "notebooks", dest / "notebooks")
    for name in ("pyproject.toml", ".telemetry"):
        if (project_root / name).is_file():
            shutil.copy(project_root / name, dest / name)
    for layer in LAYERS:
        (dest / "data" / layer).mkdir(parents=True)
    return dest


def kedro_command() -> list[str]:
    """``kedro`` as a user starts it: the console script beside this interpreter, else
    ``python -m kedro`` (a ``pip install --target`` puts the scripts elsewhere, as on a machine
    where the project's dependencies are carried as wheels)."""
    script = Path(sys.executable).with_name("kedro")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kedro"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): other jobs' load."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, GPU name on CUDA, thread counts (torch and the BLAS pools), versions, the date
    and the load average at the start. Callers add ``load_average_at_end`` when they finish."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    device = torch.device(device)
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": {p["internal_api"]: p["num_threads"] for p in threadpool_info()},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }
