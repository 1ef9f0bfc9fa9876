"""Wiring only: the same sampling node for each model, under the namespaces maskdm and baseline."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import draw_samples

MODELS = {"maskdm": "finetuned", "baseline": "baseline"}


def create_pipeline(**kwargs) -> Pipeline:
    template = pipeline(
        [
            node(
                draw_samples,
                inputs=["checkpoint", "params:sample", "params:trainer"],
                outputs=["samples", "sample_grid", "sample_pngs", "sampling_info"],
                name="draw_samples",
            )
        ]
    )
    return sum(
        pipeline(
            template,
            namespace=model,
            inputs={"checkpoint": checkpoint},
            parameters={"params:sample": "params:sample", "params:trainer": "params:trainer"},
        )
        for model, checkpoint in MODELS.items()
    )
