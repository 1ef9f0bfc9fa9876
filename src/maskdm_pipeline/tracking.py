"""What goes to MLflow, as pure functions of the parameters and the saved outputs (no Kedro, no
MLflow import), and the one dotted-name flattener (also used by the parameter schema's messages).

The hook in :mod:`maskdm_pipeline.hooks` calls these and sends the result to the active run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from pydantic import BaseModel

HISTORY_COLUMNS = ("loss", "lr", "img_per_s", "fd_clf")
ACCOUNTING_KEYS = ("wall_time_s", "eval_time_s", "images_seen", "tokens_seen", "token_blocks_seen",
                   "img_per_s", "steps")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted names of ``--params``, of the parameter
    messages and of MLflow. A parameter block Kedro has turned into a model flattens as the
    mapping it was given as; keys that already contain dots are kept as is.

    Our own ten lines, not ``pandas.json_normalize``: that one goes through a DataFrame, so null
    comes back as NaN and numbers as numpy scalars.
    """
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json", exclude_unset=True)
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def history_metrics(stage: str, history: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(name, value, step) for every logged step: ``pretrain.loss`` at step 100, ..."""
    rows: list[tuple[str, float, int]] = []
    if history.empty or "step" not in history:
        return rows
    for column in HISTORY_COLUMNS:
        if column not in history:
            continue
        for step, value in zip(history["step"], history[column], strict=True):
            if _finite(value):
                rows.append((f"{stage}.{column}", float(value), int(step)))
    return rows


def accounting_metrics(stage: str, accounting: Mapping[str, Any]) -> dict[str, float]:
    stats = accounting.get("stats", {})
    return {f"{stage}.{k}": float(stats[k]) for k in ACCOUNTING_KEYS if _finite(stats.get(k))}


def quality_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten ``metrics.json``: ``maskdm.fd_clf``, ``baseline.fid``, ... (null values skipped).
    The recipes are settings, already logged as parameters, not metrics."""
    return {name: float(value) for name, value in flatten(metrics).items()
            if _finite(value) and ".recipe." not in name}
