"""On a CUDA GPU: the bf16 step, checkpoints that cross to a CPU-only machine, and sampling that
agrees with the CPU's.

Every test here is marked ``gpu``: collected everywhere and skipped where torch sees no CUDA
device (tests/conftest.py), so CI skips them and the GPU check runs them
(``python -m benchmarks.gpu_e2e``, benchmarks/README.md "GPU").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kedro_project import PROJECT_ROOT, load_params

from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.diffusion import DenoisingLoss, MaskedDenoisingLoss, make_schedule
from maskdm_pipeline.fileio import save_checkpoint
from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.models import build_uvit
from maskdm_pipeline.shards import take_rows
from maskdm_pipeline.training import DiffusionConfig, ModelConfig, StageConfig, TrainerConfig, run_training
from maskdm_pipeline.training.job import TrainJob

pytestmark = pytest.mark.gpu

# docs/results.md "How noisy is one final fd_clf?": one N=256 draw moves by 1.6 to 3.5 (std over
# sampling seeds, 15 models); the smallest is the tolerance between two devices' draws.
FD_CLF_SAMPLING_STD = 1.6
SAMPLING = {"num_samples": 256, "batch_size": 256, "sampler": "dpm++2m", "steps": 25, "eta": 1.0, "seed": 1234}


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """The quick start's data: the embedded MNIST digits at 16x16, split as preprocessing does."""
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset
    from maskdm_pipeline.params import PreprocessParams
    from maskdm_pipeline.pipelines.preprocess.nodes import convert_images, split_images

    params = PreprocessParams(**load_params(PROJECT_ROOT, "base")["preprocess"])
    train, heldout, _ = split_images(convert_images(EmbeddedDigitsDataset().load(), params), params)
    rows = lambda split: take_rows(split["images"], np.arange(len(split["images"])))  # noqa: E731
    return {"train": rows(train), "labels": np.asarray(train["labels"]), "heldout": rows(heldout)}


@pytest.fixture(scope="module")
def trained_on_cuda(digits: dict[str, np.ndarray]) -> dict[str, Any]:
    """The quick start's model, trained on the GPU for 1,500 steps (seconds there)."""
    params = load_params(PROJECT_ROOT, "base")
    job = TrainJob(images=digits["train"], model=ModelConfig(preset="tiny", img_size=16, in_chans=1),
                   diffusion=DiffusionConfig(**params["diffusion"]),
                   stage=StageConfig(steps=1500, batch_size=64, lr=2e-3, warmup_steps=100, log_every=500),
                   trainer=TrainerConfig(device="cuda"), name="gpu-test", progress=False)
    return run_training(job)


@pytest.mark.parametrize("masked", [False, True])
def test_a_bf16_step_is_finite_and_close_to_fp32(masked: bool) -> None:
    """small-64 at batch 8: the bf16 autocast loss and gradients against fp32 on the same weights,
    images, time steps, noise and masks (bf16 operands: relative errors of 1e-3 to 1e-2)."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_uvit("small-64").to(device)
    x0 = torch.rand(8, 3, 64, 64, device=device) * 2 - 1
    t = torch.randint(0, 1000, (8,), device=device)
    noise = torch.randn_like(x0)
    schedule = make_schedule("linear").to(device)
    mask = sample_masks("block", model.grid_size, 8, ratio=0.9, block_size=4) if masked else None
    results = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if masked:
                loss = MaskedDenoisingLoss(schedule)(model, x0, mask, t=t, noise=noise)
            else:
                loss = DenoisingLoss(schedule)(model, x0, t=t, noise=noise)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[precision] = (loss.detach(), grads)
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    assert torch.isfinite(loss16) and bool(torch.isfinite(grad16).all())
    assert abs(float(loss16 - loss32)) / float(loss32) < 2e-2
    assert float((grad16 - grad32).norm() / grad32.norm()) < 5e-2


def test_a_checkpoint_trained_on_cuda_loads_where_there_is_no_gpu(trained_on_cuda: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    """The pipeline's checkpoint of a CUDA run, and a state dict saved straight from CUDA tensors,
    both load and sample in a process that sees no GPU (CUDA_VISIBLE_DEVICES empty)."""
    save_checkpoint(trained_on_cuda, tmp_path / "finetuned.pt")
    model = generation.model_from_checkpoint(trained_on_cuda).cuda()
    torch.save(model.state_dict(), tmp_path / "cuda_tensors.pt")  # storages tagged cuda:0
    code = (
        "import json, sys, torch\n"
        "from maskdm_pipeline import generation\n"
        "from maskdm_pipeline.fileio import load_torch_state\n"
        "assert not torch.cuda.is_available()\n"
        "state = load_torch_state(sys.argv[1] + '/finetuned.pt')\n"
        "model = generation.model_from_checkpoint(state)\n"
        "model.load_state_dict(load_torch_state(sys.argv[1] + '/cuda_tensors.pt'))\n"
        "images, _ = generation.generate(model, num_samples=4, batch_size=4, schedule='linear', prediction='x0',\n"
        "                                sampler='ddim', steps=5, device='cpu')\n"
        "print(json.dumps({'shape': list(images.shape), 'device': str(next(model.parameters()).device)}))\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"shape": [4, 1, 16, 16], "device": "cpu"}


def test_sampling_on_cuda_gives_the_cpu_fd_clf_within_the_sampling_noise(
        trained_on_cuda: dict[str, Any], digits: dict[str, np.ndarray]) -> None:
    """The same trained weights, seed and sampler on both devices: the fd_clf of the CUDA draw is
    the CPU draw's within the smallest measured spread of one draw (float rounding differs)."""
    classifier = fd_clf.fit_feature_classifier(digits["train"], digits["labels"], epochs=3, seed=0)
    features = fd_clf.classifier_features(classifier)
    reference = fd_clf.reference_and_floor(features, digits["train"], digits["heldout"], 256)
    mu, sigma = reference["mu"].numpy(), reference["sigma"].numpy()
    model = generation.model_from_checkpoint(trained_on_cuda)
    diffusion = trained_on_cuda["config"]["diffusion"]
    scores = {}
    for device in ("cpu", "cuda"):
        images, _ = generation.generate(model, schedule=diffusion["schedule"], prediction=diffusion["prediction"],
                                        device=device, **SAMPLING)
        scores[device] = fd_clf.distance_to_reference(features, images, mu, sigma)
    assert all(np.isfinite(v) for v in scores.values()), scores
    assert abs(scores["cuda"] - scores["cpu"]) <= FD_CLF_SAMPLING_STD, scores
