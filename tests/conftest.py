"""Shared fixtures, and the `slow` marker of the fast lane. Tests run offline, on CPU, with small
sizes; tests/README.md says what runs where."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kedro_project import PROJECT_ROOT, kedro, make_project

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

# Fixtures that start a real `kedro` subprocess (or otherwise take tens of seconds): every test
# that requests one, itself or through another fixture, is marked `slow` here, so `pytest -m
# "not slow"` leaves it out (tests/README.md). The few slow tests without such a fixture carry
# @pytest.mark.slow themselves.
SLOW_FIXTURES = frozenset({
    "smoke_run",           # a whole `kedro run --env smoke` (smoke_copy and what builds on it)
    "make_project",        # tests/reliability: the project copies those tests `kedro run` in
    "folder_project",      # tests/pipelines/test_caching.py: `kedro run` on a folder of PNGs
    "viz",                 # tests/pipelines/test_viz.py: `kedro viz build`
    "sampler_comparison",  # tests/unit/test_benchmarks.py: every sampler, DDPM's 1000 steps too
})


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2``, the default in pyproject.toml) each worker computes on one
    torch thread, as the ``kedro`` subprocesses of the tests do (kedro_project.subprocess_env):
    two workers of two OpenMP threads each on 2 cores wait on each other, up to 20x slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # `gpu` tests are skipped, not deselected, where torch sees no CUDA device: the report says
    # how many there are and why they did not run (CI has no GPU; the GPU check runs them).
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            for item in gpu_tests:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; torch sees none"))


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
