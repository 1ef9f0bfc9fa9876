"""Shared helpers of the reliability tests (issue 7): throw-away Kedro projects, CLI runs, small states.

Tests that start a real ``kedro run`` never touch the repository's ``data/``: each gets its own
project copy in ``tmp_path`` (``tests/kedro_project.py``), and the command runs with that folder
as its working directory, one torch thread per process (on a shared 2-core machine torch's
default of one thread per core, times several processes, slows the smoke models down 10x).
Here a run can also be watched while it goes (to signal it at the right moment) and the
``data/`` folder compared before and after.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro_project import PROJECT_ROOT, kedro_command, load_params, subprocess_env
from kedro_project import make_project as copy_project

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def squash(text: str) -> str:
    """Output without colour codes and with every run of whitespace as one space (rich wraps)."""
    return re.sub(r"\s+", " ", ANSI.sub("", text))


def _default_sigint() -> None:
    # A child of a shell started with `cmd &` inherits SIGINT as ignored; a user's Ctrl-C
    # reaches a process whose SIGINT is the default, so that is what the tests reproduce.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _own_group() -> None:
    # A process group of its own, as a command started by a shell or srun on a node has: the
    # test can kill -9 the whole "node" (kedro and its workers) without touching pytest.
    _default_sigint()
    os.setpgid(0, 0)


class Running:
    """A ``kedro run`` in progress; its output is collected line by line in a thread."""

    def __init__(self, args: list[str], cwd: Path, env: Mapping[str, str], own_group: bool = False):
        self.proc = subprocess.Popen(args, cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace",
                                     preexec_fn=_own_group if own_group else _default_sigint)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120.0,
                 accept: Callable[[re.Match[str]], bool] = lambda match: True) -> re.Match[str]:
        """The first match of ``pattern`` in the squashed output (rich wraps long log lines)
        that ``accept`` takes; waits for it to be printed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finished = self.proc.poll() is not None and not self._reader.is_alive()
            for match in regex.finditer(squash("".join(self.lines[:]))):
                if accept(match):
                    return match
            if finished:
                break
            time.sleep(0.02)
        raise AssertionError(f"no match for {pattern!r} within {timeout} s; output:\n" + self.output[-4000:])

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """kill -9 the whole process group (started with ``own_group``): the node is gone."""
        os.killpg(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = 180.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("kedro run did not finish in time:\n" + self.output[-4000:]) from None
        self._reader.join(timeout=10)
        return self.proc.returncode, self.output


class KedroProject:
    """A throw-away copy of the project (configuration only) with its own ``data/``."""

    def __init__(self, root: Path):
        self.root = root
        self._running: list[Running] = []

    @property
    def data(self) -> Path:
        return self.root / "data"

    def args(self, *extra: str, env_name: str = "smoke", params: Mapping[str, Any] | None = None) -> list[str]:
        args = [*kedro_command(), "run", "--env", env_name, *extra]
        if params:
            args += ["--params", ",".join(f"{k}={v}" for k, v in params.items())]
        return args

    def start(self, *extra: str, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
              env_name: str = "smoke", own_group: bool = False) -> Running:
        running = Running(self.args(*extra, env_name=env_name, params=params), self.root,
                          env or subprocess_env(), own_group=own_group)
        self._running.append(running)
        return running

    def run(self, *extra: str, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
            env_name: str = "smoke", timeout: float = 180.0) -> tuple[int, str]:
        return self.start(*extra, params=params, env=env, env_name=env_name).finish(timeout)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every file under ``data/`` with its size and modification time."""
        return {str(p.relative_to(self.data)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(self.data.rglob("*")) if p.is_file()}

    def close(self) -> None:
        for running in self._running:
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait()


@pytest.fixture(scope="session")
def primary_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``data/03_primary`` shard folders of the smoke environment (``train/``, ``heldout/``
    and the empty ``pretrain_source/``), made once per session by the real preprocessing nodes
    and dataset (in-process: a ``kedro run`` would add seconds for nothing)."""
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset, ShardDataset
    from maskdm_pipeline.params import PreprocessParams
    from maskdm_pipeline.pipelines.preprocess.nodes import (
        convert_images,
        convert_pretrain_images,
        split_images,
    )

    folder = tmp_path_factory.mktemp("primary")
    params = load_params(PROJECT_ROOT)
    preprocess = PreprocessParams(**params["preprocess"])
    train, heldout, _ = split_images(convert_images(EmbeddedDigitsDataset().load(), preprocess), preprocess)
    source = convert_pretrain_images(None, preprocess, params["pretrain"]["data"])
    for name, data in (("train", train), ("heldout", heldout), ("pretrain_source", source)):
        ShardDataset(str(folder / name)).save(data)
    return folder


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, created once: MLflow's schema migrations take ~10 s on this
    machine, which every fresh project would otherwise pay on its first `kedro run`."""
    folder = tmp_path_factory.mktemp("mlflow")
    code = ("import sys, mlflow; mlflow.MlflowClient(tracking_uri='sqlite:///' + sys.argv[1])"
            ".search_experiments()")
    subprocess.run([sys.executable, "-c", code, str(folder / "mlflow.db")], check=True, cwd=folder,
                   env=subprocess_env(), capture_output=True, timeout=180)
    return folder / "mlflow.db"


@pytest.fixture
def make_project(tmp_path: Path, primary_files: Path, mlflow_db: Path) -> Iterator[Any]:
    """``make_project(name, with_primary=True) -> KedroProject`` in ``tmp_path / name``."""
    projects: list[KedroProject] = []

    def make(name: str = "project", with_primary: bool = True) -> KedroProject:
        root = copy_project(tmp_path / name)
        shutil.copy(mlflow_db, root / "mlflow.db")
        # These tests provoke failures, not MLflow's models: no logged models (seconds each: the
        # export; tested in tests/pipelines/test_smoke_run.py). A test may write its own mlflow.yml.
        (root / "conf" / "smoke" / "mlflow.yml").write_text("tracking:\n  log_models: false\n")
        if with_primary:
            for split in primary_files.iterdir():
                shutil.copytree(split, root / "data" / "03_primary" / split.name)
        project = KedroProject(root)
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.close()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process training on one thread: fast and deterministic on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_MODEL = {"preset": "tiny", "img_size": 8, "in_chans": 1, "patch_size": 2, "embed_dim": 16,
              "depth": 2, "num_heads": 2}
DIFFUSION = {"schedule": "linear", "prediction": "x0"}


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 1, 8, 8), dtype=np.uint8))


@pytest.fixture(scope="session")
def tiny_state(tiny_images: torch.Tensor) -> dict[str, Any]:
    """A real ``maskdm-checkpoint/1`` state of a tiny model after 3 steps."""
    from maskdm_pipeline.training import (
        DiffusionConfig,
        ModelConfig,
        StageConfig,
        TrainerConfig,
        TrainJob,
        run_training,
    )

    return run_training(TrainJob(
        images=tiny_images, model=ModelConfig(**TINY_MODEL), diffusion=DiffusionConfig(**DIFFUSION),
        stage=StageConfig(steps=3, batch_size=8, lr=1e-3, log_every=1),
        trainer=TrainerConfig(device="cpu"), progress=False))
