"""Wiring only: primary_train -> baseline (+ history, accounting)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import baseline


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                baseline,
                inputs=[
                    "primary_train",
                    "params:baseline",
                    "params:model",
                    "params:diffusion",
                    "params:trainer",
                    "baseline_resume",
                    "feature_classifier",
                    "fd_clf_reference",
                ],
                outputs=["baseline", "baseline_history", "baseline_accounting"],
                name="baseline",
            )
        ]
    )
