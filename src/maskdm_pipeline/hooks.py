"""Project hooks: refuse bad parameters before any node runs; send results to MLflow.

kedro-mlflow (configured in ``conf/base/mlflow.yml``) opens one MLflow run per ``kedro run``
and logs the flattened parameters. :class:`MlflowResultsHook` adds what kedro-mlflow cannot
know: loss and throughput histories as metric series, time accounting, the quality metrics,
and the reports and sample grids as artifacts. Tracking is best-effort by design: if the
MLflow store is locked or unreachable, it warns and the pipeline goes on, so an overnight
training run is never lost to a logging failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from maskdm_pipeline import tracking
from maskdm_pipeline.validation import validate_parameters

logger = logging.getLogger(__name__)


class ValidateParametersHook:
    """Checks the merged parameters (conf + ``--params``) against the schema in
    :mod:`maskdm_pipeline.validation` and stops the run with a message naming the parameter."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        params = catalog.load("parameters")
        runtime = run_params.get("runtime_params") or {}
        validate_parameters(params, runtime_params=runtime)


# Saved outputs whose files are worth keeping with the run.
_ARTIFACT_SUFFIXES = ("_history", "_accounting", "sample_grid", "metrics", "dataset_card", "report_markdown",
                      "report_curves", "report_samples")


class MlflowResultsHook:
    """Logs metric series and artifacts to the active MLflow run, never failing the pipeline."""

    def __init__(self) -> None:
        self._catalog: Any = None
        self._warned = False

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        try:
            import mlflow

            if mlflow.active_run() is None:
                return
            self._log(mlflow, dataset_name, data)
        except Exception as exc:  # noqa: BLE001 - tracking must never cost the user their results
            if not self._warned:
                logger.warning("MLflow logging failed (%s: %s); the pipeline goes on and every output "
                               "is still written under data/.", type(exc).__name__, exc)
                self._warned = True

    def _log(self, mlflow: Any, name: str, data: Any) -> None:
        from mlflow.entities import Metric

        stage = name.split("_")[0]
        if name.endswith("_history"):
            rows = tracking.history_metrics(stage, data)
            client, run_id = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id
            for start in range(0, len(rows), 1000):
                batch = [Metric(k, v, 0, s) for k, v, s in rows[start : start + 1000]]
                client.log_batch(run_id, metrics=batch)
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
        dataset = self._catalog.get(name)
        filepath = getattr(dataset, "_filepath", None)
        return Path(str(filepath)) if filepath is not None else None
