"""Wiring only: raw_images -> primary arrays and dataset card; then the fd_clf feature space."""

from kedro.pipeline import Pipeline, node, pipeline

from .classifier_nodes import fd_clf_reference, fit_feature_classifier
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
            node(
                fit_feature_classifier,
                inputs=["primary_train", "params:evaluate"],
                outputs="feature_classifier",
                name="fit_feature_classifier",
            ),
            node(
                fd_clf_reference,
                inputs=["primary_train", "primary_heldout", "feature_classifier", "params:evaluate"],
                outputs="fd_clf_reference",
                name="fd_clf_reference",
            ),
        ]
    )
