"""Issue 17's recipes where they meet the pipeline: the loss each stage builds, what a resume or a
fine-tuning start accepts, the recipe and the token-blocks in metrics.json, and what MLflow gets.

The training itself (flips, dense blocks, resume, 2 processes) is in test_training.py; the math in
test_dense_first.py and test_min_snr.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maskdm_pipeline import diffusion as dm
from maskdm_pipeline import tracking
from maskdm_pipeline.pipelines.evaluate.nodes import collect_metrics
from maskdm_pipeline.pipelines.finetune.nodes import init_weights_from
from maskdm_pipeline.training.builders import build_loss
from maskdm_pipeline.training.config import (
    DiffusionConfig,
    MaskConfig,
    ModelConfig,
    StageConfig,
    TrainerConfig,
)
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.resume import ResumeMismatchError, check_resume, stage_recipe

CPU = torch.device("cpu")
MIN_SNR = DiffusionConfig(schedule="cosine", prediction="v", loss_weighting="min_snr", min_snr_gamma=3.0)


@pytest.mark.parametrize("mask", [None, MaskConfig(kind="patch", ratio=0.0, dense_blocks=1),
                                  MaskConfig(kind="patch", ratio=0.5, dense_blocks=1)])
def test_every_stage_loss_gets_the_weighting_and_the_masked_one_its_dense_blocks(mask):
    loss, steps = build_loss(MIN_SNR, mask, CPU)
    masked = mask is not None and mask.drops_tokens
    assert isinstance(loss, dm.MaskedDenoisingLoss if masked else dm.DenoisingLoss) and steps == 1000
    expected = dm.loss_weights(dm.make_schedule("cosine"), "v", "min_snr", 3.0)
    assert torch.equal(loss.weights, expected)
    assert getattr(loss, "dense_blocks", None) == (1 if masked else None)
    plain, _ = build_loss(DiffusionConfig(), None, CPU)
    assert plain.weights is None  # "none" multiplies nothing: MaskDM's loss bitwise


def _job(diffusion: DiffusionConfig, **stage: Any) -> dict[str, Any]:
    """The config a job stores in its checkpoints."""
    return TrainJob(images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
                    model=ModelConfig(preset="tiny", img_size=8, patch_size=2, depth=2),
                    diffusion=diffusion, stage=StageConfig(steps=5, batch_size=4, lr=1e-3, **stage),
                    trainer=TrainerConfig(device="cpu"), mask=MaskConfig(kind="patch", ratio=0.5)).config()


def test_resume_refuses_another_target_weighting_or_recipe():
    """Schedule and prediction define what the network outputs, the weighting and hflip how it is
    trained: a resume continues one run, so each is refused (issue 16), all named at once."""
    saved = {"config": _job(DiffusionConfig(prediction="x0")), "step": 2}
    with pytest.raises(ResumeMismatchError, match=r"pretrain: resume_state \(step 2\) was trained with other "
                                                  r"settings \(diffusion.prediction: 'x0' -> 'eps'\)"):
        check_resume(saved, _job(DiffusionConfig(prediction="eps")), "pretrain")
    with pytest.raises(ResumeMismatchError) as info:
        check_resume(saved, _job(DiffusionConfig(prediction="x0", loss_weighting="min_snr"), hflip=0.5), "pretrain")
    assert info.value.differences == [("diffusion.loss_weighting", "none", "min_snr"), ("hflip", 0.0, 0.5)]


def test_resume_from_a_checkpoint_older_than_the_recipes_sees_no_change():
    """A state saved before the weighting, hflip and dense blocks existed was trained with
    their defaults: it resumes, with no change to report."""
    config = _job(DiffusionConfig(prediction="x0"))
    old = {"model": config["model"], "diffusion": {"schedule": "linear", "prediction": "x0"},
           "stage": {k: v for k, v in config["stage"].items() if k != "hflip"}}
    old["stage"]["mask"] = {k: v for k, v in old["stage"]["mask"].items() if k != "dense_blocks"}
    assert check_resume({"config": old, "step": 2}, config, "pretrain") == []
    assert stage_recipe(old) == stage_recipe(config)


def test_finetuning_starts_from_weights_trained_with_another_weighting_or_dense_blocks():
    """Neither is a model shape: the model config, the schedule and the prediction target are
    compared, not the weighting (fine-tuning's own loss decides it) nor the mask."""
    model = {"preset": "tiny", "patch_size": 2, "img_size": 8}
    pretrained = {"model": {"w": torch.ones(1)}, "ema": {"model": {"w": torch.zeros(1)}},
                  "config": {"model": model, "diffusion": MIN_SNR.to_dict(),
                             "stage": {"mask": MaskConfig(ratio=0.5, dense_blocks=2).to_dict()}}}
    unweighted = {**MIN_SNR.to_dict(), "loss_weighting": "none", "min_snr_gamma": 5.0}
    assert init_weights_from(pretrained, "raw", model, unweighted)["w"].item() == 1.0
    with pytest.raises(ValueError, match=r"made with -> this run: preprocess\.resolution 8 -> 16\)"):
        init_weights_from(pretrained, "raw", {**model, "img_size": 16}, unweighted)


def _accounting(config: dict[str, Any], images: int, token_blocks: int) -> dict[str, Any]:
    return {"stats": {"wall_time_s": 1.0, "images_seen": images, "tokens_seen": images * 8,
                      "token_blocks_seen": images * token_blocks, "steps": 2},
            "config": config}


def test_metrics_json_carries_each_models_recipe_and_token_blocks():
    masked = {**_job(MIN_SNR), "stage": {**_job(MIN_SNR)["stage"], "hflip": 0.25}}
    masked["stage"]["mask"]["dense_blocks"] = 1
    tuned = _job(MIN_SNR, hflip=0.5)
    tuned["stage"]["mask"] = None
    scores = {"fd_clf": 1.0, "fd_clf_n": 64, "fid": None}
    metrics = collect_metrics(scores, scores, {}, {}, {}, _accounting(masked, 10, 32),
                              _accounting(tuned, 20, 48), _accounting(tuned, 30, 48))
    pre = metrics["maskdm"]["recipe"]["pretrain"]
    assert pre == {"mask": {"kind": "patch", "ratio": 0.5, "block_size": 4, "crop_size": None},
                   "dense_blocks": 1, "schedule": "cosine", "prediction": "v",
                   "loss_weighting": "min_snr", "min_snr_gamma": 3.0, "hflip": 0.25}
    fine = metrics["maskdm"]["recipe"]["finetune"]
    assert (fine["mask"], fine["dense_blocks"], fine["hflip"]) == (None, None, 0.5)
    assert metrics["baseline"]["recipe"] == {"baseline": fine}
    assert metrics["maskdm"]["training_cost"]["token_blocks_seen"] == 10 * 32 + 20 * 48
    assert metrics["baseline"]["training_cost"]["token_blocks_seen"] == 30 * 48
    assert metrics["stages"]["pretrain"]["token_blocks_seen"] == 320
    # MLflow: token-blocks among the accounting metrics; the recipe is parameters, not metrics.
    costs = tracking.accounting_metrics("pretrain", _accounting(masked, 10, 32))
    assert costs["cost.pretrain.token_blocks_seen"] == 320
    logged = tracking.quality_metrics(metrics)
    assert logged["maskdm.training_cost.token_blocks_seen"] == 1280
    assert not [name for name in logged if "recipe" in name]
    assert not [name for name in tracking.quality_params(metrics) if "recipe" in name]
