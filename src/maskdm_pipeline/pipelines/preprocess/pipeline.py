"""Wiring only: raw_images -> converted -> primary_train, primary_heldout, dataset_card."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import convert_images, split_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                convert_images,
                inputs=["raw_images", "params:preprocess"],
                outputs="converted_images",
                name="convert_images",
            ),
            node(
                split_images,
                inputs=["converted_images", "params:preprocess"],
                outputs=["primary_train", "primary_heldout", "dataset_card"],
                name="split_images",
            ),
        ]
    )
