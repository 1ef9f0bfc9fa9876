"""Wiring only: primary_train -> pretrained (+ history, accounting)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import pretrain


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                pretrain,
                inputs=[
                    "primary_train",
                    "params:pretrain",
                    "params:model",
                    "params:diffusion",
                    "params:trainer",
                    "pretrain_resume",
                ],
                outputs=["pretrained", "pretrain_history", "pretrain_accounting"],
                name="pretrain",
            )
        ]
    )
