"""The GPU check (benchmarks/gpu_check.sh, gpu.py, gpu_train.py, gpu_e2e.py, gpu_wheels.py) on the
CPU: its dry runs at tiny sizes, so that the commands a session with a GPU runs cannot rot, and
the offline parts of the wheel closure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kedro_project import PROJECT_ROOT

from benchmarks import gpu, gpu_e2e, gpu_wheels

SCRIPT = PROJECT_ROOT / "benchmarks" / "gpu_check.sh"


def _check(mode: str, out: Path, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), mode, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_benchmark_dry_run_writes_a_complete_report(tmp_path: Path) -> None:
    done = _check("bench", tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "benchmarks-gpu.json").read_text())
    assert gpu.check_schema(report) == [] and report["dry_run"] is True
    assert {"cuda", "driver", "torch", "gpu"} <= set(report["machine"])
    assert report["matmul"]["datasheet_tflops"] == gpu.DATASHEET_BF16_TFLOPS
    assert report["flop_check"]["tiny"]["forward_equal"] is True
    modes = report["train"]["tiny"]["modes"]
    assert modes["masked90"]["visible_tokens"] < modes["unmasked"]["visible_tokens"] == 16
    assert all(m["attention"]["fused"] for m in modes.values()), modes  # CPU: the fused operator ran
    assert "compile_s" in report["compile"] and set(report["goals"]) == set(gpu.GOALS)
    assert (tmp_path / "benchmarks-gpu.log").is_file()


@pytest.mark.slow
def test_the_end_to_end_dry_run_runs_the_smoke_dag_without_mlflow(tmp_path: Path) -> None:
    """As on the GPU machine, mlflow and kedro-viz cannot be imported: the run says so in one
    line and finishes, and every stage that computes names its device."""
    done = _check("e2e", tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-e2e.json").read_text())
    smoke = report["smoke"]
    assert report["problems"] == [] and smoke["returncode"] == 0
    assert smoke["every_stage_logged_its_device"], smoke["devices"]
    assert all("cpu" in line for lines in smoke["devices"].values() for line in lines)
    assert smoke["untracked_line"].endswith("MLflow cannot be imported (No module named 'mlflow'): this run is "
                                            "not tracked. The pipeline goes on and every output is still written "
                                            "under data/; `pip install mlflow` to track runs.")
    assert smoke["fd_clf"]["n"] == 64 and "skipped" in report["quick_start"]


def test_neither_dry_run_writes_under_docs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu.main(["--dry-run", "--json", str(PROJECT_ROOT / "docs" / "benchmarks-gpu.json")])
    with pytest.raises(SystemExit):
        gpu_e2e.main(["--dry-run", "--out", str(PROJECT_ROOT / "docs")])
    assert not (PROJECT_ROOT / "docs" / "benchmarks-gpu.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_the_real_benchmark_refuses_to_run_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu.main(["--json", str(tmp_path / "x.json")])
    assert "no GPU" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_the_check_needs_the_carried_wheels(tmp_path: Path) -> None:
    """Outside a dry run the command installs .whl/: without it, one line says how to make it."""
    done = _check("bench", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and "python -m benchmarks.gpu_wheels" in done.stderr


def test_the_wheel_closure_starts_from_the_project_less_what_stays_off() -> None:
    machine = gpu_wheels.machine_packages()
    assert {"torch", "torchvision", "numpy", "pandas", "click"} <= machine
    assert not {"kedro", "kedro-datasets", "pydantic", "ema-pytorch", "pytorch-fid", "mlxtend"} & machine
    names = {r.name: r for r in gpu_wheels.project_requirements()}
    assert "mlflow" not in names and "kedro-viz" not in names
    assert "pillow-imagedataset" in names["kedro-datasets"].extras
    env = gpu_wheels.machine_environment()
    req = gpu_wheels.Requirement('tomli>=1.1; python_version < "3.11"')
    assert not gpu_wheels.wanted(req, (), env)  # the machine's Python is 3.12
    extra = gpu_wheels.Requirement('Pillow>=9; extra == "pillow-imagedataset"')
    assert gpu_wheels.wanted(extra, ("pillow-imagedataset",), env) and not gpu_wheels.wanted(extra, (), env)


def test_the_machine_side_check_names_unmet_requirements(tmp_path: Path) -> None:
    """A carried package whose requirement the interpreter's packages miss is listed."""
    info = tmp_path / "carried-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: carried\nVersion: 1.0\n"
                                   "Requires-Dist: numpy>=999\nRequires-Dist: no-such-package-here\n"
                                   "Requires-Dist: torch>=2.0\n")
    unmet = gpu_wheels.check_installed(tmp_path)
    assert len(unmet) == 2
    assert unmet[0].startswith("carried needs numpy>=999: ") and unmet[1].endswith("not installed")
