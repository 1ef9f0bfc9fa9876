"""The cache's one seam with Kedro's runner internals, written against Kedro 1.7.0
(``pyproject.toml`` pins ``kedro~=1.7.0``). tests/unit/test_kedro_runner.py names what changed
when a Kedro release changes any of what this module relies on (:data:`RELIED_ON`):

- ``run(pipeline, catalog, hook_manager, run_id, only_missing_outputs)`` (public) warms the
  catalog up, checks the pipeline's inputs, then times ``self._run`` and logs "Pipeline execution
  completed successfully in X sec." once;
- ``_run(pipeline, catalog, hook_manager, run_id)``, each runner's own (Sequential, Thread,
  Parallel), runs a pipeline's nodes; it calls ``self._release_datasets(node, catalog,
  load_counts, pipeline)`` in the main process once a node's outputs are saved (a
  ParallelRunner's workers included), and ``self._suggest_resume_scenario(pipeline, done_nodes,
  catalog)`` when a node fails.

:func:`partwise` gives the runner the user chose a ``_run`` that hands the whole run to a *drive*,
which runs batches of nodes through that runner's own ``_run`` as it decides them: Kedro's ``run``
around it logs the completion line once, with the run's whole duration. Why the private methods:
no public hook sees a node's end after its outputs are saved in every runner (``after_node_run``
fires before the save, ``after_dataset_saved`` in a worker process). What to run and when is
decided elsewhere (``caching/session.py``): nothing here knows a part, a fingerprint or a stage.

The same signal goes to every hook as the project's one hook spec of its own,
:meth:`OutputsSavedSpec.after_node_outputs_saved`, in every ``kedro run`` of a partwise runner
(with or without a drive): the MLflow hook logs each output from the bytes the run wrote there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.framework.hooks.markers import hook_spec
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner

KEDRO_VERSION = "1.7.0"
# Kedro's methods this module overrides or calls, with their parameters in that version.
RELIED_ON = {
    "run": "(self, pipeline, catalog, hook_manager=None, run_id=None, only_missing_outputs=False)",
    "_run": "(self, pipeline, catalog, hook_manager=None, run_id=None)",
    "_release_datasets": "(node, catalog, load_counts, pipeline)",
    "_suggest_resume_scenario": "(self, pipeline, done_nodes, catalog)",
}

NodeFinished = Callable[[str], None]  # a node's name, once its outputs are saved
RunBatch = Callable[[Pipeline, NodeFinished], None]  # Kedro's runner on some nodes of the run
Drive = Callable[[Pipeline, Any, RunBatch], None]  # (the run's pipeline, its catalog, run_batch)
DriveFor = Callable[[bool], Drive | None]  # only_missing_outputs -> this run's drive; None: Kedro's own


class OutputsSavedSpec:
    """The project's own hook spec, added to Kedro's hook manager by a partwise runner's ``run``
    (Kedro's specs are in ``kedro.framework.hooks.specs``; a hook implements this one with
    ``@hook_impl`` like any of them)."""

    @hook_spec
    def after_node_outputs_saved(self, node: Any, catalog: Any) -> None:
        """``node`` has finished and its outputs are saved: called in the main process under
        every runner (a ParallelRunner's node runs, and saves, in a worker process, where
        ``after_dataset_saved`` fires; Kedro's ``after_node_run`` fires before the save), once
        per node, in the order the nodes finish. ``catalog``: the run's catalog."""


def with_outputs_saved(hook_manager: Any) -> Any:
    """``hook_manager`` (Kedro's, or None) with :class:`OutputsSavedSpec` added once."""
    if hook_manager is not None:
        caller = getattr(hook_manager.hook, "after_node_outputs_saved", None)
        if caller is None or not caller.has_spec():  # a hook may have registered it before the spec
            hook_manager.add_hookspecs(OutputsSavedSpec)
    return hook_manager


def partwise(runner: AbstractRunner, drive_for: DriveFor) -> AbstractRunner:
    """Make ``runner`` hand each run to ``drive_for(only_missing_outputs)``'s drive, and return it.

    The instance keeps its identity and its state (a ParallelRunner's process manager): only its
    class changes, so ``isinstance(runner, ParallelRunner)`` still holds for the session, which
    then builds its shared-memory catalog. The new class has the one base (CPython refuses to
    switch an object to a class with a second base, a mixin: "object layout differs") and
    :class:`_Partwise`'s methods and defaults copied in; it keeps its base's module and name, so
    the runner's repr, which Kedro records in the run's parameters and kedro-viz reads to
    recognise the sequential runner, is unchanged."""
    cls = type(runner)
    if getattr(cls, "_partwise_base", None) is None:
        added = {name: value for name, value in vars(_Partwise).items() if not name.startswith("__")}
        added.update(_partwise_base=cls, __module__=cls.__module__, __qualname__=cls.__qualname__,
                     __doc__=_Partwise.__doc__)
        runner.__class__ = type(cls.__name__, (cls,), added)
    runner._partwise_drive_for = drive_for  # type: ignore[attr-defined]
    return runner


class _Partwise:
    """A Kedro runner whose runs are driven part by part (``_partwise_base``: its own class)."""

    _partwise_base: type[AbstractRunner]
    _partwise_drive_for: DriveFor
    _partwise_drive: Drive | None = None  # the drive of the run in progress
    _partwise_node_finished: NodeFinished | None = None  # the listener of the batch in progress
    _partwise_hooks: Any = None  # the hook manager of the run in progress

    def run(self, pipeline: Pipeline, catalog: Any, hook_manager: Any = None, run_id: str | None = None,
            only_missing_outputs: bool = False) -> dict[str, Any]:
        """Kedro's own ``run`` around :meth:`_run`. A drive decides what must run, so
        ``only_missing_outputs`` is its to follow, not Kedro's filter's."""
        self._partwise_drive = self._partwise_drive_for(only_missing_outputs)
        self._partwise_hooks = with_outputs_saved(hook_manager)
        try:
            return self._partwise_base.run(self, pipeline, catalog, hook_manager, run_id,  # type: ignore[arg-type]
                                           only_missing_outputs and self._partwise_drive is None)
        finally:
            self._partwise_drive = self._partwise_hooks = None

    def _run(self, pipeline: Pipeline, catalog: Any, hook_manager: Any = None, run_id: str | None = None) -> None:
        base, drive = self._partwise_base, self._partwise_drive
        if drive is None:
            base._run(self, pipeline, catalog, hook_manager, run_id)  # type: ignore[arg-type]
            return

        def run_batch(batch: Pipeline, node_finished: NodeFinished) -> None:
            self._partwise_node_finished = node_finished
            try:
                base._run(self, batch, catalog, hook_manager, run_id)  # type: ignore[arg-type]
            finally:
                self._partwise_node_finished = None

        drive(pipeline, catalog, run_batch)

    def _release_datasets(self, node: Any, catalog: Any, load_counts: Any, pipeline: Pipeline) -> None:
        """Kedro's own release, then the batch's listener learns that ``node`` has finished, and
        the hooks that its outputs are saved (:class:`OutputsSavedSpec`)."""
        super(type(self), self)._release_datasets(node, catalog, load_counts, pipeline)  # type: ignore[misc]
        if self._partwise_node_finished is not None:
            self._partwise_node_finished(node.name)
        if self._partwise_hooks is not None:
            self._partwise_hooks.hook.after_node_outputs_saved(node=node, catalog=catalog)

    def _suggest_resume_scenario(self, pipeline: Pipeline, done_nodes: Any, catalog: Any) -> None:
        """Kedro would suggest ``--from-nodes`` for the batch; a drive says how to go on instead
        (the cache: caching/hints.py). Kedro's suggestion stays for a run without a drive."""
        if self._partwise_drive is None:
            super(type(self), self)._suggest_resume_scenario(pipeline, done_nodes, catalog)  # type: ignore[misc]
