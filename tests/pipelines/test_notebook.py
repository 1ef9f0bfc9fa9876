"""notebooks/results.ipynb runs top to bottom against a finished run's outputs.

It runs in a private copy of the project after a `kedro run --env smoke` (the ``smoke_copy``
fixture), so it never depends on what the repository's own data/ holds. The kernel is this
interpreter, through a kernelspec written to a temporary folder, so the test never picks up some
other `python3` kernel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from kedro_project import subprocess_env
from nbclient import NotebookClient

KERNEL = "maskdm-pipeline-test"


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


def test_results_notebook_runs(smoke_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = smoke_copy  # a finished `kedro run --env smoke`, in a private copy
    for name, value in subprocess_env().items():
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
