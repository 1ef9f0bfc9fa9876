"""The final report: quality-vs-compute curves, Markdown tables and a reading of the numbers.

Pure (pandas, numpy, matplotlib; no Kedro). The question every run answers is "did masked
pre-training pay off, and by how much compute?", so MaskDM is always charged for its
pre-training: its curve starts where pre-training ended (wall time, images and steps), and
its totals are pre-training + fine-tuning. Lower fd_clf / FID is better.

Split into :mod:`~maskdm_pipeline.reporting.curves` (costs and curves),
:mod:`~maskdm_pipeline.reporting.markdown` (tables, reach section, reading, the whole report)
:mod:`~maskdm_pipeline.reporting.figures` (matplotlib) and :mod:`~maskdm_pipeline.reporting.guidance`
(the guidance sweep's section and figure); the public names are re-exported here.
"""

from maskdm_pipeline.reporting.curves import (
    STAGES,
    ZERO_COST,
    Curve,
    QualityVsCompute,
    StageCost,
    compare_curves,
    cost_to_reach,
    eval_points,
    final_points,
    quality_at,
    quality_curve,
    quality_vs_compute,
    stage_cost,
)
from maskdm_pipeline.reporting.figures import AXES, curves_figure, samples_figure
from maskdm_pipeline.reporting.guidance import guidance_figure, guidance_section
from maskdm_pipeline.reporting.markdown import (
    CLOSE_CALL,
    MODELS,
    STALE,
    build_markdown,
    compute_table,
    md_table,
    quality_table,
    reach_section,
    reading,
    recipe_table,
)

__all__ = [
    "AXES", "CLOSE_CALL", "MODELS", "STAGES", "STALE", "ZERO_COST", "Curve", "QualityVsCompute", "StageCost",
    "build_markdown", "compare_curves", "compute_table", "cost_to_reach", "curves_figure", "eval_points",
    "final_points", "guidance_figure", "guidance_section", "md_table", "quality_at", "quality_curve", "quality_table",
    "quality_vs_compute", "reach_section", "reading", "recipe_table", "samples_figure", "stage_cost",
]
