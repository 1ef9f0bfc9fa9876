"""Environment faults: a model folder that cannot be written, a disk that fills up during
training, and an MLflow store that is locked or unreachable. Nothing already computed is lost,
and the user is told what was kept and what to do."""

from __future__ import annotations

import errno
import logging
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from click import ClickException
from conftest import squash

import maskdm_pipeline.atomic as atomic_module
from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.params import BaselineParams
from maskdm_pipeline.training import DiffusionConfig, ModelParams, TrainerConfig

MODEL = ModelParams(preset="tiny", patch_size=2, embed_dim=16, depth=2, num_heads=2)
DIFFUSION = DiffusionConfig(schedule="linear", prediction="x0")
STAGE = BaselineParams(steps=30, batch_size=8, lr=1e-3, checkpoint_every=10, log_every=10, resume=True)


def _train(images, slot: CheckpointSlot):
    from maskdm_pipeline.train_stage import train_stage

    return train_stage("pretrain", {"images": images.numpy()}, STAGE, MODEL, DIFFUSION, TrainerConfig(device="cpu"),
                       slot)


def test_unwritable_model_folder_is_refused_before_training(tmp_path, tiny_images, monkeypatch):
    """data/06_models is a file, not a folder: the node stops before the first step (not at the
    first checkpoint), naming the folder; nothing was trained."""
    import maskdm_pipeline.train_stage as nodes

    (tmp_path / "06_models").write_text("not a folder")
    slot = CheckpointSlot(tmp_path / "06_models" / "pretrained.resume.pt")
    monkeypatch.setattr(nodes, "run_training", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ClickException) as info:
        _train(tiny_images, slot)
    message = str(info.value)
    assert f"pretrain: cannot write to {tmp_path / '06_models'}" in message
    assert "nothing was trained" in message


def test_disk_full_at_a_periodic_checkpoint(tmp_path, tiny_images, monkeypatch, one_thread):
    """ENOSPC from the second periodic checkpoint on: training stops with a message naming the
    error and the checkpoint; the step-10 checkpoint stays intact and loadable, no temp file is
    left behind, and a rerun once space is back resumes from step 10 and finishes."""
    slot = CheckpointSlot(tmp_path / "pretrained.resume.pt")
    real_replace = atomic_module.os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_module.os, "replace", replace)
    with pytest.raises(ClickException) as info:
        _train(tiny_images, slot)
    message = str(info.value)
    assert "No space left on device" in message and str(slot.path) in message
    assert "is intact" in message and "resume" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained.resume.pt"]
    assert load_checkpoint(slot.path)["step"] == 10

    monkeypatch.setattr(atomic_module.os, "replace", real_replace)  # space is back
    state, history, _ = _train(tiny_images, slot)
    assert state["step"] == 30 and history["step"].max() == 30


def test_mlflow_failure_during_the_run_only_warns(caplog, tmp_path):
    """The project's MLflow hook (metric histories, accounting, artifacts) meets a locked store:
    it warns once and lets the pipeline go on; it never raises."""
    from kedro.io import DataCatalog
    from kedro_datasets.json import JSONDataset
    from kedro_datasets.pandas import CSVDataset

    from maskdm_pipeline.tracking.mlflow_hook import MlflowTrackingHook

    class LockedStore:
        def log_batch(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")

        log_artifact = set_terminated = log_batch

    catalog = DataCatalog({"pretrain_history": CSVDataset(filepath=str(tmp_path / "h.csv")),
                           "pretrain_accounting": JSONDataset(filepath=str(tmp_path / "a.json"))})
    catalog.save("pretrain_history", pd.DataFrame({"step": [10, 20], "loss": [0.5, 0.4]}))
    catalog.save("pretrain_accounting", {"stats": {"wall_time_s": 1.0}})
    hook = MlflowTrackingHook()
    hook._catalog, hook._client, hook._run_id = catalog, LockedStore(), "run"
    node = SimpleNamespace(outputs=["pretrain_history", "pretrain_accounting"])
    with caplog.at_level(logging.WARNING):
        hook.after_node_outputs_saved(node=node, catalog=catalog)
        hook.after_pipeline_run(pipeline=SimpleNamespace(all_outputs=lambda: set(node.outputs),
                                                         datasets=lambda: set(node.outputs)))
    warnings = [r for r in caplog.records if "MLflow logging failed" in r.getMessage()]
    assert len(warnings) == 1 and "database is locked" in warnings[0].getMessage()


def test_unreachable_mlflow_store_only_warns(make_project):
    """The tracking URI points below a regular file (a store that cannot be created): the run
    warns once that MLflow tracking is off, trains anyway and writes every output."""
    project = make_project()
    (project.root / "blocker").write_text("a file where a folder would have to be")
    uri = f"sqlite:///{project.root / 'blocker' / 'mlflow.db'}"
    (project.root / "conf" / "smoke" / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: {uri}\n")

    code, output = project.run("--pipelines", "pretrain")
    text = squash(output)
    assert code == 0, text[-2000:]
    assert "MLflow logging failed" in text and "tracking is off" in text
    assert text.count("MLflow logging failed") == 1
    assert (project.data / "06_models" / "pretrained.pt").is_file()
