"""The whole DAG through Kedro's own CLI at smoke sizes: outputs, MLflow, stage reruns, DDP."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from kedro_project import kedro

STAGE_OUTPUTS = {
    "preprocess": ["data/03_primary/train/index.json", "data/03_primary/heldout/index.json",
                   "data/03_primary/pretrain_source/index.json", "data/08_reporting/dataset_card.json",
                   "data/04_feature/feature_classifier.pt", "data/04_feature/fd_clf_reference.pt"],
    "pretrain": ["data/06_models/pretrained.pt", "data/08_reporting/pretrain_history.csv",
                 "data/08_reporting/pretrain_accounting.json"],
    "finetune": ["data/06_models/finetuned.pt", "data/08_reporting/finetune_history.csv",
                 "data/08_reporting/finetune_accounting.json"],
    "baseline": ["data/06_models/baseline.pt", "data/08_reporting/baseline_history.csv",
                 "data/08_reporting/baseline_accounting.json"],
    "sample": [f"data/07_model_output/{m}_{f}" for m in ("maskdm", "baseline")
               for f in ("samples.npz", "grid.png", "sampling.json")],
    "evaluate": ["data/08_reporting/metrics.json", "data/08_reporting/maskdm_scores.json",
                 "data/08_reporting/baseline_scores.json", "data/08_reporting/maskdm_guidance_sweep.json",
                 "data/08_reporting/baseline_guidance_sweep.json"],
    "report": ["data/08_reporting/report.md", "data/08_reporting/quality_vs_compute.png",
               "data/08_reporting/samples_side_by_side.png", "data/08_reporting/guidance_sweep.png"],
}
ALL_OUTPUTS = [path for paths in STAGE_OUTPUTS.values() for path in paths]


def _mtimes(root: Path) -> dict[str, int]:
    return {rel: (root / rel).stat().st_mtime_ns for rel in ALL_OUTPUTS}


def test_every_stage_writes_its_outputs(smoke_run: Path) -> None:
    missing = [rel for rel in ALL_OUTPUTS if not (smoke_run / rel).is_file()]
    assert not missing
    assert len(list((smoke_run / "data/07_model_output/maskdm_png").glob("*.png"))) == 64
    assert not list((smoke_run / "data/06_models").glob("*.resume.pt")), "resume files outlive finished stages"
    log = (smoke_run / "run.log").read_text()
    for step in (10, 20):  # checkpoint_every: 10 of 30 steps (the final state is not periodic)
        assert f"pretrain step {step}/30: periodic checkpoint saved" in log
    assert "pretrain step 30/30: periodic checkpoint saved" not in log


def test_metrics_json_is_complete_and_honest(smoke_run: Path) -> None:
    metrics = json.loads((smoke_run / "data/08_reporting/metrics.json").read_text())
    for model in ("maskdm", "baseline"):
        entry = metrics[model]
        assert entry["n_samples"] == 64
        assert isinstance(entry["fd_clf"], float) and entry["fd_clf"] > 0 and entry["fd_clf_n"] == 64
        # Offline without the Inception weights: FID is null with a reason, never a stand-in number.
        assert entry["fid"] is None and "pt_inception-2015-12-05" in entry["fid_reason"]
        assert entry["training_cost"]["wall_time_s"] > 0 and entry["training_cost"]["images_seen"] > 0
    assert metrics["real_floor"]["fd_clf"] > 0
    assert metrics["maskdm"]["training_cost"]["images_seen"] == (
        metrics["stages"]["pretrain"]["images_seen"] + metrics["stages"]["finetune"]["images_seen"])
    for stage in ("pretrain", "finetune", "baseline"):
        assert metrics["stages"][stage]["wall_time_s"] > 0


def test_checkpoints_hold_the_full_state_and_load_weights_only(smoke_run: Path) -> None:
    state = torch.load(smoke_run / "data/06_models/finetuned.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "step", "rng", "config", "history", "stats"} <= set(state)
    assert state["step"] == 30 and state["config"]["stage"]["mask"] is None
    pretrained = torch.load(smoke_run / "data/06_models/pretrained.pt", weights_only=True)
    assert pretrained["config"]["stage"]["mask"]["ratio"] == 0.75
    assert pretrained["stats"]["tokens_seen"] < pretrained["stats"]["images_seen"] * 16


def test_mlflow_store_holds_one_run_with_histories(smoke_run: Path) -> None:
    with sqlite3.connect(smoke_run / "mlflow.db") as db:
        runs = db.execute("select run_uuid, status from runs").fetchall()
        assert len(runs) == 1 and runs[0][1] == "FINISHED"
        run = runs[0][0]
        losses = db.execute("select count(*) from metrics where run_uuid=? and key='train.pretrain.loss'",
                            (run,)).fetchone()
        assert losses[0] >= 3  # one point per log_every steps, a history, not a single value
        params = dict(db.execute("select key, value from params where run_uuid=?", (run,)).fetchall())
        assert params["pretrain.mask.ratio"] == "0.75" and params["model.preset"] == "tiny"
        tags = dict(db.execute("select key, value from tags where run_uuid=?", (run,)).fetchall())
        series: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in db.execute("select key, step, value from metrics where run_uuid=? "
                                           "order by key, step", (run,)):
            series.setdefault(key, []).append((step, value))
    metrics = json.loads((smoke_run / "data/08_reporting/metrics.json").read_text())
    # The stage and the model are both called baseline: the final score of the sampled images is
    # the one value of baseline.fd_clf; the training-time probes are a series of their own.
    assert series["baseline.fd_clf"] == [(0, pytest.approx(metrics["baseline"]["fd_clf"]))]
    assert series["maskdm.fd_clf"] == [(0, pytest.approx(metrics["maskdm"]["fd_clf"]))]
    assert len(series["train.baseline.fd_clf"]) >= 2 and all(step > 0 for step, _ in series["train.baseline.fd_clf"])
    # Only training curves are histories: every other key is one value, never two series in one.
    assert {key: points for key, points in series.items()
            if not key.startswith("train.") and len(points) != 1} == {}
    # The settings the scores were made with are parameters, not metrics.
    assert params["maskdm.sampling.seed"] == str(metrics["maskdm"]["sampling"]["seed"])
    assert params["cost.pretrain.steps"] == "30" and "maskdm.sampling.seed" not in series
    # A first run: every stage ran, and the tags say so, one per stage; the fingerprints are one
    # artifact, not a tag per output.
    cache = {key: value for key, value in tags.items() if key.startswith("cache.")}
    assert set(cache) == {f"cache.{stage}" for stage in STAGE_OUTPUTS} and set(cache.values()) == {"ran"}
    assert not [key for key in tags if key.startswith("fingerprint.")]


def _client_and_run(root: Path) -> tuple[Any, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskdm_pipeline")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=1)[0]


@pytest.fixture(scope="module")
def smoke_mlflow(smoke_run: Path) -> tuple[Any, Any]:
    """The client of the smoke run's store and its run (opening a store costs seconds)."""
    return _client_and_run(smoke_run)


def test_the_run_names_its_training_data_fingerprints_and_models(smoke_run: Path, smoke_mlflow: tuple[Any, Any],
                                                                 tmp_path: Path) -> None:
    """What MLflow's overview shows: the training split as a dataset input (its content checksum
    and the card's counts), the fingerprint records of the outputs as one artifact, and each
    trained model as a logged model of the run, READY, at its final step."""
    client, run = smoke_mlflow
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    index = json.loads((smoke_run / "data/03_primary/train/index.json").read_text())
    card = json.loads((smoke_run / "data/08_reporting/dataset_card.json").read_text())
    assert dataset.name == f"{card['source']} · train" and index["checksum"].startswith(dataset.digest)
    assert json.loads(dataset.profile)["images"] == card["train"] and json.loads(dataset.source)["uri"] == (
        "data/03_primary/train")
    fingerprints = json.loads(Path(client.download_artifacts(run.info.run_id, "cache/fingerprints.json",
                                                             str(tmp_path))).read_text())
    record = json.loads((smoke_run / "data/06_models/pretrained.pt.fingerprint.json").read_text())
    assert fingerprints["outputs"]["pretrained"] == record
    models = {m.name: m for m in client.search_logged_models([run.info.experiment_id])}
    assert set(models) == {"pretrained", "finetuned", "baseline"}
    assert {m.status.name for m in models.values()} == {"READY"} and {m.source_run_id for m in models.values()} == {
        run.info.run_id}
    outputs = {o.model_id: o.step for o in run.outputs.model_outputs}
    assert outputs == {m.model_id: 30 for m in models.values()}  # each stage's final step at smoke size
    assert models["finetuned"].params["stage.lr"] == "0.002" and "trainer.device" not in models["finetuned"].params
    # The model's page shows what training it cost and on which data (its stage's metrics name both).
    linked = {m.key: (m.dataset_name, m.dataset_digest) for m in models["finetuned"].metrics}
    assert linked["cost.finetune.wall_time_s"] == linked["train.finetune.loss"] == (dataset.name, dataset.digest)
    assert {key.split(".")[1] for key in linked} == {"finetune"}  # its own stage's only


def test_a_logged_model_loads_with_mlflows_pytorch_flavour_as_the_checkpoints_ema_model(
        smoke_run: Path, smoke_mlflow: tuple[Any, Any], tmp_path: Path) -> None:
    """``mlflow.pytorch.load_model("models:/<id>")`` gives the checkpoint's EMA model: the same
    prediction for the same noisy images and time steps, at any batch size."""
    import mlflow
    import mlflow.pytorch

    from maskdm_pipeline.generation import model_from_checkpoint

    client, run = smoke_mlflow
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.name == "finetuned"]
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # what "models:/" resolves against
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}", dst_path=str(tmp_path))
    finally:
        mlflow.set_tracking_uri(before)
    ema = model_from_checkpoint(torch.load(smoke_run / "data/06_models/finetuned.pt", weights_only=True))
    generator = torch.Generator().manual_seed(3)
    x_t = torch.randn(5, ema.in_chans, ema.img_size, ema.img_size, generator=generator)
    t = torch.randint(0, 1000, (5,), generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_t, t), ema(x_t, t))
        torch.testing.assert_close(loaded(x_t[:1], t[:1]), ema(x_t[:1], t[:1]))


def test_finetune_alone_reruns_from_the_saved_checkpoint(smoke_copy: Path) -> None:
    """Forced (it is up to date, so the cache would skip it: tests/pipelines/test_caching.py).
    MLflow gets the files this run wrote over the earlier ones, and no model: logging models is
    switched off (``tracking.log_models``)."""
    (smoke_copy / "conf/smoke/mlflow.yml").write_text("tracking:\n  log_models: false\n")
    before = _mtimes(smoke_copy)
    result = kedro(smoke_copy, "run", "--env", "smoke", "--pipelines", "finetune", "--params", "cache.rerun=finetune")
    assert result.returncode == 0, result.stderr[-3000:]
    after = _mtimes(smoke_copy)
    changed = {rel for rel in ALL_OUTPUTS if after[rel] != before[rel]}
    assert changed == set(STAGE_OUTPUTS["finetune"])
    client, run = _client_and_run(smoke_copy)
    for name in ("finetune_accounting.json", "finetune_history.csv"):
        logged = client.download_artifacts(run.info.run_id, f"reports/{name}", str(smoke_copy / "logged"))
        assert Path(logged).read_bytes() == (smoke_copy / "data/08_reporting" / name).read_bytes(), name
    assert not run.outputs.model_outputs and "logged model" not in result.stdout + result.stderr


def test_only_missing_outputs_skips_finished_stages(smoke_copy: Path) -> None:
    (smoke_copy / "data/06_models/baseline.pt").unlink()
    kept = {rel: (smoke_copy / rel).stat().st_mtime_ns for rel in ALL_OUTPUTS if "baseline.pt" not in rel}
    result = kedro(smoke_copy, "run", "--env", "smoke", "--only-missing-outputs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (smoke_copy / "data/06_models/baseline.pt").is_file()
    for rel in STAGE_OUTPUTS["pretrain"] + STAGE_OUTPUTS["finetune"] + STAGE_OUTPUTS["preprocess"]:
        assert (smoke_copy / rel).stat().st_mtime_ns == kept[rel], rel


def test_two_process_ddp_run_writes_one_checkpoint(smoke_copy: Path) -> None:
    # trainer.nproc changes the speed, not the result, so the cache would skip the stage: forced.
    result = kedro(smoke_copy, "run", "--env", "smoke", "--pipelines", "pretrain", "--params",
                   "trainer.nproc=2,cache.rerun=pretrain")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(smoke_copy / "data/06_models/pretrained.pt", weights_only=True)
    assert state["config"]["trainer"]["nproc"] == 2 and state["step"] == 30
    assert len(list((smoke_copy / "data/06_models").glob("pretrained*.pt"))) == 1
    # Which node wrote it is data of the accounting (the MLflow hook reads it), not of the checkpoint.
    accounting = json.loads((smoke_copy / "data/08_reporting/pretrain_accounting.json").read_text())
    assert accounting["node_rank"] == 0 and "node_rank" not in state
