"""Shared fixtures. Tests run offline, on CPU, with small sizes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kedro_project import PROJECT_ROOT, kedro, make_project

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of tiny tensors: more threads only add contention on a
    shared 2-core machine (measured 10-20x slower with 2 threads under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy after one full `kedro run --env smoke` (read-only for the tests that use it)."""
    root = make_project(tmp_path_factory.mktemp("smoke") / "project")
    result = kedro(root, "run", "--env", "smoke")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (root / "run.log").write_text(result.stdout + result.stderr)
    return root


@pytest.fixture
def smoke_copy(smoke_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished smoke project, for tests that rerun stages."""
    copy = tmp_path / "project"
    shutil.copytree(smoke_run, copy, symlinks=True)
    return copy
