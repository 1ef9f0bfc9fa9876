"""Wiring only: primary_train + pretrained -> finetuned (+ history, accounting)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import finetune


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                finetune,
                inputs=[
                    "primary_train",
                    "pretrained",
                    "params:finetune",
                    "params:model",
                    "params:diffusion",
                    "params:trainer",
                    "finetune_resume",
                    "feature_classifier",
                    "fd_clf_reference",
                ],
                outputs=["finetuned", "finetune_history", "finetune_accounting"],
                name="finetune",
            )
        ]
    )
