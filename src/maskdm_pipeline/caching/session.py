"""``kedro run`` with the cache: the project's KedroSession (``settings.SESSION_CLASS``) has the
runner the user chose (Sequential, Thread or Parallel) run the pipeline part by part, in
topological order, and skip the parts that are current (:func:`run_in_parts`); how it gets into
Kedro's runner is :mod:`~maskdm_pipeline.caching.kedro_runner`'s business alone.

Why a session and not a hook or Kedro's own ``--only-missing-outputs`` filter: that filter
decides every node before anything runs, from ``exists()`` alone, so it can neither see that an
output is stale nor wait to see whether an upstream rerun changed its output (early cut-off); and
a hook cannot skip a node (``before_node_run`` runs after the inputs are loaded and can only
replace them) nor change the pipeline a runner runs. Here the decision for a part is taken when
every part before it has finished, then Kedro's runner runs the parts that must run, with the
same catalog and hooks: node and dataset hooks fire as usual, the pipeline hooks once per
``kedro run`` (the session calls them), ``ParallelRunner`` still gets its shared-memory catalog
(the runner keeps its class, subclassed), and ``--only-missing-outputs`` follows the same rule
(a stale output counts as missing).

The session also takes the project's run lock (:mod:`maskdm_pipeline.runlock`) for the length of
``run``: after the parameters are validated, before the catalog is made and before any pipeline
hook (the removal of killed writes' temporaries, MLflow) or node, so a run refused because
another one is writing touches nothing. Only ``run`` takes it: commands that only read
(``kedro viz``, ``kedro catalog``, a notebook's catalog) never do.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from click import ClickException
from kedro.framework.session import KedroSession
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner, SequentialRunner

from maskdm_pipeline.caching.kedro_runner import Drive, RunBatch, partwise

if TYPE_CHECKING:  # settings.py imports this module for every kedro command: torch and co. lazily
    from maskdm_pipeline.caching.judge import Decision, Judge
    from maskdm_pipeline.caching.report import Report
    from maskdm_pipeline.runlock import RunLock

logger = logging.getLogger("maskdm_pipeline.caching")
ALL = "all"
# The arguments of KedroSession.run that select what runs: part of a multi-node job's identity.
SELECTION = ("pipeline_names", "tags", "node_names", "from_nodes", "to_nodes", "from_inputs", "to_outputs",
             "namespaces")


class ProjectInUse(ClickException):
    """Another run holds the project's run lock (runlock.RunLockHeld's message names it). Exit status
    75, EX_TEMPFAIL of sysexits.h: the same command may work later, which a script can test."""

    exit_code = 75


class CachingSession(KedroSession):
    """The project's session: checks ``cache.rerun`` before anything runs, holds the run lock for
    the length of ``run`` and wraps the runner."""

    _cache_params: dict[str, Any] | None = None
    _run_selection: dict[str, Any] | None = None  # set by run(): the lock is taken once the context is made
    _run_lock: RunLock | None = None

    def load_context(self) -> Any:
        from maskdm_pipeline.caching.units import stage_pipelines
        from maskdm_pipeline.params import ParameterError

        context = super().load_context()
        params = context.validated_params  # validated once, as the context was made (project.ProjectContext)
        problem = check_rerun(params.cache.rerun, stage_pipelines())
        if problem:
            raise ParameterError(f"Invalid parameters, nothing was run:\n  - {problem}")
        self._cache_params = params.model_dump(mode="json")
        if self._run_selection is not None and self._run_lock is None:
            self._run_lock = take_run_lock(Path(self._project_path), run_job(self._cache_params, context.env,
                                                                              self._run_selection))
        return context

    def run(self, pipeline_name: str | None = None, pipeline_names: list[str] | None = None,
            tags: Any = None, runner: AbstractRunner | None = None, **kwargs: Any) -> dict[str, Any]:
        chosen = {"pipeline_names": pipeline_names or ([pipeline_name] if pipeline_name else None), "tags": tags,
                  **kwargs}
        self._run_selection = {key: sorted(value) if isinstance(value, Iterable) and not isinstance(value, str)
                               else value for key in SELECTION if (value := chosen.get(key))}
        runner = partwise(runner or SequentialRunner(), self._drive_for)
        try:
            return super().run(pipeline_name=pipeline_name, pipeline_names=pipeline_names, tags=tags,
                               runner=runner, **kwargs)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None

    def _drive_for(self, only_missing_outputs: bool) -> Drive | None:
        """What runs this ``kedro run``: :func:`run_in_parts` with its parameters; None (Kedro's own
        run) in a session whose ``load_context`` was not called, which has nothing to judge by."""
        if self._cache_params is None:
            return None
        if only_missing_outputs:
            logger.info("--only-missing-outputs: an output that is not up to date counts as missing "
                        "(the cache's rule, the same as without the option)")
        return functools.partial(run_in_parts, self._cache_params, self.session_id)


def run_job(params: Mapping[str, Any], env: str | None, selection: Mapping[str, Any]) -> str | None:
    """The job key of this run in the run lock: what the nodes of one multi-node job share, so
    that they share the lock (``trainer.nnodes > 1`` with a ``trainer.rdzv_endpoint``): the
    endpoint and node count, the environment, what runs (``selection``: pipelines and filters,
    not the parameters, which the nodes compare themselves and name when they differ) and,
    under SLURM, the job id; None (shared with nobody) for a run on one node."""
    trainer = params.get("trainer", {})
    if int(trainer.get("nnodes") or 1) <= 1 or not trainer.get("rdzv_endpoint"):
        return None
    return json.dumps({"rdzv_endpoint": trainer["rdzv_endpoint"], "nnodes": trainer["nnodes"], "env": env,
                       "slurm_job": os.environ.get("SLURM_JOB_ID"), **selection}, sort_keys=True)


def take_run_lock(project: Path, job: str | None) -> RunLock:
    """The project's run lock (``runlock.FOLDER`` under ``project``), or the one-line refusal.

    Raises:
        ProjectInUse: another run holds it (exit status 75).
        ClickException: the lock cannot be read or written.
    """
    from maskdm_pipeline.runlock import FOLDER, RunLock, RunLockError, RunLockHeld

    try:
        return RunLock.acquire(project / FOLDER, job)
    except RunLockHeld as exc:
        raise ProjectInUse(str(exc)) from None
    except RunLockError as exc:
        raise ClickException(f"{exc}; nothing was run.") from None


def check_rerun(rerun: str | None, stages: Iterable[str]) -> str | None:
    """The problem with a ``cache.rerun`` value, or None: a stage name, ``all`` or null."""
    names = sorted(stages)
    if rerun is None or rerun == ALL or rerun in names:
        return None
    return f"cache.rerun={rerun!r}: not a stage; use {ALL} or one of {', '.join(names)}"


def run_in_parts(params: Mapping[str, Any], session_id: str, pipeline: Pipeline, catalog: Any,
                 run_batch: RunBatch) -> None:
    """The cache's ``kedro run`` (a drive, :mod:`~maskdm_pipeline.caching.kedro_runner`): decide
    each part once every part before it has finished, in topological waves, and hand the parts of
    a wave that must run to Kedro's runner in one batch (``run_batch``). The records of the parts
    that ran name ``session_id`` (the Kedro session), which is how the MLflow hook tells a part
    that ran from one that was up to date."""
    from maskdm_pipeline.caching.fit import check_inputs_fit
    from maskdm_pipeline.caching.judge import Judge, Upstream
    from maskdm_pipeline.caching.report import Report
    from maskdm_pipeline.caching.units import (
        split_parts,
        stage_order,
        stage_pipelines,
        stages_by_node,
    )

    def persistent(name: str) -> bool:
        return name in catalog and not getattr(catalog.get(name), "_EPHEMERAL", False)

    stages = stage_pipelines()
    stage_of = stages_by_node(stages)
    parts = split_parts(pipeline, persistent, stage_of)
    whole = split_parts(sum(stages.values(), Pipeline([])), persistent, stage_of)
    judge = Judge(catalog, params, {out: p for p in whole for out in p.outputs})
    upstream = Upstream(judge, frozenset(n.name for n in pipeline.nodes))
    check_inputs_fit(parts, upstream, catalog, stage_order(whole), sys.argv)  # before any part runs
    rerun = params["cache"]["rerun"]
    report = Report(parts, stage_order(whole))
    decisions: list[Decision] = []
    finished: list[Decision] = []  # the parts that ran and finished in this run, in order
    writer = {out: p for p in parts for out in p.outputs}
    remaining, done = list(parts), set()
    while remaining:
        ready = [p for p in remaining if {id(writer[d]) for d in p.inputs if d in writer} <= done]
        runs = []
        for part in ready:
            stale = {name: why for name in part.inputs if (why := upstream.stale(name))}
            decision = judge.decide(part, forced=rerun if rerun in (ALL, part.stage) else None)
            decisions.append(decision)
            report.decided(decision, stale)
            if not decision.current:
                runs.append(decision)
        if runs:
            _run_parts(runs, judge, catalog, run_batch, finished, report, params, session_id)
        done |= {id(p) for p in ready}
        remaining = [p for p in remaining if id(p) not in done]
    report.summary(decisions)


def _run_parts(runs: list[Decision], judge: Judge, catalog: Any, run_batch: RunBatch, finished: list[Decision],
               report: Report, params: Mapping[str, Any], session_id: str) -> None:
    """Kedro's runner on the parts that must run, all in one batch (so a Thread or Parallel
    runner runs independent parts side by side). A part is recorded as soon as its last node
    has finished (``run_batch`` says when each node has), not when the batch ends, so that a
    kill -9 in a long part (fine-tuning) does not lose one that finished beside it (the
    baseline). On a failure, a part whose every output was written during the batch is recorded
    too (the nodes a ParallelRunner finished in its workers after the failure); then the way to
    go on is logged (caching/hints.py). Each recorded part is logged by ``report`` and appended
    to ``finished``."""
    from maskdm_pipeline.caching import records

    left = {id(d): set(d.part.node_names) for d in runs}  # the nodes each part still waits for
    owner = {node.name: d for d in runs for node in d.part.nodes}  # a node is in one part

    def done(decision: Decision) -> None:
        left.pop(id(decision), None)
        judge.record(decision, session_id)
        report.recorded(decision)
        finished.append(decision)

    def node_finished(name: str) -> None:
        waiting = left.get(id(owner[name]))
        if waiting is not None:
            waiting.discard(name)
            if not waiting:
                done(owner[name])

    def paths(decision: Decision) -> list[Path]:
        return [p for name in decision.part.outputs if (p := records.dataset_path(catalog.get(name)))]

    before = {id(d): [records.touched(p) for p in paths(d)] for d in runs}
    try:
        run_batch(Pipeline([node for d in runs for node in d.part.nodes]), node_finished)
    except BaseException as error:
        for d in runs:
            now = [records.touched(p) for p in paths(d)]
            if id(d) in left and all(t is not None and t != b for t, b in zip(now, before[id(d)], strict=True)):
                done(d)
        report.stopped()
        _log_hint(error, params, finished)
        raise
    for d in runs:
        if id(d) in left:  # only if the runner never told that a node finished (a Kedro that changed it)
            done(d)


def _log_hint(error: BaseException, params: Mapping[str, Any] | None, finished: list[Decision]) -> None:
    """Log how to go on after ``error`` ended the run, where a rerun can (caching/hints.py)."""
    from maskdm_pipeline.caching.hints import go_on_hint

    rerun = (params or {}).get("cache", {}).get("rerun")
    redone = [stage for stage in dict.fromkeys(d.part.stage for d in finished) if rerun in (ALL, stage)]
    hint = go_on_hint(error, rerun, redone, sys.argv)
    if hint:
        logger.warning(hint)


