"""Every reader of the primary data works from the memory-mapped shards, batch by batch, with
the same results as from arrays in memory: training (one process and DDP workers that open the
shards themselves) and the fd_clf classifier and reference."""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers torch's reductions (tensors -> shared memory)

from maskdm_pipeline import fd_clf
from maskdm_pipeline.datasets import ShardDataset
from maskdm_pipeline.shards import ShardArray
from maskdm_pipeline.training import (
    DiffusionConfig,
    ModelConfig,
    StageConfig,
    TrainerConfig,
    TrainJob,
)
from maskdm_pipeline.training.run import run_training

TINY = ModelConfig(preset="tiny", img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2)


class NoWholeCopy(ShardArray):
    """Shards that refuse to be converted whole (``np.asarray``, ``torch.as_tensor``)."""

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole set was copied into memory")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8), np.arange(300) % 10
    path = tmp_path_factory.mktemp("shards") / "train"
    ShardDataset(str(path), max_shard_bytes=64 * 70).save({"images": images, "labels": labels})
    shards = ShardDataset(str(path)).load()["images"]
    guarded = NoWholeCopy(shards.folder, shards.files, shards.rows, shards.item_shape)
    return images, labels, guarded


def _job(images, **trainer):
    return TrainJob(images=images, model=TINY, diffusion=DiffusionConfig(schedule="linear", prediction="eps"),
                    stage=StageConfig(steps=4, batch_size=8, lr=1e-3, ema_update_after_step=1, log_every=2),
                    trainer=TrainerConfig(device="cpu", **trainer), progress=False)


def test_training_from_shards_equals_training_from_memory(data, one_torch_thread):
    images, _, shards = data
    from_array, from_tensor, from_shards = (run_training(_job(x)) for x in (images, torch.from_numpy(images), shards))
    for other in (from_tensor, from_shards):
        for key in ("model", "ema"):
            flat_a, flat_b = from_array[key], other[key]
            flat_a = flat_a.get("model", flat_a)
            flat_b = flat_b.get("model", flat_b)
            assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)
        assert [h["loss"] for h in other["history"]] == [h["loss"] for h in from_array["history"]]


@pytest.mark.slow
def test_ddp_workers_get_file_names_and_open_the_shards(data, one_torch_thread):
    """The job sent to each worker carries no pixels and no shared-memory tensor; two workers
    reading the shards themselves reproduce the one-process run."""
    images, _, shards = data
    job = _job(shards, nproc=2)
    sent = bytes(ForkingPickler.dumps(job))  # how spawn sends the job: torch's reductions on
    assert len(sent) < 4000 < images.nbytes and b"torch.multiprocessing" not in sent
    # What the check catches: a tensor goes to shared memory, rebuilt by torch.multiprocessing.
    assert b"torch.multiprocessing" in bytes(ForkingPickler.dumps(_job(torch.from_numpy(images[:8]))))
    single = run_training(_job(shards))
    double = run_training(job)
    assert double["stats"]["nproc"] == 2
    for k, v in single["model"].items():
        torch.testing.assert_close(double["model"][k], v, atol=1e-5, rtol=0)


def test_fd_clf_fits_and_references_from_shards_in_batches(data):
    images, labels, shards = data
    in_memory = fd_clf.fit_feature_classifier(images, labels, epochs=1, seed=0)
    streamed = fd_clf.fit_feature_classifier(shards, labels, epochs=1, seed=0)
    assert in_memory["test_accuracy"] == streamed["test_accuracy"]
    assert all(torch.equal(in_memory["state_dict"][k], streamed["state_dict"][k]) for k in in_memory["state_dict"])
    features = fd_clf.classifier_features(streamed)
    a = fd_clf.reference_and_floor(features, images, images, 40)
    b = fd_clf.reference_and_floor(features, shards, shards, 40)
    assert torch.equal(a["mu"], b["mu"]) and torch.equal(a["sigma"], b["sigma"])
    assert a["floor_fd_clf"] == b["floor_fd_clf"]
    assert b["reference_n"] == 300 and b["floor_n"] == 40


def test_transfer_pretraining_reads_the_source_shards_preprocess_wrote(tmp_path):
    """``pretrain.data: source``: preprocessing converts raw_pretrain_images into pretrain_source
    like the target; a project preprocessed with ``target`` holds none and is told to rerun."""
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset
    from maskdm_pipeline.params import PreprocessParams, PretrainParams
    from maskdm_pipeline.pipelines.preprocess.nodes import convert_pretrain_images
    from maskdm_pipeline.pipelines.pretrain.nodes import pretrain_data

    params = PreprocessParams(resolution=16, channels=1, crop="none", heldout_fraction=0.1, subset=None, min_size=0,
                              alpha_background=0, labels="none", seed=0, workers=1)
    block = {"steps": 2, "batch_size": 4, "lr": 1e-3}
    source, target = PretrainParams(**block, data="source"), PretrainParams(**block, data="target")
    raw = EmbeddedDigitsDataset("sklearn_digits").load()
    for name, which in (("source", source), ("target", target)):
        ShardDataset(str(tmp_path / name)).save(convert_pretrain_images(raw, params, which.data))
    converted = ShardDataset(str(tmp_path / "source")).load()
    assert converted["images"].shape == (1797, 1, 16, 16)
    assert pretrain_data({"images": "the target split"}, converted, source) is converted
    assert pretrain_data({"images": "the target split"}, converted, target) == {"images": "the target split"}
    expected = r"holds no images.*kedro run --pipelines preprocess --params pretrain.data=source"
    with pytest.raises(ValueError, match=expected):
        pretrain_data({}, ShardDataset(str(tmp_path / "target")).load(), source)
