"""Wiring only: (primary_train | pretrain_source) -> pretrained (+ history, accounting)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import pretrain, pretrain_data


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                pretrain_data,
                inputs=["primary_train", "pretrain_source", "params:pretrain", "params:model.class_conditional"],
                outputs="pretrain_images",
                name="pretrain_data",
            ),
            node(
                pretrain,
                inputs=[
                    "pretrain_images",
                    "params:pretrain",
                    "params:model",
                    "params:diffusion",
                    "params:trainer",
                    "pretrain_resume",
                ],
                outputs=["pretrained", "pretrain_history", "pretrain_accounting"],
                name="pretrain",
            ),
        ]
    )
