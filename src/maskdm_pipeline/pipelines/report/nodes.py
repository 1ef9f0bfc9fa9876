"""Thin adapters between the catalog and :mod:`maskdm_pipeline.reporting`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from maskdm_pipeline import reporting
from maskdm_pipeline.reporting import QualityVsCompute


def quality_vs_compute(
    metrics: Mapping[str, Any],
    pretrain_accounting: Mapping[str, Any],
    finetune_accounting: Mapping[str, Any],
    baseline_accounting: Mapping[str, Any],
    finetune_history: pd.DataFrame,
    baseline_history: pd.DataFrame,
) -> QualityVsCompute:
    """Per-stage costs and both quality curves, once per run, for the report and its figure."""
    accountings = {"pretrain": pretrain_accounting, "finetune": finetune_accounting,
                   "baseline": baseline_accounting}
    return reporting.quality_vs_compute(metrics, accountings, finetune_history, baseline_history)


def build_report(
    metrics: Mapping[str, Any], curves: QualityVsCompute, dataset_card: Mapping[str, Any],
    maskdm_sweep: Mapping[str, Any] | None = None, baseline_sweep: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown report (data/08_reporting/report.md), with the guidance sweeps when there are any."""
    guidance = reporting.guidance_section({"maskdm": maskdm_sweep or {}, "baseline": baseline_sweep or {}})
    return reporting.build_markdown(metrics, curves.costs, curves.maskdm, curves.baseline, dataset_card, guidance)


def plot_guidance(maskdm_sweep: Mapping[str, Any], baseline_sweep: Mapping[str, Any]) -> Figure:
    """fd_clf and class accuracy against the guidance scale, both models (or why there is no sweep)."""
    return reporting.guidance_figure({"maskdm": maskdm_sweep, "baseline": baseline_sweep})


def plot_quality_vs_compute(metrics: Mapping[str, Any], curves: QualityVsCompute) -> Figure:
    """fd_clf vs images, tokens and wall time, with the final evaluation as stars at each total cost."""
    finals = reporting.final_points(metrics, curves.costs)
    return reporting.curves_figure(curves.maskdm, curves.baseline, finals)


def plot_samples(
    metrics: Mapping[str, Any], maskdm_grid: Image.Image, baseline_grid: Image.Image
) -> Figure:
    """The two sample grids side by side, titled with each model's fd_clf where there is one."""
    titles = {}
    for key, name in reporting.MODELS.items():
        entry = metrics.get(key) or {}
        score = f"\nfd_clf {entry['fd_clf']:.2f}" if entry.get("fd_clf") is not None else ""
        if entry.get("class_accuracy") is not None:
            score += f", class accuracy {entry['class_accuracy']:.2f} (one row per class)"
        titles[key] = name + score
    return reporting.samples_figure({"maskdm": maskdm_grid, "baseline": baseline_grid}, titles)
