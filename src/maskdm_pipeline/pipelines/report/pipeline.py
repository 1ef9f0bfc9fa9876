"""Wiring only: metrics + accounting + histories -> costs and curves (in memory, computed once)
-> report.md and the quality-vs-compute figure; sample grids -> the samples figure."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_report, plot_quality_vs_compute, plot_samples, quality_vs_compute

ACCOUNTING = ["pretrain_accounting", "finetune_accounting", "baseline_accounting"]
HISTORIES = ["finetune_history", "baseline_history"]


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                quality_vs_compute,
                inputs=["metrics", *ACCOUNTING, *HISTORIES],
                outputs="quality_vs_compute",
                name="quality_vs_compute",
            ),
            node(
                build_report,
                inputs=["metrics", "quality_vs_compute", "dataset_card"],
                outputs="report_markdown",
                name="build_report",
            ),
            node(
                plot_quality_vs_compute,
                inputs=["metrics", "quality_vs_compute"],
                outputs="report_curves",
                name="plot_quality_vs_compute",
            ),
            node(
                plot_samples,
                inputs=["metrics", "maskdm_sample_grid", "baseline_sample_grid"],
                outputs="report_samples",
                name="plot_samples",
            ),
        ]
    )
