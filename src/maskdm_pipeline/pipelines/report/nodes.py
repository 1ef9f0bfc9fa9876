"""Thin adapters between the catalog and :mod:`maskdm_pipeline.reporting`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from maskdm_pipeline import reporting
from maskdm_pipeline.reporting import quality_curves, stage_costs


def _costs_and_curves(
    metrics: Mapping[str, Any],
    pretrain_accounting: Mapping[str, Any],
    finetune_accounting: Mapping[str, Any],
    baseline_accounting: Mapping[str, Any],
    finetune_history: pd.DataFrame,
    baseline_history: pd.DataFrame,
) -> tuple[Any, Any, Any]:
    """Per-stage costs and both quality curves, shared by the report and its figure."""
    costs = stage_costs(
        metrics,
        {
            "pretrain": pretrain_accounting,
            "finetune": finetune_accounting,
            "baseline": baseline_accounting,
        },
    )
    maskdm, baseline = quality_curves(
        costs, finetune_accounting, baseline_accounting, finetune_history, baseline_history
    )
    return costs, maskdm, baseline


def build_report(
    metrics: Mapping[str, Any],
    pretrain_accounting: Mapping[str, Any],
    finetune_accounting: Mapping[str, Any],
    baseline_accounting: Mapping[str, Any],
    finetune_history: pd.DataFrame,
    baseline_history: pd.DataFrame,
    dataset_card: Mapping[str, Any],
) -> str:
    """The Markdown report (data/08_reporting/report.md)."""
    costs, maskdm, baseline = _costs_and_curves(
        metrics, pretrain_accounting, finetune_accounting, baseline_accounting,
        finetune_history, baseline_history,
    )
    return reporting.build_markdown(metrics, costs, maskdm, baseline, dataset_card)


def plot_quality_vs_compute(
    metrics: Mapping[str, Any],
    pretrain_accounting: Mapping[str, Any],
    finetune_accounting: Mapping[str, Any],
    baseline_accounting: Mapping[str, Any],
    finetune_history: pd.DataFrame,
    baseline_history: pd.DataFrame,
) -> Figure:
    """fd_clf vs images, tokens and wall time, with the final evaluation as stars at each total cost."""
    costs, maskdm, baseline = _costs_and_curves(
        metrics, pretrain_accounting, finetune_accounting, baseline_accounting,
        finetune_history, baseline_history,
    )
    totals = {
        "maskdm": (costs["pretrain"] + costs["finetune"])
        if costs["pretrain"] and costs["finetune"]
        else None,
        "baseline": costs["baseline"],
    }
    finals = {}
    for key, total in totals.items():
        entry = metrics.get(key) or {}
        if total is not None and entry.get("fd_clf") is not None:
            finals[key] = (total.wall_time_s, float(entry["fd_clf"]), entry.get("fd_clf_n"))
    return reporting.curves_figure(maskdm, baseline, finals)


def plot_samples(
    metrics: Mapping[str, Any], maskdm_grid: Image.Image, baseline_grid: Image.Image
) -> Figure:
    """The two sample grids side by side, titled with each model's fd_clf where there is one."""
    titles = {}
    for key, name in reporting.MODELS.items():
        entry = metrics.get(key) or {}
        score = f"\nfd_clf {entry['fd_clf']:.2f}" if entry.get("fd_clf") is not None else ""
        titles[key] = name + score
    return reporting.samples_figure({"maskdm": maskdm_grid, "baseline": baseline_grid}, titles)
