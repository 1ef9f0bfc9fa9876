"""What goes to MLflow, as pure functions of the saved outputs (no Kedro, no MLflow import).

The hook in :mod:`maskdm_pipeline.hooks` calls these and sends the result to the active run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

HISTORY_COLUMNS = ("loss", "lr", "img_per_s", "fd_clf")
ACCOUNTING_KEYS = ("wall_time_s", "eval_time_s", "images_seen", "tokens_seen", "img_per_s", "steps")


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
    """Flatten ``metrics.json``: ``maskdm.fd_clf``, ``baseline.fid``, ... (null values skipped)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif _finite(node):
            flat[prefix] = float(node)

    walk("", metrics)
    return flat
