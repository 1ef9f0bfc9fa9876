"""MLflow tracking: what a run logs, and when.

- :mod:`~maskdm_pipeline.tracking.logged`: what goes to MLflow, as pure functions of the
  parameters and the saved outputs (no Kedro, no MLflow import); its public names are
  re-exported here (the dotted-name flattener they use is :mod:`maskdm_pipeline.dotted`'s);
- :mod:`~maskdm_pipeline.tracking.mlflow_hook`: ``MlflowTrackingHook`` (``settings.HOOKS``),
  which sends it to the run, best-effort, under every runner; ``code_version``;
- :mod:`~maskdm_pipeline.tracking.mlflow_store`: what the hook writes into the store besides keys
  and values (where the store says the project keeps its files, dataset inputs, logged models).

This package's ``__init__`` imports the pure half only: the hook and its store module stand on
the wiring floor (docs/architecture.md) and are imported by name.
"""

from maskdm_pipeline.tracking.logged import (
    ACCOUNTING_KEYS,
    ARTIFACT_SUFFIXES,
    COST_NAMESPACE,
    DATASET_INPUTS,
    DIGEST_CHARS,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FINGERPRINTS_ARTIFACT,
    HISTORY_COLUMNS,
    LOG_MODELS_SETTING,
    MEASUREMENTS,
    PARAM_VALUE_LIMIT,
    TRAIN_NAMESPACE,
    accounting_metrics,
    accounting_params,
    cache_tags,
    cost_key,
    dataset_input,
    fingerprints_document,
    has_metrics,
    history_metrics,
    is_accounting,
    is_artifact,
    is_measurement,
    is_tracked,
    metrics_of,
    model_params,
    params_of,
    quality_metrics,
    quality_params,
    run_name,
    split_values,
    train_key,
    training_set,
)

__all__ = [
    "ACCOUNTING_KEYS", "ARTIFACT_SUFFIXES", "COST_NAMESPACE", "DATASET_INPUTS", "DIGEST_CHARS", "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG", "FINGERPRINTS_ARTIFACT", "HISTORY_COLUMNS", "LOG_MODELS_SETTING", "MEASUREMENTS",
    "PARAM_VALUE_LIMIT", "TRAIN_NAMESPACE", "accounting_metrics", "accounting_params", "cache_tags", "cost_key",
    "dataset_input", "fingerprints_document", "has_metrics", "history_metrics", "is_accounting",
    "is_artifact", "is_measurement", "is_tracked", "metrics_of", "model_params", "params_of", "quality_metrics",
    "quality_params", "run_name", "split_values", "train_key", "training_set",
]
