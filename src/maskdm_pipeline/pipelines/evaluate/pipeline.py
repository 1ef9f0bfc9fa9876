"""Wiring only: reference statistics, per-model scores and guidance sweeps (namespaces maskdm and
baseline, reading ``<model>_samples`` and the model's checkpoint, writing ``<model>_scores`` and
``<model>_guidance_sweep``), then metrics.json."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import collect_metrics, guidance_sweep, inception_reference, score_samples

# Each namespace's checkpoint, as the sample pipeline maps them (a stage imports no other stage).
CHECKPOINTS = {"maskdm": "finetuned", "baseline": "baseline"}


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
            ),
            node(
                guidance_sweep,
                inputs=["checkpoint", "samples", "sampling_info", "feature_classifier", "fd_clf_reference",
                        "params:sample", "params:evaluate", "params:trainer"],
                outputs="guidance_sweep",
                name="guidance_sweep",
            ),
        ]
    )
    per_model = sum(
        pipeline(
            score,
            namespace=model,
            inputs={"samples": f"{model}_samples", "sampling_info": f"{model}_sampling_info",
                    "feature_classifier": "feature_classifier",
                    "fd_clf_reference": "fd_clf_reference", "inception_reference": "inception_reference",
                    "checkpoint": checkpoint},
            outputs={"scores": f"{model}_scores", "guidance_sweep": f"{model}_guidance_sweep"},
            parameters={"params:evaluate": "params:evaluate", "params:trainer": "params:trainer",
                        "params:sample": "params:sample"},
        )
        for model, checkpoint in CHECKPOINTS.items()
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
