"""Wiring only: reference statistics, per-model scores (namespaces maskdm and baseline, reading
``<model>_samples`` and writing ``<model>_scores``), then metrics.json."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import collect_metrics, inception_reference, score_samples


def create_pipeline(**kwargs) -> Pipeline:
    reference = pipeline(
        [
            node(
                inception_reference,
                inputs=["primary_train", "dataset_card", "feature_cache", "params:evaluate", "params:trainer"],
                outputs="inception_reference",
                name="inception_reference",
            )
        ]
    )
    score = pipeline(
        [
            node(
                score_samples,
                inputs=["samples", "feature_classifier", "fd_clf_reference", "inception_reference",
                        "params:evaluate", "params:trainer"],
                outputs="scores",
                name="score_samples",
            )
        ]
    )
    per_model = sum(
        pipeline(
            score,
            namespace=model,
            inputs={"samples": f"{model}_samples", "feature_classifier": "feature_classifier",
                    "fd_clf_reference": "fd_clf_reference", "inception_reference": "inception_reference"},
            outputs={"scores": f"{model}_scores"},
            parameters={"params:evaluate": "params:evaluate", "params:trainer": "params:trainer"},
        )
        for model in ("maskdm", "baseline")
    )
    collect = pipeline(
        [
            node(
                collect_metrics,
                inputs=["maskdm_scores", "baseline_scores", "fd_clf_reference", "maskdm_sampling_info",
                        "baseline_sampling_info", "pretrain_accounting", "finetune_accounting",
                        "baseline_accounting"],
                outputs="metrics",
                name="collect_metrics",
            )
        ]
    )
    return reference + per_model + collect
