"""A diverging run (NaN / inf loss) stops at once with a message that names the step, says what
was kept and which knobs to turn; the last good checkpoint is never overwritten by bad weights."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import load_params, squash

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.params import BaselineParams, PretrainParams
from maskdm_pipeline.train_stage import train_stage
from maskdm_pipeline.training import DiffusionConfig, ModelParams, NonFiniteLossError, TrainerConfig

MODEL = ModelParams(preset="tiny", patch_size=2, embed_dim=16, depth=2, num_heads=2)
DIFFUSION = DiffusionConfig(schedule="linear", prediction="x0")


def _nan_at(call: int, base: type) -> type:
    """A loss class that returns NaN at its ``call``-th call (one call per training step)."""

    class Faulty(base):  # type: ignore[misc, valid-type]
        calls = 0

        def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            type(self).calls += 1
            loss = super().__call__(*args, **kwargs)
            return loss * float("nan") if type(self).calls == call else loss

    return Faulty


@pytest.mark.parametrize("masked", [True, False])
def test_nan_at_step_25_keeps_the_step_20_checkpoint(tmp_path, tiny_images, monkeypatch, one_thread, masked):
    """NaN at step 25 with checkpoints every 10 steps: the node raises a NonFiniteLossError naming
    step 25, the kept checkpoint (step 20) and the knobs; the resume file still holds the finite
    weights of step 20 and no temp file is left."""
    import maskdm_pipeline.diffusion as diffusion

    name = "MaskedDenoisingLoss" if masked else "DenoisingLoss"
    monkeypatch.setattr(diffusion, name, _nan_at(25, getattr(diffusion, name)))
    slot = CheckpointSlot(tmp_path / "pretrained.resume.pt")
    stage = {"steps": 40, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 10, "log_every": 5, "resume": True}
    if masked:  # the unmasked case: the pre-training node's body with a mask-less (baseline) block
        stage = PretrainParams(**stage, mask={"kind": "patch", "ratio": 0.5, "block_size": 1})
    else:
        stage = BaselineParams(**stage)
    with pytest.raises(NonFiniteLossError) as info:
        train_stage("pretrain", {"images": tiny_images.numpy()}, stage, MODEL, DIFFUSION, TrainerConfig(device="cpu"),
                    slot,
                    mask=stage.mask if masked else None)
    message = str(info.value)
    assert "the loss became nan at step 25" in message
    assert f"the last good checkpoint {slot.path} (step 20) is kept" in message
    for knob in ("pretrain.lr", "pretrain.grad_clip", "pretrain.batch_size", "pretrain.warmup_steps"):
        assert knob in message
    assert "Rerunning resumes from" in message and "pretrain.resume=false" in message
    state = load_checkpoint(slot.path)
    assert state["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["pretrained.resume.pt"]


def test_cli_lr_1e30_stops_cleanly_and_keeps_the_checkpoint(make_project, one_thread):
    """`kedro run --pipelines pretrain --params pretrain.lr=1e30` resuming from a good step-20
    checkpoint: exit 1 with one `Error:` line naming the step and the knobs, no traceback, the
    checkpoint byte for byte unchanged, no final model written."""
    from maskdm_pipeline.datasets import ShardDataset

    project = make_project()
    params = load_params(project.root)
    slot = CheckpointSlot(project.data / "06_models" / "pretrained.resume.pt")
    primary = ShardDataset(str(project.data / "03_primary" / "train")).load()
    stage = PretrainParams(**{**params["pretrain"], "steps": 20})
    good, _, _ = train_stage("pretrain", primary, stage, ModelParams(**params["model"]),
                             DiffusionConfig(**params["diffusion"]), TrainerConfig(**params["trainer"]), slot,
                             mask=stage.mask)
    assert good["step"] == 20 and slot.path.exists()
    before = slot.path.read_bytes()

    code, output = project.run("--pipelines", "pretrain", params={"pretrain.steps": 400, "pretrain.lr": 1e30})
    text = squash(output)
    assert code == 1, output[-3000:]
    assert "Traceback" not in output and "╭" not in output
    assert "resuming from" in text
    error = text[text.index("Error: "):]
    step = int(error.split("at step ")[1].split(";")[0])
    assert 20 < step <= 400
    assert error.startswith("Error: pretrain: the loss became ")
    assert error.split("became ")[1].split(" ")[0] in ("nan", "inf", "-inf")
    assert "is kept" in error and "lower pretrain.lr (now 1e+30)" in error
    assert slot.path.read_bytes() == before
    assert not (project.data / "06_models" / "pretrained.pt").exists()
    assert math.isfinite(float(load_checkpoint(slot.path)["history"][-1]["loss"]))
