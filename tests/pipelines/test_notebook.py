"""notebooks/results.ipynb runs top to bottom against a finished run's outputs.

It runs in a temporary copy of the project (conf/, pyproject.toml, the notebook, an empty src/:
the package comes from the installed distribution). The outputs are copied from the project's
data/ when a run has left all of them there; otherwise `kedro run --env smoke` makes them in
the copy. The kernel is this interpreter, through a kernelspec written to a temporary folder,
so the test never picks up some other `python3` kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# What the notebook loads through the catalog (relative to the project root).
OUTPUTS = [
    "data/08_reporting/metrics.json",
    "data/08_reporting/dataset_card.json",
    *(f"data/08_reporting/{s}_{kind}" for s in ("pretrain", "finetune", "baseline")
      for kind in ("accounting.json", "history.csv")),
    "data/07_model_output/maskdm_grid.png",
    "data/07_model_output/baseline_grid.png",
]
KERNEL = "maskdm-pipeline-test"


def make_project_copy(project_root: Path, root: Path) -> Path:
    shutil.copytree(project_root / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(project_root / "pyproject.toml", root)
    (root / "src").mkdir()
    (root / "notebooks").mkdir()
    shutil.copy(project_root / "notebooks" / "results.ipynb", root / "notebooks")
    return root


def provide_outputs(project_root: Path, root: Path, env: dict[str, str]) -> str:
    """Copy the last run's outputs, or make them with a smoke run; say which."""
    if all((project_root / rel).is_file() for rel in OUTPUTS):
        for rel in OUTPUTS:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(project_root / rel, root / rel)
        return "copied"
    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--env", "smoke"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return "smoke run"


def write_kernelspec(folder: Path) -> Path:
    """A kernelspec for this interpreter under ``folder/kernels``; returns the JUPYTER_PATH entry."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "maskdm-pipeline (test)",
        "language": "python",
    }))
    return folder


@pytest.mark.slow
def test_results_notebook_runs(project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project_copy(project_root, tmp_path / "project")
    # One torch thread per process: on a shared 2-core machine the default (one per core, in
    # every process) slows the tiny smoke models down many times over.
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    provide_outputs(project_root, root, env)

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTER_PATH", str(write_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(root / "notebooks" / "results.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name=KERNEL, timeout=120,
                            resources={"metadata": {"path": str(root / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failure

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 3, "expected the sample grids, the curves and the loss plot"
    markdown = "\n".join(out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {}))
    assert "| model | FID | fd_clf |" in markdown and "MaskDM total" in markdown
    assert "**Reading.**" in markdown
