"""Project hooks: refuse bad parameters before any node runs; release a training stage's resume
slot once its final checkpoint is saved; track every run in MLflow.

Tracking is best-effort by design: if the MLflow store is locked, unreachable or misconfigured,
the hook warns once, stops talking to MLflow for the rest of the run and the pipeline goes on,
so an overnight training run is never lost to a logging failure. That is why the project logs
through this hook (configured by ``conf/*/mlflow.yml``) rather than the kedro-mlflow plugin,
whose hooks stop the whole run when the store cannot be reached.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from maskdm_pipeline import tracking
from maskdm_pipeline.tracking import flatten

logger = logging.getLogger(__name__)


class ValidateParametersHook:
    """Checks the whole merged parameter tree (conf + ``--params``) against the schema in
    :mod:`maskdm_pipeline.params` and stops the run with a message naming each parameter.

    It runs as soon as the context exists: before the catalog is built, which is when Kedro's
    own validation of the typed ``params:`` inputs runs (for the selected pipelines only, and
    ending in a traceback), and before any node.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        from maskdm_pipeline.params import validate_parameters

        loader = context.config_loader
        validate_parameters(loader["parameters"], runtime_params=loader.runtime_params)


class CheckpointSlotHook:
    """Owns the life of each training stage's resume slot (``<stage>_resume`` in the catalog).

    The engine writes the finished state to the slot as well as returning it (training/loop.py),
    so that if the catalog cannot save the final checkpoint (a full disk), the finished state is
    still on disk and a rerun saves it without training again (README, "Disk full at the final
    save"). Once the final checkpoint is saved, the slot is cleared, so that the next run of the
    stage starts afresh instead of "resuming" a finished run with new settings. The node that
    loaded a slot and saved a ``maskdm-checkpoint/1`` output is the link, so the resume path is
    declared once, in the slot's catalog entry.
    """

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}  # node name -> the CheckpointSlot it loaded
        self._saving: dict[str, Any] = {}  # final saves started, not yet finished

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        # Imported here: settings.py imports this module for every kedro command, torch is heavy.
        from maskdm_pipeline.datasets.checkpoint import CheckpointSlot

        if isinstance(data, CheckpointSlot):
            self._slots[node.name] = data

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        from maskdm_pipeline.fileio import is_checkpoint

        if node.name in self._slots and is_checkpoint(data):
            self._saving[node.name] = self._slots[node.name]

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        slot = self._saving.pop(node.name, None)
        if slot is not None:
            slot.clear()
            self._slots.pop(node.name, None)

    @hook_impl
    def on_pipeline_error(self, error: BaseException) -> None:
        """A final save that failed: say where the finished state is and how to recover."""
        for slot in self._saving.values():
            if slot.exists() and hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(
                    f"The finished training state is still in {slot.path} (it is deleted only "
                    "after the final checkpoint is written): free some space or fix the folder, "
                    "then rerun the same command; it saves without training again."
                )
        self._saving.clear()


# Saved outputs whose files are worth keeping with the run.
_ARTIFACT_SUFFIXES = ("_history", "_accounting", "sample_grid", "metrics", "dataset_card", "report_markdown",
                      "report_curves", "report_samples")
_MLFLOW_PARAM_LIMIT = 6000  # characters MLflow stores per parameter value


class MlflowTrackingHook:
    """One MLflow run per ``kedro run``: flattened parameters, metric histories, time accounting,
    quality metrics and report files; every MLflow failure is a warning, never an error."""

    def __init__(self) -> None:
        self._catalog: Any = None
        self._config: dict[str, Any] = {}
        self._project_path = Path.cwd()
        self._active = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project_path = Path(context.project_path)
        try:
            self._config = dict(context.config_loader["mlflow"])
        except Exception:  # noqa: BLE001 - no mlflow.yml in this environment: track with defaults
            self._config = {}

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    def _tracking_uri(self) -> str:
        """``sqlite:///mlflow.db`` is relative to the project root, wherever Kedro is started from
        (a notebook in notebooks/ must not create a second store there)."""
        uri = (self._config.get("server") or {}).get("mlflow_tracking_uri") or "sqlite:///mlflow.db"
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            uri = prefix + str(self._project_path / uri[len(prefix):])
        return uri

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        tracking_cfg = self._config.get("tracking") or {}
        names = run_params.get("pipeline_names") or ["__default__"]
        if set(names) & set((tracking_cfg.get("disable_tracking") or {}).get("pipelines") or []):
            return
        # Fail fast instead of retrying for minutes when a tracking server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._active = True
        self._safely(self._start, names, run_params, catalog)

    def _start(self, mlflow: Any, names: list[str], run_params: dict[str, Any], catalog: Any) -> None:
        mlflow.set_tracking_uri(self._tracking_uri())
        experiment = ((self._config.get("tracking") or {}).get("experiment") or {}).get("name") or "maskdm_pipeline"
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=",".join(names), tags={
            "kedro.env": str(run_params.get("env") or "local"),
            "kedro.pipelines": ",".join(names),
            "kedro.session_id": str(run_params.get("session_id") or run_params.get("run_id") or ""),
        })
        params = {k: str(v)[:_MLFLOW_PARAM_LIMIT] for k, v in flatten(catalog.load("parameters")).items()}
        items = sorted(params.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))
        logger.info("MLflow run %s in %s", mlflow.active_run().info.run_id, self._tracking_uri())

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        self._safely(self._log, dataset_name, data)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._safely(lambda mlflow: mlflow.end_run("FINISHED"))
        self._active = False

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._safely(lambda mlflow: mlflow.end_run("FAILED"))
        self._active = False

    def _safely(self, action: Any, *args: Any) -> None:
        if not self._active:
            return
        try:
            import mlflow

            action(mlflow, *args)
        except Exception as exc:  # noqa: BLE001 - tracking must never cost the user their results
            self._active = False
            logger.warning("MLflow logging failed (%s: %s); MLflow tracking is off for the rest of this run. "
                           "The pipeline goes on and every output is still written under data/.",
                           type(exc).__name__, exc)

    def _log(self, mlflow: Any, name: str, data: Any) -> None:
        from mlflow.entities import Metric

        if mlflow.active_run() is None:
            return
        stage = name.split("_")[0]
        if name.endswith("_history"):
            rows = tracking.history_metrics(stage, data)
            client, run_id = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id
            for start in range(0, len(rows), 1000):
                client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, v, s in rows[start : start + 1000]])
        elif name.endswith("_accounting"):
            mlflow.log_metrics(tracking.accounting_metrics(stage, data))
        elif name == "metrics":
            mlflow.log_metrics(tracking.quality_metrics(data))
        if name.endswith(_ARTIFACT_SUFFIXES):
            path = self._filepath(name)
            if path is not None and path.is_file():
                mlflow.log_artifact(str(path), artifact_path="reports")

    def _filepath(self, name: str) -> Path | None:
        if self._catalog is None:
            return None
        filepath = getattr(self._catalog.get(name), "_filepath", None)
        return Path(str(filepath)) if filepath is not None else None
