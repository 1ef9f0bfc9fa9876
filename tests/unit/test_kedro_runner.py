"""The cache's seam with Kedro's runner internals (caching/kedro_runner.py): the private methods it
relies on still have the parameters it was written against, and Kedro's runners still call them
as it expects. When one of these fails after a Kedro upgrade, read what Kedro's
``kedro/runner/runner.py`` does now and adapt caching/kedro_runner.py (and its ``RELIED_ON``)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import kedro
import pytest
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
