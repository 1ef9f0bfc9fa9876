"""Wiring only: raw_images -> converted shards -> primary shards and dataset card (and the source
set of transfer pre-training); then the fd_clf feature space.

The two fd_clf nodes form the modular pipeline ``fd_clf`` (a box of its own in kedro-viz;
``kedro run --namespaces fd_clf`` refits the classifier alone). They stay in this registered
pipeline because every training stage needs their outputs, so `kedro run --pipelines preprocess`
has to produce them. Their datasets keep their catalog names (no namespace prefix).
"""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    convert_pretrain_images,
    fd_clf_reference,
    fit_fd_clf_classifier,
    split_images,
    start_conversion,
)


def create_pipeline(**kwargs) -> Pipeline:
    images = pipeline(
        [
            node(
                start_conversion,
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
                convert_pretrain_images,
                inputs=["raw_pretrain_images", "params:preprocess", "params:pretrain.data"],
                outputs="pretrain_source",
                name="convert_pretrain_images",
            ),
        ]
    )
    fd_clf = pipeline(
        [
            node(
                fit_fd_clf_classifier,
                inputs=["primary_train", "params:evaluate"],
                outputs="feature_classifier",
                name="fit_classifier",
            ),
            node(
                fd_clf_reference,
                inputs=["primary_train", "primary_heldout", "feature_classifier", "params:evaluate"],
                outputs="fd_clf_reference",
                name="reference",
            ),
        ],
        namespace="fd_clf",
        prefix_datasets_with_namespace=False,
    )
    return images + fd_clf
