"""Wiring only: the same sampling node for each model, under the namespaces maskdm and baseline.

The node's outputs are the namespace's outputs (the evaluate and report pipelines read them), so
they are mapped to the catalog names ``<model>_<output>`` instead of Kedro's ``<model>.<output>``.
"""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import draw_samples

MODELS = {"maskdm": "finetuned", "baseline": "baseline"}
OUTPUTS = ("samples", "sample_grid", "sample_pngs", "sampling_info")


def create_pipeline(**kwargs) -> Pipeline:
    template = pipeline(
        [
            node(
                draw_samples,
                inputs=["checkpoint", "params:sample", "params:trainer"],
                outputs=list(OUTPUTS),
                name="draw_samples",
            )
        ]
    )
    return sum(
        pipeline(
            template,
            namespace=model,
            inputs={"checkpoint": checkpoint},
            outputs={name: f"{model}_{name}" for name in OUTPUTS},
            parameters={"params:sample": "params:sample", "params:trainer": "params:trainer"},
        )
        for model, checkpoint in MODELS.items()
    )
