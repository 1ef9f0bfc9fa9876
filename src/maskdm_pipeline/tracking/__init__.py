"""MLflow tracking: what a run logs, and when.

- :mod:`~maskdm_pipeline.tracking.logged`: what goes to MLflow, as pure functions of the
  parameters and the saved outputs (no Kedro, no MLflow import), and the one dotted-name
  flattener; its public names are re-exported here (``from maskdm_pipeline.tracking import
  flatten``);
- :mod:`~maskdm_pipeline.tracking.mlflow_hook`: ``MlflowTrackingHook`` (``settings.HOOKS``),
  which sends it to the run, best-effort, under every runner; ``code_version``.

This package's ``__init__`` imports the pure half only: the hook stands on the wiring floor
(docs/architecture.md) and is imported by name.
"""

from maskdm_pipeline.tracking.logged import (
    ACCOUNTING_KEYS,
    ARTIFACT_SUFFIXES,
    COST_NAMESPACE,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HISTORY_COLUMNS,
    MEASUREMENTS,
    PARAM_VALUE_LIMIT,
    TRAIN_NAMESPACE,
    accounting_metrics,
    accounting_params,
    cache_tags,
    cost_key,
    flatten,
    has_metrics,
    history_metrics,
    is_accounting,
    is_artifact,
    is_measurement,
    is_tracked,
    metrics_of,
    params_of,
    quality_metrics,
    quality_params,
    run_name,
    split_values,
    train_key,
)

__all__ = [
    "ACCOUNTING_KEYS", "ARTIFACT_SUFFIXES", "COST_NAMESPACE", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG",
    "HISTORY_COLUMNS", "MEASUREMENTS", "PARAM_VALUE_LIMIT", "TRAIN_NAMESPACE", "accounting_metrics",
    "accounting_params", "cache_tags", "cost_key", "flatten", "has_metrics", "history_metrics",
    "is_accounting", "is_artifact", "is_measurement", "is_tracked", "metrics_of", "params_of",
    "quality_metrics", "quality_params", "run_name", "split_values", "train_key",
]
