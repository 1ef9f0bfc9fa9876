"""Wiring only: metrics + accounting + histories + sample grids -> report.md and two figures."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_report, plot_quality_vs_compute, plot_samples

ACCOUNTING = ["pretrain_accounting", "finetune_accounting", "baseline_accounting"]
HISTORIES = ["finetune_history", "baseline_history"]


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                build_report,
                inputs=["metrics", *ACCOUNTING, *HISTORIES, "dataset_card"],
                outputs="report_markdown",
                name="build_report",
            ),
            node(
                plot_quality_vs_compute,
                inputs=["metrics", *ACCOUNTING, *HISTORIES],
                outputs="report_curves",
                name="plot_quality_vs_compute",
            ),
            node(
                plot_samples,
                inputs=["metrics", "maskdm.sample_grid", "baseline.sample_grid"],
                outputs="report_samples",
                name="plot_samples",
            ),
        ]
    )
