"""The training engine (training/config.py, job.py, run.py, loop.py, builders.py, resume.py,
streams.py, distributed.py).

Everything runs a tiny real U-ViT (8x8 images, patch 2, 16 tokens, width 32) on the CPU with one
thread: on shared cores, oversubscribed OpenMP threads made a step ~50x slower.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.params import FinetuneParams, PretrainParams, describe
from maskdm_pipeline.training import loop
from maskdm_pipeline.training.builders import build_loss, warmup_lr
from maskdm_pipeline.training.config import (
    DiffusionConfig,
    MaskConfig,
    ModelConfig,
    StageConfig,
    TrainerConfig,
    check_compatible,
)
from maskdm_pipeline.training.distributed import NODE_RANK
from maskdm_pipeline.training.job import NonFiniteLossError, TrainingInterrupted, TrainJob
from maskdm_pipeline.training.process import flip_horizontally
from maskdm_pipeline.training.run import run_training
from maskdm_pipeline.training.streams import TrainingStreams

TINY = ModelConfig(preset="tiny", img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2)
TINY_CONDITIONAL = TINY.model_copy(update={"num_classes": 3})
LABELS = np.arange(20) % 3  # the classes of the 20 images of the `images` fixture
DIFFUSION = DiffusionConfig(schedule="linear", prediction="eps")
CPU = TrainerConfig(device="cpu")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _stage(**overrides) -> PretrainParams:
    """A pre-training block (the nested mask users type, ``mask.ratio``); its engine part is the job's."""
    mask = {"kind": "patch", "ratio": 0.5, **overrides.pop("mask", {})}
    base = {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 3, "grad_clip": 1.0,
            "ema_update_after_step": 2, "log_every": 2, "mask": mask}
    return PretrainParams.model_validate({**base, **overrides})


def _train(images, params: PretrainParams, **fields):
    fields.setdefault("trainer", CPU)
    fields.setdefault("diffusion", DIFFUSION)
    fields.setdefault("model", TINY)
    return run_training(TrainJob(images=images, stage=params.stage_config(),
                                 mask=params.mask, progress=False, name="pretrain", **fields))


# Today's MaskDM; every recipe of issue 17 at once: flips, a dense block, min-SNR weighting; and a
# class-conditional model with label dropout. (stage overrides, diffusion, other job fields)
RECIPES = {"maskdm": ({}, DIFFUSION, {}),
           "recipes": ({"hflip": 0.5, "mask": {"dense_blocks": 1}},
                       DiffusionConfig(schedule="linear", prediction="eps", loss_weighting="min_snr",
                                       min_snr_gamma=2.0), {}),
           "conditional": ({"label_dropout": 0.3}, DIFFUSION, {"model": TINY_CONDITIONAL, "labels": LABELS})}


def _assert_tensors_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


class _HookedLoss:
    """The real loss, plus a side effect at the ``at``-th call (a NaN or a signal)."""

    def __init__(self, loss, at: int, action: str) -> None:
        self.loss, self.at, self.action, self.calls = loss, at, action, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        value = self.loss(*args, **kwargs)
        if self.calls == self.at:
            if self.action == "nan":
                return value * float("nan")
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, like a Ctrl-C
        return value


def _hooked(monkeypatch, at: int, action: str) -> None:
    """Make the loop build the real loss wrapped in a _HookedLoss."""
    def build(diffusion, masked, device):
        loss, steps = build_loss(diffusion, masked, device)
        return _HookedLoss(loss, at, action), steps

    monkeypatch.setattr(loop, "build_loss", build)


# ----------------------------------------------------------------------------- config
_STAGE = {"steps": 5, "batch_size": 4, "lr": 1e-3}


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (FinetuneParams, {**_STAGE, "steps": 0}, "finetune.steps=0: must be >= 1"),
        (FinetuneParams, {**_STAGE, "lr": -1}, "finetune.lr=-1: must be > 0"),
        (FinetuneParams, {**_STAGE, "batch_size": True}, "finetune.batch_size=True: must be an integer"),
        (FinetuneParams, {"steps": 5, "lr": 1e-3}, "finetune.batch_size: missing"),
        (FinetuneParams, {**_STAGE, "betas": [0.9]}, "finetune.betas=[0.9]: must be two numbers"),
        (FinetuneParams, {**_STAGE, "ema_decay": 1.0}, "finetune.ema_decay=1.0: must be in [0, 1)"),
        (FinetuneParams, {**_STAGE, "grad_clip": 0}, "finetune.grad_clip=0: must be > 0"),
        (FinetuneParams, {**_STAGE, "checkpoint_every": -1}, "finetune.checkpoint_every=-1: must be >= 0"),
        (FinetuneParams, {**_STAGE, "lrr": 1}, "finetune.lrr=1: unknown parameter"),
        (FinetuneParams, {**_STAGE, "mask": {"ratio": 0.5}}, "finetune.mask.ratio=0.5: unknown parameter"),
        (PretrainParams, {**_STAGE, "mask": {"kind": "pixel"}},
         "pretrain.mask.kind='pixel': must be one of patch, block, crop"),
        (PretrainParams, {**_STAGE, "mask": {"ratio": 1.0}}, "pretrain.mask.ratio=1.0: must be in [0, 1)"),
    ],
)
def test_stage_config_errors_name_the_parameter(cls, data, message):
    with pytest.raises(ValidationError) as info:
        cls.model_validate(data)
    lines = describe(info.value, "pretrain" if cls is PretrainParams else "finetune")
    assert any(message in line for line in lines), lines


def test_checkpoint_every_zero_means_off_and_the_mask_is_checked_against_the_grid():
    assert FinetuneParams.model_validate({**_STAGE, "checkpoint_every": 0}).checkpoint_every == 0
    with pytest.raises(ValueError, match="pretrain.mask.crop_size is required for pretrain.mask.kind='crop'"):
        MaskConfig(kind="crop").count(4)
    with pytest.raises(ValueError, match="pretrain.mask.block_size=3 does not divide the 4x4 patch grid"):
        MaskConfig(kind="block", block_size=3).sampler(4)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"precision": "fp8"}, "trainer.precision='fp8': must be one of fp32, bf16, fp16"),
        ({"device": "tpu"}, "trainer.device='tpu': must be one of auto, cpu, cuda"),
        ({"nproc": 0}, "trainer.nproc=0: must be >= 1"),
        ({"compile": "yes"}, "trainer.compile='yes': must be true or false"),
    ],
)
def test_trainer_config_errors_name_the_parameter(data, message):
    with pytest.raises(ValidationError) as info:
        TrainerConfig.model_validate(data)
    assert message in describe(info.value, "trainer")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_gpu_is_refused():
    with pytest.raises(ValueError, match="trainer.device='cuda': CUDA was requested"):
        TrainerConfig(device="cuda").check_hardware()


def test_batch_must_split_over_processes():
    with pytest.raises(ValueError, match="pretrain.batch_size=6: .*divisible by trainer.nproc=4"):
        check_compatible(_stage(batch_size=6).stage_config(), TrainerConfig(nproc=4), "pretrain")


def test_config_round_trips_through_json():
    stage = StageConfig(steps=5, batch_size=4, lr=2e-4)
    mask = MaskConfig(kind="block", ratio=0.9, block_size=2)
    assert stage.betas == (0.99, 0.99) and stage.weight_decay == 0.03  # METHOD.md section 4
    saved = json.loads(json.dumps(stage.to_dict(mask)))
    assert MaskConfig.model_validate(saved.pop("mask")) == mask
    assert StageConfig.model_validate(saved) == stage
    trainer = TrainerConfig(device="cpu", precision="bf16")
    assert TrainerConfig.model_validate(json.loads(json.dumps(trainer.to_dict()))) == trainer
    params = _stage(mask={"dense_blocks": 1}, hflip=0.5)
    saved = params.stage_config().to_dict(params.mask)
    assert saved["mask"] == {"kind": "patch", "ratio": 0.5, "block_size": 4, "crop_size": None,
                             "dense_blocks": 1}
    assert saved["hflip"] == 0.5


def test_warmup_is_linear_then_constant():
    assert [warmup_lr(s, 1.0, 4) for s in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(1, 2e-4, 0) == 2e-4


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("recipe", RECIPES)
def test_interrupted_then_resumed_equals_uninterrupted(images, tmp_path, monkeypatch, recipe):
    overrides, diffusion, job = RECIPES[recipe]
    stage = _stage(steps=12, checkpoint_every=5, **overrides)
    full = _train(images, stage, diffusion=diffusion, **job)

    path = tmp_path / "pretrain.pt"
    previous = signal.getsignal(signal.SIGINT)
    _hooked(monkeypatch, 7, "signal")
    with pytest.raises(TrainingInterrupted) as info:
        _train(images, stage, checkpoint_path=path, diffusion=diffusion, **job)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is previous  # our handler is gone again
    assert info.value.step == 7 and str(path) in str(info.value) and "resume_state" in str(info.value)

    saved = load_checkpoint(path)  # goes through the weights_only loader
    assert saved["step"] == 7
    resumed = _train(images, stage, resume_state=saved, checkpoint_path=path, diffusion=diffusion, **job)
    assert ("label_drops" in saved["rng"]) == (recipe == "conditional")  # an unconditional state is as it was
    assert resumed["step"] == 12
    # Bitwise on CPU: every generator, the data cursor, AdamW moments and the EMA resumed.
    _assert_tensors_equal(full["model"], resumed["model"])
    _assert_tensors_equal(full["ema"]["model"], resumed["ema"]["model"])
    assert full["ema"]["step"] == resumed["ema"]["step"] == 12
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6, 7, 8, 10, 12]
    assert resumed["stats"]["images_seen"] == full["stats"]["images_seen"] == 48
    assert resumed["stats"]["token_blocks_seen"] == full["stats"]["token_blocks_seen"]
    # Step 8 averages steps 7-8 in one run and step 8 alone in the other; later ones match.
    assert [h["loss"] for h in resumed["history"] if h["step"] > 8] == \
        [h["loss"] for h in full["history"] if h["step"] > 8]


def test_a_resumed_process_never_updates_the_given_state_in_place(images):
    """With trainer.nproc > 1 the resume state reaches every worker through torch.multiprocessing,
    which shares tensors instead of copying them; AdamW's load_state_dict keeps the given step
    counts and moments and updates them in place, so two ranks moved one Adam state twice per
    step (a resumed two-process run drifted; the CLI test is in test_rel_interrupts.py)."""
    stage = _stage(steps=4)
    saved = _train(images, _stage(steps=2))
    given = copy.deepcopy(saved)
    _train(images, stage, resume_state=saved)
    for index, state in given["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(saved["optimizer"]["state"][index][name], value), (index, name)
    _assert_tensors_equal(given["model"], saved["model"])


def test_result_differs_with_the_seed(images):
    a, b = _train(images, _stage(steps=2)), _train(images, _stage(steps=2, seed=1))
    assert not torch.equal(a["model"]["head.weight"], b["model"]["head.weight"])


def test_masked_stage_counts_fewer_tokens(images):
    masked = _train(images, _stage(steps=2))
    full = _train(images, _stage(steps=2, mask={"ratio": 0.0}))
    assert masked["stats"]["tokens_per_image"] == full["stats"]["tokens_per_image"] == 16
    assert masked["stats"]["visible_tokens_per_image"] == 8
    assert masked["stats"]["tokens_seen"] == 8 * 8 and full["stats"]["tokens_seen"] == 16 * 8
    assert masked["stats"]["images_seen"] == full["stats"]["images_seen"] == 8
    # Token-blocks: 3 blocks (depth 2: in, mid, out) on the visible tokens, all of them unmasked.
    assert masked["stats"]["token_blocks_per_image"] == 3 * 8
    assert full["stats"]["token_blocks_per_image"] == 3 * 16 and full["stats"]["token_blocks_seen"] == 8 * 48


def test_dense_first_masking_trains_differently_and_is_charged_for_its_dense_blocks(images):
    """pretrain.mask.dense_blocks=1: the in-block sees all 16 tokens, so it costs 1 x 16 + 2 x 8
    token-blocks per image (not MaskDM's 3 x 8) for the same 8 visible tokens, and the loss
    reaches the model (the weights differ from k = 0's after the same draws)."""
    masked = _train(images, _stage(steps=2))
    dense = _train(images, _stage(steps=2, mask={"dense_blocks": 1}))
    assert dense["stats"]["tokens_seen"] == masked["stats"]["tokens_seen"] == 8 * 8
    assert dense["stats"]["token_blocks_per_image"] == 16 + 2 * 8
    assert dense["stats"]["token_blocks_seen"] == 8 * 32 > masked["stats"]["token_blocks_seen"]
    assert dense["config"]["stage"]["mask"]["dense_blocks"] == 1
    assert not torch.equal(dense["model"]["head.weight"], masked["model"]["head.weight"])


def test_hflip_draws_its_own_stream_at_the_asked_rate():
    """One flip per image of the global batch, at rate hflip, from a stream of its own: images,
    t, masks and noise are those of hflip = 0, which draws no flip at all."""
    def streams(hflip: float) -> TrainingStreams:
        return TrainingStreams(num_images=50, seed=3, num_timesteps=1000, image_shape=(1, 8, 8),
                               device=torch.device("cpu"), hflip=hflip,
                               mask_sampler=MaskConfig(kind="patch", ratio=0.5).sampler(4))

    plain, flipped, always = streams(0.0), streams(0.3), streams(1.0)
    flips = []
    for _ in range(50):
        a, b = plain.draw(64), flipped.draw(64)
        assert a.flip is None and b.flip.dtype == torch.bool and b.flip.shape == (64,)
        for field in ("indices", "t", "mask", "noise"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        flips.append(b.flip)
        assert always.draw(64).flip.all()
    assert torch.cat(flips).float().mean().item() == pytest.approx(0.3, abs=0.03)  # 3200 draws, sd 0.008
    assert "flips" in flipped.state_dict()


def test_label_dropout_draws_its_own_stream_at_the_asked_rate():
    """Each drawn image brings its own label; a label_dropout share becomes the "no label" class K,
    drawn from a stream of its own: images, t, masks and noise are those of an unconditional run."""
    labels = torch.arange(50) % 5

    def streams(**conditional) -> TrainingStreams:
        return TrainingStreams(num_images=50, seed=3, num_timesteps=1000, image_shape=(1, 8, 8),
                               device=torch.device("cpu"), **conditional,
                               mask_sampler=MaskConfig(kind="patch", ratio=0.5).sampler(4))

    plain, dropped = streams(), streams(labels=labels, num_classes=5, label_dropout=0.25)
    again = streams(labels=labels, num_classes=5, label_dropout=0.25)
    drops = []
    for _ in range(50):
        a, b, c = plain.draw(64), dropped.draw(64), again.draw(64)
        assert a.labels is None and torch.equal(b.labels, c.labels)  # seeded
        for field in ("indices", "t", "mask", "noise"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        kept = b.labels != 5
        assert torch.equal(b.labels[kept], labels[b.indices][kept])
        drops.append(~kept)
    assert torch.cat(drops).float().mean().item() == pytest.approx(0.25, abs=0.03)  # 3200 draws, sd 0.008
    assert "label_drops" in dropped.state_dict() and "label_drops" not in plain.state_dict()
    never = streams(labels=labels, num_classes=5, label_dropout=0.0).draw(64)
    assert torch.equal(never.labels, labels[never.indices])


def test_conditional_jobs_check_their_labels(images):
    with pytest.raises(ValueError, match=r"class-conditional \(3 classes\) but no labels were given"):
        _train(images, _stage(steps=1), model=TINY_CONDITIONAL)
    with pytest.raises(ValueError, match="labels were given for an unconditional model"):
        _train(images, _stage(steps=1), labels=LABELS)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        _train(images, _stage(steps=1), model=TINY_CONDITIONAL, labels=LABELS + 1)
    state = _train(images, _stage(steps=1), model=TINY_CONDITIONAL, labels=LABELS)
    assert state["config"]["model"]["num_classes"] == 3 and state["config"]["stage"]["label_dropout"] == 0.1
    assert "num_classes" not in _train(images, _stage(steps=1))["config"]["model"]


def test_hflip_mirrors_the_training_images(images):
    """hflip=1 on the images trains exactly as hflip=0 on the mirrored images (same streams)."""
    mirrored = _train(images.flip(-1).contiguous(), _stage(steps=2))
    flipped = _train(images, _stage(steps=2, hflip=1.0))
    _assert_tensors_equal(mirrored["model"], flipped["model"])
    assert not torch.equal(flipped["model"]["head.weight"], _train(images, _stage(steps=2))["model"]["head.weight"])
    half = torch.tensor([True, False])
    pair = torch.arange(8.0).reshape(2, 1, 1, 4)
    assert flip_horizontally(pair, half).tolist() == [[[[3.0, 2.0, 1.0, 0.0]]], [[[4.0, 5.0, 6.0, 7.0]]]]


def test_nan_loss_raises_and_keeps_the_last_checkpoint(images, tmp_path, monkeypatch):
    path = tmp_path / "pretrain.pt"
    stage = _stage(steps=6, checkpoint_every=2)
    _hooked(monkeypatch, 3, "nan")
    with pytest.raises(NonFiniteLossError) as info:
        _train(images, stage, checkpoint_path=path)
    message = str(info.value)
    assert "at step 3" in message and str(path) in message and "(step 2) is kept" in message
    assert "pretrain.lr" in message and "grad_clip" in message and "warmup_steps" in message
    assert load_checkpoint(path)["step"] == 2


def test_history_stats_and_eval_time_are_accounted(images, caplog):
    calls = []

    def slow_eval(step, ema_model):
        calls.append((step, ema_model.training))
        time.sleep(0.3)
        return {"fd_clf": torch.tensor(1.5), "step_seen": step}

    with caplog.at_level(logging.INFO, logger="maskdm_pipeline.training.loop"):
        state = _train(images, _stage(steps=4, eval_every=2, log_every=2), eval_fn=slow_eval)
    assert [c[0] for c in calls] == [2, 4]
    assert [h["step"] for h in state["history"]] == [2, 4]
    assert set(state["history"][0]) == {"step", "loss", "lr", "img_per_s", "elapsed_s"}
    assert state["history"][0]["lr"] == pytest.approx(2e-3 / 3)  # warm-up: step 2 of 3
    assert [(e["step"], e["fd_clf"], e["images_seen"]) for e in state["evals"]] == \
        [(2, 1.5, 8), (4, 1.5, 16)]
    stats = state["stats"]
    assert stats["eval_time_s"] >= 0.6
    assert stats["wall_time_s"] < stats["eval_time_s"]  # eval time is not training time
    assert stats["img_per_s"] == pytest.approx(16 / stats["wall_time_s"])
    assert (stats["steps"], stats["device"], stats["precision"], stats["nproc"]) == \
        (4, "cpu", "fp32", 1)
    lines = [r.getMessage() for r in caplog.records if "loss" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("pretrain step 2/4 loss")
    shown = [r.getMessage() for r in caplog.records if "evaluation" in r.getMessage()]
    assert [m.split(" (")[0] for m in shown] == [
        "pretrain step 2/4 evaluation: fd_clf 1.5, step_seen 2",
        "pretrain step 4/4 evaluation: fd_clf 1.5, step_seen 4"]


def test_fine_tuning_starts_from_the_raw_weights(images):
    pretrained = _train(images, _stage(steps=2))
    stage = _stage(steps=1, mask={"ratio": 0.0}, lr=1e-12, ema_update_after_step=100)
    tuned = _train(images, stage, init_weights=pretrained)  # a whole checkpoint dict is accepted
    # lr 1e-12: one step moves nothing visible, and the EMA (still copying) restarted from them.
    _assert_tensors_equal(pretrained["model"], tuned["ema"]["model"], atol=1e-9)
    _assert_tensors_equal(pretrained["model"], tuned["model"], atol=1e-9)
    with pytest.raises(ValueError, match="init_weights do not fit"):
        _train(images, stage, init_weights={"head.weight": torch.zeros(1)})


def test_inputs_are_checked_before_training(images):
    with pytest.raises(ValueError, match=r"images are \(3, 8, 8\) but the model expects \(1, 8, 8\)"):
        _train(images.expand(-1, 3, -1, -1).contiguous(), _stage())
    with pytest.raises(ValueError, match="uint8"):
        _train(images.float(), _stage())
    with pytest.raises(ValueError, match="pretrain.mask.block_size=3"):
        _train(images, _stage(mask={"kind": "block", "block_size": 3}))
    with pytest.raises(ValueError, match=r"pretrain.mask.dense_blocks=2: must be an integer from 0 to 1"):
        _train(images, _stage(mask={"dense_blocks": 2}))  # depth 2: one in-block


def test_bf16_autocast_trains(images):
    state = _train(images, _stage(steps=2), trainer=TrainerConfig(device="cpu", precision="bf16"))
    assert state["stats"]["precision"] == "bf16" and state["scaler"] is None
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_two_gloo_processes_match_one_process(images, recipe):
    """DDP over 2 CPU workers with the same GLOBAL batch gives the single-process result, with
    flips, dense blocks and min-SNR weighting too (flips are drawn for the global batch and
    sliced per rank, like t, noise and masks).

    Gradients are averaged across ranks instead of over one batch, so the sums differ in
    rounding only; after 3 AdamW steps the weights agree to 1e-5 (observed ~1e-7).
    """
    overrides, diffusion, job = RECIPES[recipe]
    stage = _stage(steps=3, batch_size=8, **overrides)
    single = _train(images, stage, diffusion=diffusion, **job)
    double = _train(images, stage, trainer=TrainerConfig(device="cpu", nproc=2), diffusion=diffusion, **job)
    assert double["stats"]["nproc"] == 2 and double["step"] == 3
    assert double[NODE_RANK] == 0 and NODE_RANK not in single  # the launcher's, beside the state
    _assert_tensors_equal(single["model"], double["model"], atol=1e-5)
    _assert_tensors_equal(single["ema"]["model"], double["ema"]["model"], atol=1e-5)
    assert [h["loss"] for h in double["history"]] == pytest.approx(
        [h["loss"] for h in single["history"]], abs=1e-6)
