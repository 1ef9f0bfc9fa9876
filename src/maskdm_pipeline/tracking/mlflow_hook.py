"""The project's MLflow hook: one MLflow run per ``kedro run``, and the code-version tags.

Tracking is best-effort by design: if the MLflow store is locked, unreachable or misconfigured,
the hook warns once, stops talking to MLflow for the rest of the run and the pipeline goes on,
so an overnight training run is never lost to a logging failure. That is why the project logs
through this hook (configured by ``conf/*/mlflow.yml``) rather than the kedro-mlflow plugin,
whose hooks stop the whole run when the store cannot be reached. What is logged is decided in
:mod:`maskdm_pipeline.tracking.logged` (pure); this module decides when, and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from maskdm_pipeline import tracking
from maskdm_pipeline.caching.records import dataset_path
from maskdm_pipeline.tracking import flatten

logger = logging.getLogger(__name__)


class MlflowTrackingHook:
    """One MLflow run per ``kedro run``, under every Kedro runner: the flattened parameters and
    the settings the outputs record (parameters), metric histories, time accounting and quality
    metrics (metrics; which is which: ``tracking.split_values``), report files (artifacts) and
    the cache's fingerprints and decisions (tags); every MLflow failure is a warning, never an
    error.

    Everything goes through an ``MlflowClient`` and the run's id, never MLflow's fluent API,
    whose active run is per thread (a ``ThreadRunner`` node saw none) and per process (a
    ``ParallelRunner`` worker has none). What a run produced is read back from the catalog's
    files in the main process: after each node there (Sequential and Thread runners: results
    appear stage by stage), and at the end for every output of the pipeline not yet logged
    (ParallelRunner's nodes run in other processes; a node skipped because its outputs were
    current still gets its current values logged). A failed run logs the outputs written since
    it started.

    Several nodes (``trainer.nnodes > 1``): only the node that holds global rank 0 opens a run.
    Which node that is, the c10d rendezvous decides, inside the first training node (it ranks
    the nodes as they join; nobody types a node rank, as with torchrun). So on several nodes
    the run is opened late: after the first training node, on the node whose workers got rank 0
    (the ``node_rank`` the node writes into its ``<stage>_accounting`` output, or the one a
    failed training's error carries: ``training.distributed.node_rank_of``), which then logs
    every output so far, since everything is read back from files anyway; the other nodes
    never open one. Opening a run on every node and deleting the extra ones later would race in
    a shared store and leave half-logged runs behind when a node dies. A command without a
    training stage cannot know its node rank: there ``SLURM_NODEID`` or ``NODE_RANK`` decides,
    or the run is not tracked (said once).
    """

    def __init__(self) -> None:
        self._catalog: Any = None
        self._config: dict[str, Any] = {}
        self._project_path = Path.cwd()
        self._client: Any = None
        self._run_id: str | None = None
        self._started_ns = 0
        self._pid = os.getpid()
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._nnodes = 1
        self._pending: tuple[Any, ...] | None = None  # a run to open once this node knows its rank
        self._session_id = ""  # Kedro's session id: the cache's records say which run wrote them

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        try:
            self._config = dict(context.config_loader["mlflow"])
        except Exception:  # noqa: BLE001 - no mlflow.yml in this environment: track with defaults
            self._config = {}
        self._nnodes = context.validated_params.trainer.nnodes

    def _tracking_uri(self) -> str:
        """``sqlite:///mlflow.db`` is relative to the project root, wherever Kedro is started from
        (a notebook in notebooks/ must not create a second store there)."""
        uri = (self._config.get("server") or {}).get("mlflow_tracking_uri") or "sqlite:///mlflow.db"
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + str(self._project_path / uri[len(prefix):])
        return uri

    def _experiment(self) -> dict[str, Any]:
        return (self._config.get("tracking") or {}).get("experiment") or {}

    def _artifact_location(self, experiment: str) -> str:
        """Where a new experiment keeps its files: ``mlruns/<experiment>`` under the project root
        unless ``tracking.experiment.artifact_location`` names another folder (relative: to the
        root; MLflow would take its default relative to the working directory) or a URI."""
        location = str(self._experiment().get("artifact_location") or "mlruns")
        if "://" in location:
            return f"{location.rstrip('/')}/{experiment}"
        path = Path(location).expanduser()
        folder = path if path.is_absolute() else self._project_path / path
        return (folder / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        tracking_cfg = self._config.get("tracking") or {}
        names = run_params.get("pipeline_names") or ["__default__"]
        off = set(names) & set((tracking_cfg.get("disable_tracking") or {}).get("pipelines") or [])
        if off:
            logger.info("MLflow tracking is off for this run: tracking.disable_tracking.pipelines lists %s "
                        "(conf/*/mlflow.yml).", ", ".join(sorted(off)))
            return
        missing = _mlflow_import_error()
        if missing is not None:
            logger.warning("MLflow cannot be imported (%s): this run is not tracked. The pipeline goes on and every "
                           "output is still written under data/; `pip install mlflow` to track runs.", missing)
            return
        # Fail fast instead of retrying for minutes when a tracking server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._catalog, self._pid, self._logged = catalog, os.getpid(), set()
        self._session_id = str(run_params.get("session_id") or run_params.get("run_id") or "")
        self._started_ns = time.time_ns()
        if self._nnodes > 1:
            self._pending = (names, run_params, catalog)
            logger.info("trainer.nnodes=%d: the node that gets global rank 0 at the training rendezvous opens "
                        "the MLflow run of this job; the other nodes do not track it.", self._nnodes)
            return
        self._guarded(self._start, names, run_params, catalog)

    def _open_if_rank_zero(self, rank: int | None, finished: bool = False, failed: bool = False) -> None:
        """Several nodes: open the deferred run once this node knows it holds global rank 0
        (``rank``: this node's rank, when a training node has just told it)."""
        if self._pending is None:
            return
        if rank is None and failed:  # it failed before its rank was known: nothing to track
            self._pending = None
            return
        if rank is None and finished:  # no training stage ran: what the scheduler says, if anything
            found = next((os.environ[k] for k in ("SLURM_NODEID", "NODE_RANK") if k in os.environ), None)
            rank = None if found is None else int(found)
            if rank is None:
                logger.warning("trainer.nnodes=%d but no training stage ran in this command, so this node does "
                               "not know its node rank: MLflow tracking is off for it (set NODE_RANK, or run "
                               "the stages after training with trainer.nnodes=1 on one node).", self._nnodes)
                self._pending = None
                return
        if rank is None:
            return
        pending, self._pending = self._pending, None
        if rank == 0:
            self._guarded(self._start, *pending)
        else:
            logger.info("This node has node rank %d; the node with global rank 0 tracks the job in MLflow.", rank)

    def _start(self, names: list[str], run_params: dict[str, Any], catalog: Any) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self._tracking_uri())
        name = self._experiment().get("name") or "maskdm_pipeline"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                         tags={tracking.EXPERIMENT_KIND_TAG: tracking.EXPERIMENT_KIND})
            except MlflowException:  # created meanwhile by another run
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if tracking.EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the project set it
                client.set_experiment_tag(experiment_id, tracking.EXPERIMENT_KIND_TAG, tracking.EXPERIMENT_KIND)
        parameters = catalog.load("parameters")
        env = str(run_params.get("env") or "local")
        runner = _class_name(str(run_params.get("runner") or "SequentialRunner"))
        run = client.create_run(experiment_id, run_name=tracking.run_name(
            names, env, parameters, run_params.get("runtime_params"), runner), tags={
            "kedro.env": env,
            "kedro.pipelines": ",".join(names),
            "kedro.runner": runner,
            "kedro.session_id": self._session_id,
            # What MLflow's UI shows as the run's source, beside the git commit.
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": f"kedro run --env {env} --pipelines {','.join(names)}",
            **code_version(self._project_path),
        })
        self._client, self._run_id = client, run.info.run_id
        self._log_params({k: str(v)[:tracking.PARAM_VALUE_LIMIT] for k, v in flatten(parameters).items()})
        # MLflow 3.17's UI opens every experiment in its GenAI view unless told otherwise (its
        # "GenAI / Model training" switch, remembered by the browser, or this URL parameter).
        logger.info("MLflow run %s (%s) in %s; browse it with `mlflow ui --backend-store-uri %s` at "
                    "http://127.0.0.1:5000/#/experiments/%s/runs/%s?workflowType=machine_learning (mlflow ui's "
                    "default address; another --host or --port changes its start)", self._run_id,
                    run.info.run_name, self._tracking_uri(), self._tracking_uri(), experiment_id, self._run_id)

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        if os.getpid() == self._pid:  # a ParallelRunner worker leaves it to the main process
            if self._pending is not None:
                self._open_if_rank_zero(_written_node_rank(outputs))
            self._safely(self._log_outputs, node.outputs)

    @hook_impl
    def after_pipeline_run(self, pipeline: Any) -> None:
        self._open_if_rank_zero(None, finished=True)
        self._safely(self._log_outputs, sorted(pipeline.all_outputs()))
        self._safely(self._log_cache, sorted(pipeline.all_outputs()))
        self._safely(self._end, "FINISHED")

    def _log_cache(self, names: list[str]) -> None:
        """The fingerprint of each output and what the cache did for each part (read from the
        records beside the outputs: those this session wrote ran), as tags of the run."""
        from mlflow.entities import RunTag

        from maskdm_pipeline import caching

        tags = tracking.cache_tags(caching.read_fingerprints(self._catalog, names), self._session_id)
        items = sorted(tags.items())
        for start in range(0, len(items), 100):
            self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in items[start : start + 100]])

    @hook_impl
    def on_pipeline_error(self, error: BaseException, pipeline: Any) -> None:
        if self._pending is not None:
            from maskdm_pipeline.training.distributed import node_rank_of

            self._open_if_rank_zero(node_rank_of(error), finished=True, failed=True)
        self._safely(self._log_outputs, sorted(pipeline.all_outputs()), self._started_ns)
        self._safely(self._end, "FAILED")

    def _end(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status)
        self._run_id = None

    def _safely(self, action: Any, *args: Any) -> None:
        if self._run_id is not None:  # None: disabled in mlflow.yml (said at the start) or failed (warned)
            self._guarded(action, *args)

    def _guarded(self, action: Any, *args: Any) -> None:
        try:
            with self._lock:  # ThreadRunner's nodes finish in several threads
                action(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never cost the user their results
            run_id, self._run_id = self._run_id, None
            logger.warning("MLflow logging failed (%s: %s); MLflow tracking is off for the rest of this run. "
                           "The pipeline goes on and every output is still written under data/.",
                           type(exc).__name__, exc)
            try:  # a run left RUNNING would claim it is still going: mark it as failed if the store lets us
                self._client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the store is what failed; the warning above says so
                pass

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = sorted(params.items())
        for start in range(0, len(items), 100):  # MLflow takes 100 parameters per call at most
            self._client.log_batch(self._run_id, params=[Param(k, v) for k, v in items[start : start + 100]])

    def _log_outputs(self, names: list[str], written_since_ns: int | None = None) -> None:
        """Log each tracked dataset among ``names`` once, read back from its file: its
        measurements as metrics, its settings as parameters (tracking.split_values), the file
        itself as an artifact."""
        from mlflow.entities import Metric

        for name in names:
            if name in self._logged or not tracking.is_tracked(name):
                continue
            path = self._filepath(name)
            if path is None or not path.is_file():
                continue
            if written_since_ns is not None and path.stat().st_mtime_ns < written_since_ns:
                continue  # a failed run: only what it wrote itself
            self._logged.add(name)
            now = int(time.time() * 1000)
            if tracking.has_metrics(name):
                # The dataset itself, not catalog.load: no "Loading data from ..." line per logged file.
                data = self._catalog.get(name).load()
                rows = tracking.metrics_of(name, data)
                for start in range(0, len(rows), 1000):
                    self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, step)
                                                                  for k, v, step in rows[start : start + 1000]])
                self._log_params(tracking.params_of(name, data))
            if tracking.is_artifact(name):
                self._client.log_artifact(self._run_id, str(path), artifact_path="reports")

    def _filepath(self, name: str) -> Path | None:
        return dataset_path(self._catalog.get(name)) if self._catalog is not None else None


def _mlflow_import_error() -> str | None:
    """None when MLflow imports, else why not (it is an optional part of a run: a GPU machine
    without a package index may lack it, benchmarks/README.md "GPU")."""
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def _written_node_rank(outputs: Mapping[str, Any]) -> int | None:
    """The node rank a training node wrote into its ``<stage>_accounting`` output (train_stage),
    or None when ``outputs`` hold none."""
    from maskdm_pipeline.training.distributed import NODE_RANK

    ranks = [data[NODE_RANK] for name, data in outputs.items() if tracking.is_accounting(name)
             and isinstance(data, Mapping) and isinstance(data.get(NODE_RANK), int)]
    return ranks[0] if ranks else None


def _class_name(runner: str) -> str:
    """``<kedro.runner.thread_runner.ThreadRunner object at 0x...>`` -> ``ThreadRunner`` (Kedro
    records the runner instance's ``str`` in the run parameters)."""
    match = re.search(r"(\w+) object at 0x", runner)
    return match.group(1) if match else runner


def code_version(root: Path) -> dict[str, str]:
    """Tags that say which code ran: the package version, and the git commit (MLflow's own
    ``mlflow.source.git.commit``, shown in its UI) with whether the work tree had changes,
    when the project is a git checkout."""
    from maskdm_pipeline import __version__

    tags = {"maskdm.version": __version__}
    git = shutil.which("git")
    if git is None:
        return tags
    try:
        commit = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return tags
        changes = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return tags
    tags["mlflow.source.git.commit"] = commit.stdout.strip()
    tags["maskdm.git.dirty"] = "true" if changes.stdout.strip() else "false"
    return tags
