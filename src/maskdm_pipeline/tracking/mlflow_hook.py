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
from maskdm_pipeline.dotted import flatten
from maskdm_pipeline.tracking import mlflow_store
from maskdm_pipeline.tracking.settings import MlflowSettings, read_settings

logger = logging.getLogger(__name__)


class MlflowTrackingHook:
    """One MLflow run per ``kedro run``, under every Kedro runner: the flattened parameters and
    the settings the outputs record (parameters), metric histories, time accounting and quality
    metrics (metrics; which is which: ``tracking.split_values``), report files (artifacts), the
    training split (a dataset input), each trained model (a logged model, unless
    ``tracking.log_models`` is false), the fingerprint records of the outputs (one artifact) and
    what the cache did for each stage (tags); every MLflow failure is a warning, never an error.

    Everything goes through an ``MlflowClient`` and the run's id, never MLflow's fluent API,
    whose active run is per thread (a ``ThreadRunner`` node saw none) and per process (a
    ``ParallelRunner`` worker has none). What a run produced is read back from the catalog's
    files in the main process once saved: node by node (``after_node_outputs_saved``, the
    project's hook spec, called by the runner seam caching/kedro_runner.py; Kedro's own
    ``after_node_run`` comes before the save and would read what the previous run left), and at
    the end for the outputs not logged yet (those of stages that were up to date, as they are).
    A failed run logs the outputs written since it started. The store's recorded folder of the
    experiment follows the project as it is now (``mlflow_store.follow_artifact_location``).

    Several nodes (``trainer.nnodes > 1``): only the node that holds global rank 0 opens a run,
    late: the c10d rendezvous ranks the nodes inside the first training node, which writes this
    node's ``node_rank`` into its ``<stage>_accounting`` output (or a failed training's error
    carries it: ``training.distributed.node_rank_of``); that node then logs every output so far
    (all is read back from files). Opening a run on every node and deleting the extra ones would
    race in a shared store and leave half-logged runs when a node dies. A command without a
    training stage takes ``SLURM_NODEID`` or ``NODE_RANK``, or is not tracked (said once).
    """

    def __init__(self) -> None:
        self._catalog: Any = None
        self._settings = MlflowSettings()
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
        self._run: Any = None  # the MLflow run (its experiment, for the logged models)
        self._parameters: Any = {}  # the run's parameters (which image set a stage trains on)
        self._link: tuple[str, str | None, str | None] | None = None  # (model id, dataset, digest) of a node
        self._models_on = True

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        from kedro.config import MissingConfigException

        try:
            config = context.config_loader["mlflow"]
        except MissingConfigException:  # no mlflow.yml in this environment: track with defaults
            config = {}  # (one that is not YAML stops the command with one line: configuration.py)
        self._settings = read_settings(config)  # a misspelt key stops the command in one line
        self._nnodes = context.validated_params.trainer.nnodes
        self._models_on = self._settings.tracking.log_models

    def _tracking_uri(self) -> str:
        return mlflow_store.tracking_uri(self._settings.server.mlflow_tracking_uri, self._project_path)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        names = run_params.get("pipeline_names") or ["__default__"]
        off = set(names) & set(self._settings.tracking.disable_tracking.pipelines)
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
        name = self._settings.tracking.experiment.name
        experiment = client.get_experiment_by_name(name)
        wanted = mlflow_store.artifact_location(self._settings.tracking.experiment.artifact_location,
                                                self._project_path, name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(name, artifact_location=wanted,
                                                         tags={tracking.EXPERIMENT_KIND_TAG: tracking.EXPERIMENT_KIND})
            except MlflowException:  # created meanwhile by another run
                experiment_id = client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if tracking.EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the project set it
                client.set_experiment_tag(experiment_id, tracking.EXPERIMENT_KIND_TAG, tracking.EXPERIMENT_KIND)
            moved = mlflow_store.follow_artifact_location(self._tracking_uri(), experiment_id,
                                                          experiment.artifact_location, wanted)
            if moved is not None:
                logger.info("MLflow: the store kept experiment %r's files in %s (recorded by another copy of this "
                            "project, or by an earlier tracking.experiment.artifact_location); this project keeps "
                            "them in %s, and the store now says so (%d earlier runs and models too).", name,
                            experiment.artifact_location, wanted, moved)
        parameters = self._parameters = catalog.load("parameters")
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
        self._client, self._run_id, self._run = client, run.info.run_id, run
        self._log_params({k: str(v)[:tracking.PARAM_VALUE_LIMIT] for k, v in flatten(parameters).items()})
        # MLflow 3.17's UI opens every experiment in its GenAI view unless told otherwise (its
        # "GenAI / Model training" switch, remembered by the browser, or this URL parameter).
        logger.info("MLflow run %s (%s) in %s; browse it with `mlflow ui --backend-store-uri %s` at "
                    "http://127.0.0.1:5000/#/experiments/%s/runs/%s?workflowType=machine_learning (mlflow ui's "
                    "default address; another --host or --port changes its start)", self._run_id,
                    run.info.run_name, self._tracking_uri(), self._tracking_uri(), experiment_id, self._run_id)

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        """Several nodes: a training node's outputs say this node's rank (before they are saved;
        what is logged waits for :meth:`after_node_outputs_saved`)."""
        if os.getpid() == self._pid and self._pending is not None:  # a ParallelRunner worker has none
            self._open_if_rank_zero(_written_node_rank(outputs))

    @hook_impl
    def after_node_outputs_saved(self, node: Any, catalog: Any) -> None:
        """The project's hook spec (caching/kedro_runner.py): ``node``'s outputs are on disk, as
        this run wrote them; called in the main process under every runner."""
        self._link = None
        self._safely(self._log_models, sorted(node.outputs), False, True)  # first: the metrics name the model
        self._safely(self._log_outputs, sorted(node.outputs))
        self._link = None

    @hook_impl
    def after_pipeline_run(self, pipeline: Any) -> None:
        self._open_if_rank_zero(None, finished=True)
        self._close(pipeline, "FINISHED")

    @hook_impl
    def on_pipeline_error(self, error: BaseException, pipeline: Any) -> None:
        if self._pending is not None:
            from maskdm_pipeline.training.distributed import node_rank_of

            self._open_if_rank_zero(node_rank_of(error), finished=True, failed=True)
        self._close(pipeline, "FAILED", self._started_ns)

    def _close(self, pipeline: Any, status: str, written_since_ns: int | None = None) -> None:
        """Log what is left (outputs not logged yet, the models this run wrote, the image sets,
        the cache), then end the run with ``status``."""
        if self._run_id is None:  # not tracked (switched off, another node's, or failed: warned)
            return
        outputs = sorted(pipeline.all_outputs())
        self._safely(self._log_outputs, outputs, written_since_ns)
        self._safely(self._log_models, outputs, True)
        self._safely(self._log_datasets, sorted(pipeline.datasets()))
        self._safely(self._log_cache, outputs)
        self._safely(self._end, status)

    def _log_cache(self, names: list[str]) -> None:
        """The fingerprint records of the outputs (read from beside them: those this session wrote
        ran), as one artifact, and what the cache did for each stage, as tags of the run."""
        from mlflow.entities import RunTag

        from maskdm_pipeline import caching

        records = caching.read_fingerprints(self._catalog, names)
        if records:
            self._client.log_dict(self._run_id, tracking.fingerprints_document(records, self._session_id),
                                  tracking.FINGERPRINTS_ARTIFACT)
        tags = tracking.cache_tags(records, self._session_id)
        self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())])

    def _log_datasets(self, names: list[str]) -> None:
        """The image sets of :data:`tracking.DATASET_INPUTS` among ``names`` (the run's
        datasets) as dataset inputs of the run."""
        for name in names:
            if name in tracking.DATASET_INPUTS and (spec := self._image_set(name)):
                mlflow_store.log_dataset_input(self._client, self._run_id, spec)

    def _image_set(self, name: str) -> dict[str, Any] | None:
        folder = self._filepath(name) if name in self._catalog else None
        card = self._filepath("dataset_card") if "dataset_card" in self._catalog else None
        return None if folder is None else mlflow_store.image_set(name, folder, card, self._shown)

    def _log_models(self, names: list[str], only_this_session: bool = False, link: bool = False) -> None:
        """Each trained model among ``names`` (a ``TorchCheckpointDataset``: a stage's final
        checkpoint) as a logged model of the run (``mlflow_store.log_model``), once, unless
        ``tracking.log_models`` is false. ``only_this_session``: only those whose fingerprint
        record says this run wrote them (at the end of a run: a model skipped as up to date
        belongs to the run that trained it). ``link`` (``names``: one node's outputs): the
        metrics of the node's other outputs (its history and accounting) will name the model
        and the image set it trained on, which MLflow shows on the model's page."""
        from maskdm_pipeline import caching
        from maskdm_pipeline.datasets.checkpoint import TorchCheckpointDataset

        if not self._models_on:
            return
        for name in names:
            key = f"model:{name}"
            if key in self._logged or not isinstance(self._catalog.get(name), TorchCheckpointDataset):
                continue
            if only_this_session:
                record = caching.read_fingerprints(self._catalog, [name]).get(name) or {}
                if not self._session_id or record.get("session_id") != self._session_id:
                    continue
            path = self._filepath(name)
            if path is None or not path.is_file():
                continue
            self._logged.add(key)
            model_id = mlflow_store.log_checkpoint_model(self._client, self._run, name, self._catalog.get(name),
                                                         self._shown(path))
            stages = [n.rpartition("_")[0] for n in names if tracking.is_accounting(n)]
            if link and model_id and stages:
                spec = self._image_set(tracking.training_set(stages[0], self._parameters)) or {}
                self._link = (model_id, spec.get("name"), spec.get("digest"))

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
                model_id, dataset, digest = self._link or (None, None, None)  # the model the node trained
                for start in range(0, len(rows), 1000):
                    self._client.log_batch(self._run_id, metrics=[
                        Metric(k, v, now, step, model_id=model_id, dataset_name=dataset, dataset_digest=digest)
                        for k, v, step in rows[start : start + 1000]])
                self._log_params(tracking.params_of(name, data))
            if tracking.is_artifact(name):
                self._client.log_artifact(self._run_id, str(path), artifact_path="reports")

    def _filepath(self, name: str) -> Path | None:
        return dataset_path(self._catalog.get(name)) if self._catalog is not None else None

    def _shown(self, path: Path) -> str:
        """``path`` relative to the project root when it is inside it (links not followed: a data
        folder on another disk is still shown as the project's ``data/...``)."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self._project_path)).as_posix()
        except ValueError:
            return str(path)


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
