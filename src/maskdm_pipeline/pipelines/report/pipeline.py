"""Wiring only: metrics + accounting + histories -> costs and curves (in memory, computed once)
-> report.md and the quality-vs-compute figure; sample grids -> the samples figure; the guidance
sweeps -> their section of report.md and the guidance figure."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_report, plot_guidance, plot_quality_vs_compute, plot_samples, quality_vs_compute

ACCOUNTING = ["pretrain_accounting", "finetune_accounting", "baseline_accounting"]
HISTORIES = ["finetune_history", "baseline_history"]
SWEEPS = ["maskdm_guidance_sweep", "baseline_guidance_sweep"]


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
                inputs=["metrics", "quality_vs_compute", "dataset_card", *SWEEPS],
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
                plot_guidance,
                inputs=SWEEPS,
                outputs="report_guidance",
                name="plot_guidance",
            ),
            node(
                plot_samples,
                inputs=["metrics", "maskdm_sample_grid", "baseline_sample_grid"],
                outputs="report_samples",
                name="plot_samples",
            ),
        ]
    )
