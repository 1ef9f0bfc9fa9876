"""``kedro run`` with the cache: the project's KedroSession (``settings.SESSION_CLASS``) hands
the runner the user chose (Sequential, Thread or Parallel) a wrapper that runs the pipeline part
by part, in topological order, and skips the parts that are current.

Why a session and not a hook or Kedro's own ``--only-missing-outputs`` filter: that filter
decides every node before anything runs, from ``exists()`` alone, so it can neither see that an
output is stale nor wait to see whether an upstream rerun changed its output (early cut-off); and
a hook cannot skip a node (``before_node_run`` runs after the inputs are loaded and can only
replace them) nor change the pipeline a runner runs. Here the decision for a part is taken when
every part before it has finished, then Kedro's runner runs the parts that must run, with the
same catalog and hooks: node and dataset hooks fire as usual, the pipeline hooks once per
``kedro run`` (the session calls them), ``ParallelRunner`` still gets its shared-memory catalog
(the wrapper is a subclass of the user's runner class), and ``--only-missing-outputs`` follows
the same rule (a stale output counts as missing).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.framework.session import KedroSession
from kedro.pipeline import Pipeline
from kedro.runner import AbstractRunner, SequentialRunner

if TYPE_CHECKING:  # settings.py imports this module for every kedro command: torch and co. lazily
    from maskdm_pipeline.caching.judge import Decision, Judge
    from maskdm_pipeline.caching.units import Part

logger = logging.getLogger("maskdm_pipeline.caching")
ALL = "all"
RUNS: list[list[Decision]] = []  # the decisions of each `kedro run` of this process, in order


class CachingSession(KedroSession):
    """The project's session: checks ``cache.rerun`` before anything runs and wraps the runner."""

    _cache_params: dict[str, Any] | None = None

    def load_context(self) -> Any:
        from maskdm_pipeline.caching.units import stage_pipelines
        from maskdm_pipeline.params import ParameterError

        context = super().load_context()
        params = context.validated_params  # validated once, as the context was made (project.ProjectContext)
        problem = check_rerun(params.cache.rerun, stage_pipelines())
        if problem:
            raise ParameterError(f"Invalid parameters, nothing was run:\n  - {problem}")
        self._cache_params = params.model_dump(mode="json")
        return context

    def run(self, pipeline_name: str | None = None, pipeline_names: list[str] | None = None,
            tags: Any = None, runner: AbstractRunner | None = None, **kwargs: Any) -> dict[str, Any]:
        runner = caching(runner or SequentialRunner(), self)
        return super().run(pipeline_name=pipeline_name, pipeline_names=pipeline_names, tags=tags, runner=runner,
                           **kwargs)


def check_rerun(rerun: str | None, stages: Iterable[str]) -> str | None:
    """The problem with a ``cache.rerun`` value, or None: a stage name, ``all`` or null."""
    names = sorted(stages)
    if rerun is None or rerun == ALL or rerun in names:
        return None
    return f"cache.rerun={rerun!r}: not a stage; use {ALL} or one of {', '.join(names)}"


def caching(runner: AbstractRunner, session: CachingSession) -> AbstractRunner:
    """Turn ``runner`` into an instance of a subclass of its own class that runs part by part.

    The instance keeps its identity and its state (a ParallelRunner's process manager): only its
    class changes, so ``isinstance(runner, ParallelRunner)`` still holds for the session. The
    subclass has the one base (CPython refuses to switch an object to a class with a second base,
    a mixin: "object layout differs") and :class:`CachingRunner`'s methods copied in; it keeps its
    base's module and name, so the runner's repr, which Kedro records in the run's parameters and
    kedro-viz reads to recognise the sequential runner, is unchanged."""
    cls = type(runner)
    if getattr(cls, "_cache_base", None) is None:
        methods = {name: value for name, value in vars(CachingRunner).items() if callable(value)}
        subclass = type(cls.__name__, (cls,), {**methods, "_cache_base": cls, "__module__": cls.__module__,
                                               "__qualname__": cls.__qualname__, "__doc__": CachingRunner.__doc__})
        runner.__class__ = subclass
    runner._cache_session = session  # type: ignore[attr-defined]
    return runner


class CachingRunner:
    """The methods :func:`caching` adds to a Kedro runner class (``_cache_base``: that class)."""

    _cache_base: type[AbstractRunner]
    _cache_session: CachingSession

    def run(self, pipeline: Pipeline, catalog: Any, hook_manager: Any = None, run_id: str | None = None,
            only_missing_outputs: bool = False) -> dict[str, Any]:
        from maskdm_pipeline.caching.judge import Judge, Upstream, files_read
        from maskdm_pipeline.caching.units import split_parts, stage_pipelines, stages_by_node

        params = self._cache_session._cache_params
        if params is None:  # a session whose load_context was not called: nothing to judge by
            return self._cache_base.run(self, pipeline, catalog, hook_manager, run_id,  # type: ignore[arg-type]
                                        only_missing_outputs)
        if only_missing_outputs:
            logger.info("--only-missing-outputs: an output that is not up to date counts as missing "
                        "(the cache's rule, the same as without the option)")
        for name in pipeline.datasets():
            catalog.get(name, fallback_to_runtime_pattern=True)

        def persistent(name: str) -> bool:
            return name in catalog and not getattr(catalog.get(name), "_EPHEMERAL", False)

        stages = stage_pipelines()
        stage_of = stages_by_node(stages)
        parts = split_parts(pipeline, persistent, stage_of)
        whole = split_parts(sum(stages.values(), Pipeline([])), persistent, stage_of)
        judge = Judge(catalog, params, {out: p for p in whole for out in p.outputs}, files_read())
        upstream = Upstream(judge, frozenset(n.name for n in pipeline.nodes))
        rerun = params["cache"]["rerun"]
        report = _Report(parts)
        decisions: list[Decision] = []
        finished: list[Decision] = []  # the parts that ran and finished in this run, in order
        RUNS.append(decisions)
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
                self._run_parts(runs, judge, catalog, hook_manager, run_id, finished, report)
            done |= {id(p) for p in ready}
            remaining = [p for p in remaining if id(p) not in done]
        report.summary(decisions)
        return {name: catalog[name] for name in pipeline.outputs() if name in catalog}

    def _run_parts(self, runs: list[Decision], judge: Judge, catalog: Any, hook_manager: Any,
                   run_id: str | None, finished: list[Decision], report: _Report) -> None:
        """Kedro's runner on the parts that must run, all in one batch (so a Thread or Parallel
        runner runs independent parts side by side). A part is recorded as soon as its last node
        has finished (:meth:`_release_datasets`), not when the batch ends, so that a kill -9 in a
        long part (fine-tuning) does not lose one that finished beside it (the baseline). On a
        failure, a part whose every output was written during the batch is recorded too (the
        nodes a ParallelRunner finished in its workers after the failure); then the way to go
        on is logged (caching/hints.py). Each recorded part is logged by ``report`` and appended
        to ``finished``."""
        from maskdm_pipeline.caching import records

        left = {id(d): set(d.part.node_names) for d in runs}  # the nodes each part still waits for
        owner = {node.name: d for d in runs for node in d.part.nodes}  # a node is in one part

        def done(decision: Decision) -> None:
            left.pop(id(decision), None)
            judge.record(decision)
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
        batch = Pipeline([node for d in runs for node in d.part.nodes])
        self._cache_node_finished = node_finished
        try:
            self._cache_base.run(self, batch, catalog, hook_manager, run_id)  # type: ignore[arg-type]
        except BaseException as error:
            for d in runs:
                now = [records.touched(p) for p in paths(d)]
                if id(d) in left and all(t is not None and t != b for t, b in zip(now, before[id(d)], strict=True)):
                    done(d)
            _log_hint(error, self._cache_session._cache_params, finished)
            raise
        finally:
            self._cache_node_finished = None
        for d in runs:
            if id(d) in left:  # only if the runner never called _release_datasets (a Kedro that renamed it)
                done(d)

    def _release_datasets(self, node: Any, catalog: Any, load_counts: Any, pipeline: Pipeline) -> None:
        """Kedro's runners call this in the main process once a node has finished and its
        outputs are saved, for all three runners (a ParallelRunner's workers included): the one
        place where a part's end can be seen as it happens. Kedro's own release first, then
        :meth:`_run_parts`'s record of a part whose nodes have all finished. Written on purpose:
        no public hook sees a node's end after its outputs are saved in every runner
        (``after_node_run`` fires before the save, ``after_dataset_saved`` in the worker
        process); tests/pipelines/test_caching.py kills a run to prove it still fires."""
        super(type(self), self)._release_datasets(node, catalog, load_counts, pipeline)  # type: ignore[misc]
        notify = getattr(self, "_cache_node_finished", None)
        if notify is not None:
            notify(node.name)

    def _suggest_resume_scenario(self, pipeline: Pipeline, done_nodes: Any, catalog: Any) -> None:
        """Kedro would suggest ``--from-nodes``; with the cache, :meth:`_run_parts` says how to
        go on instead (caching/hints.py). Kedro's suggestion stays for a run without the cache."""
        if self._cache_session._cache_params is None:
            self._cache_base._suggest_resume_scenario(self, pipeline, done_nodes, catalog)  # type: ignore[arg-type]


def _log_hint(error: BaseException, params: Mapping[str, Any] | None, finished: list[Decision]) -> None:
    """Log how to go on after ``error`` ended the run, where a rerun can (caching/hints.py)."""
    from maskdm_pipeline.caching.hints import go_on_hint

    rerun = (params or {}).get("cache", {}).get("rerun")
    redone = [stage for stage in dict.fromkeys(d.part.stage for d in finished) if rerun in (ALL, stage)]
    hint = go_on_hint(error, rerun, redone, sys.argv)
    if hint:
        logger.warning(hint)


def _when(written: str | None) -> str:
    if not written:
        return "unknown"
    return dt.datetime.fromisoformat(written).astimezone().strftime("%Y-%m-%d %H:%M")


class _Report:
    """The log: one ``<stage>: up to date (fingerprint ..., written ...), skipped`` line for a stage
    whose parts are all current; otherwise a line per part, saying why each one runs."""

    def __init__(self, parts: list[Part]):
        self.parts = Counter(p.stage for p in parts)
        self.pending = Counter(self.parts)
        self.held: dict[str, list[Decision]] = {}
        self.split: set[str] = set()

    def _name(self, part: Part) -> str:
        return part.name(alone=self.parts[part.stage] == 1)

    def _skipped(self, name: str, fingerprint: str, written: str | None) -> None:
        logger.info("%s: up to date (fingerprint %s, written %s), skipped", name, fingerprint[:6], _when(written))

    def decided(self, decision: Decision, stale: Mapping[str, tuple[str, str]]) -> None:
        part, stage = decision.part, decision.part.stage
        self.pending[stage] -= 1
        if stale:
            logger.warning(_stale_warning(self._name(part), stale))
        if not decision.current:
            if stage not in self.split:
                self.split.add(stage)
                for held in self.held.pop(stage, []):
                    self._skipped(self._name(held.part), held.fingerprint, held.written)
            logger.info("%s: runs (%s)", self._name(part), "; ".join(decision.reasons))
        elif stage in self.split:
            self._skipped(self._name(part), decision.fingerprint, decision.written)
        else:
            self.held.setdefault(stage, []).append(decision)
            if not self.pending[stage]:
                held = self.held.pop(stage)
                key = held[0].fingerprint if len(held) == 1 else _combined(held)
                self._skipped(stage, key, max(d.written or "" for d in held) or None)

    def recorded(self, decision: Decision) -> None:
        """A part that ran has finished and its record is written: from here a rerun skips it."""
        logger.info("%s: finished, recorded as up to date (fingerprint %s)", self._name(decision.part),
                    decision.fingerprint[:6])

    def summary(self, decisions: list[Decision]) -> None:
        ran = [self._name(d.part) for d in decisions if not d.current]
        logger.info("Cache: %d of %d parts ran%s, %d up to date", len(ran), len(decisions),
                    f" ({', '.join(ran)})" if ran else "", len(decisions) - len(ran))


def _combined(decisions: list[Decision]) -> str:
    from maskdm_pipeline.fingerprint import fingerprint

    return fingerprint({d.part.label: d.fingerprint for d in decisions})


def _stale_warning(name: str, stale: Mapping[str, tuple[str, str]]) -> str:
    """``sample [maskdm]: input finetuned (finetune would rerun: ...) is out of date, and finetune
    is not part of this run: using it as it is``."""
    items = "; ".join(f"{dataset} ({writer} would rerun: {why})" for dataset, (writer, why) in stale.items())
    writers = sorted({writer for writer, _ in stale.values()})
    many = len(stale) > 1
    return (f"{name}: input{'s' if many else ''} {items} {'are' if many else 'is'} out of date, and "
            f"{' and '.join(writers)} {'are' if len(writers) > 1 else 'is'} not part of this run: using "
            f"{'them as they are' if many else 'it as it is'}")
