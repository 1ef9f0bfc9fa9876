"""The cache's seam with Kedro's runner internals (caching/kedro_runner.py): the private methods it
relies on still have the parameters it was written against, and Kedro's runners still call them
as it expects. When one of these fails after a Kedro upgrade, read what Kedro's
``kedro/runner/runner.py`` does now and adapt caching/kedro_runner.py (and its ``RELIED_ON``)."""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any

import kedro
import pytest
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node, pipeline
from kedro.runner import AbstractRunner, ParallelRunner, SequentialRunner, ThreadRunner

from maskdm_pipeline.caching.kedro_runner import KEDRO_VERSION, RELIED_ON, partwise

COMPLETED = "Pipeline execution completed successfully in"


def _parameters(method: Any) -> str:
    """``(self, pipeline, catalog, hook_manager=None, ...)``: names, kinds and defaults, no annotations."""
    signature = inspect.signature(method)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize("runner", [AbstractRunner, SequentialRunner, ThreadRunner, ParallelRunner],
                         ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("name", sorted(RELIED_ON))
def test_kedro_runner_methods_have_the_parameters_the_seam_was_written_against(runner: type, name: str) -> None:
    method = getattr(runner, name, None)
    assert method is not None, (f"Kedro {kedro.__version__}'s {runner.__name__}.{name} is gone; "
                                f"caching/kedro_runner.py was written against Kedro {KEDRO_VERSION}, which has it")
    now = _parameters(method)
    assert now == RELIED_ON[name], (
        f"Kedro's {runner.__name__}.{name} changed signature: {now} ; caching/kedro_runner.py was written "
        f"against Kedro {KEDRO_VERSION}: {RELIED_ON[name]}")


def _add(x: int) -> int:
    return x + 1


def _fail(x: int) -> int:
    raise ValueError("stop")


def _pipeline(second: Any = _add) -> Pipeline:
    return pipeline([node(_add, "a", "b", name="first"), node(second, "b", "c", name="second"),
                     node(_add, "c", "d", name="third")])


def _catalog() -> DataCatalog:
    return DataCatalog({name: MemoryDataset(1 if name == "a" else None) for name in "abcd"})


@pytest.mark.parametrize("runner", [SequentialRunner, ThreadRunner], ids=lambda cls: cls.__name__)
def test_a_drive_runs_batches_sees_each_node_finish_and_kedro_logs_the_end_once(
        runner: type, caplog: pytest.LogCaptureFixture) -> None:
    """Node by node in two batches through the runner's own ``_run``: ``_release_datasets`` is
    called for each node, and ``run`` logs its completion line once for the whole run."""
    finished: list[str] = []

    def drive(whole: Pipeline, catalog: Any, run_batch: Any) -> None:
        run_batch(whole.only_nodes("first"), finished.append)
        run_batch(whole.only_nodes("second", "third"), finished.append)

    wrapped = partwise(runner(), lambda only_missing: drive)
    assert isinstance(wrapped, runner) and type(wrapped).__name__ == runner.__name__
    catalog = _catalog()
    with caplog.at_level(logging.INFO):
        wrapped.run(_pipeline(), catalog)
    assert finished == ["first", "second", "third"], (
        f"Kedro {kedro.__version__}'s runner no longer calls _release_datasets after each node as Kedro "
        f"{KEDRO_VERSION} did: caching/kedro_runner.py cannot see a part finish")
    assert catalog.load("d") == 4
    completed = [r.getMessage() for r in caplog.records if COMPLETED in r.getMessage()]
    assert len(completed) == 1, (f"Kedro {kedro.__version__}'s run does not log '{COMPLETED} ...' once "
                                 f"around _run as Kedro {KEDRO_VERSION} did: {completed}")


def test_without_a_drive_the_runner_is_kedros_own(caplog: pytest.LogCaptureFixture) -> None:
    """No drive (the cache has nothing to judge by): Kedro runs the pipeline, and on a failure
    suggests ``--from-nodes`` as usual; with a drive, that suggestion is left to the drive."""
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="stop"):
        partwise(SequentialRunner(), lambda only_missing: None).run(_pipeline(_fail), _catalog())
    assert "--from-nodes" in caplog.text, (
        f"Kedro {kedro.__version__}'s runner no longer calls _suggest_resume_scenario on a failure")
    caplog.clear()

    def drive(whole: Pipeline, catalog: Any, run_batch: Any) -> None:
        run_batch(whole, lambda name: None)

    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="stop"):
        partwise(SequentialRunner(), lambda only_missing: drive).run(_pipeline(_fail), _catalog())
    assert "--from-nodes" not in caplog.text


def _rewrite() -> dict[str, str]:
    return {"v": "new"}


class _Recorder:
    """A project hook that reads the node's output file when Kedro's ``after_node_run`` and when
    the seam's ``after_node_outputs_saved`` are called, and in which process."""

    def __init__(self, path: Any) -> None:
        self.path, self.at_node_end, self.at_saved = path, [], []

    def _content(self) -> str:
        return json.loads(self.path.read_text())["v"]

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        self.at_node_end.append(self._content())

    @hook_impl
    def after_node_outputs_saved(self, node: Any, catalog: Any) -> None:
        self.at_saved.append((node.name, os.getpid(), self._content()))


@pytest.mark.parametrize("runner", [SequentialRunner, ThreadRunner, ParallelRunner], ids=lambda cls: cls.__name__)
def test_hooks_hear_in_the_main_process_once_a_nodes_outputs_are_saved(runner: type, tmp_path: Any) -> None:
    """A node rewrites an existing file: ``after_node_outputs_saved`` (the project's hook spec,
    added by the seam) is called once, in the main process under every runner, and sees the
    new content; Kedro's ``after_node_run`` sees the old one (it comes before the save), and a
    ParallelRunner calls it only in its worker."""
    from kedro.framework.hooks import _create_hook_manager
    from kedro.io import SharedMemoryDataCatalog
    from kedro_datasets.json import JSONDataset

    path = tmp_path / "out.json"
    path.write_text('{"v": "old"}')
    catalog_class = SharedMemoryDataCatalog if runner is ParallelRunner else DataCatalog
    catalog = catalog_class({"out": JSONDataset(filepath=str(path))})
    hooks, recorder = _create_hook_manager(), _Recorder(path)
    hooks.register(recorder)
    partwise(runner(), lambda only_missing: None).run(pipeline([node(_rewrite, None, "out", name="rewrite")]),
                                                     catalog, hooks)
    assert recorder.at_saved == [("rewrite", os.getpid(), "new")], (
        f"Kedro {kedro.__version__}'s {runner.__name__} no longer calls _release_datasets in the main process "
        f"after a node's outputs are saved, as Kedro {KEDRO_VERSION} did")
    assert recorder.at_node_end == ([] if runner is ParallelRunner else ["old"])
