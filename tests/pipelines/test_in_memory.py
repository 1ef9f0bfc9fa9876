"""Every pipeline run in memory by Kedro's SequentialRunner, as Kedro's own starters test them.

Each test hands one registered pipeline a ``DataCatalog`` of ``MemoryDataset``s: the outputs of
the pipelines before it (run once per module, in the order of ``kedro run``) and the parameters
of ``conf/smoke`` shrunk further with ``--params``-style overrides, typed by Kedro's own
``ParameterValidator`` as in a real run. No project copy, no ``kedro`` subprocess and nothing
under ``data/``: only the resume slots and the FID cache, which are handles on a folder, point at
a temporary one. The CLI tests (test_smoke_run.py) keep checking the files.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from kedro.validation.parameter_validator import ParameterValidator
from kedro_project import load_params
from PIL import Image

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
from maskdm_pipeline.datasets.feature_cache import FeatureCache
from maskdm_pipeline.fileio import CHECKPOINT_FORMAT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, BATCH, SAMPLES, RESOLUTION = 4, 8, 16, 8
TRAINING = {"steps": STEPS, "batch_size": BATCH, "checkpoint_every": 0, "log_every": 2, "warmup_steps": 1,
            "ema_update_after_step": 1, "eval_num_samples": SAMPLES}
TINY = {
    "preprocess": {"resolution": RESOLUTION, "subset": None, "heldout_fraction": 0.2},
    "pretrain": TRAINING,
    "finetune": {**TRAINING, "eval_every": 2},
    "baseline": {**TRAINING, "eval_every": 2},
    "sample": {"num_samples": SAMPLES, "batch_size": SAMPLES, "steps": 4},
    "evaluate": {"fid": {"enabled": False}, "fd_clf": {"num_samples": SAMPLES, "epochs": 1}},
}
CLASSES, PER_CLASS = 4, 40  # 160 raw images -> 128 train, 32 held out


@functools.cache
def tiny_params() -> dict[str, Any]:
    """conf/smoke with TINY on top, as `kedro run --env smoke --params ...` would merge them."""
    return load_params(runtime_params=TINY)


class KeptDataset(MemoryDataset):
    """An output that keeps its data after the run, as a file dataset does (the runner empties a
    plain MemoryDataset once its last reader has run)."""

    def _release(self) -> None:
        pass


def run(name: str, params: dict[str, Any] | None = None, **inputs: Any) -> dict[str, Any]:
    """Run the registered pipeline ``name`` on ``inputs`` (catalog name -> data) plus its
    ``params:`` inputs (``params``, default :func:`tiny_params`); returns every dataset the
    pipeline writes."""
    pipe: Pipeline = importlib.import_module(f"maskdm_pipeline.pipelines.{name}").create_pipeline()
    params = ParameterValidator({name: pipe}).validate_raw_params(params or tiny_params())
    catalog = DataCatalog({key: MemoryDataset(value, copy_mode="assign") for key, value in inputs.items()})
    for key in pipe.inputs():
        if key.startswith("params:"):
            value = params
            for part in key.removeprefix("params:").split("."):  # a typed block's field: an attribute
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            catalog[key] = MemoryDataset(value, copy_mode="assign")
    missing = {key for key in pipe.inputs() if key not in catalog}
    assert not missing, f"the test gives the {name} pipeline no {sorted(missing)}"
    for key in pipe.all_outputs():
        catalog[key] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return {key: catalog.load(key) for key in pipe.all_outputs()}


def raw_digits() -> dict[str, Any]:
    """Four classes of 12x12 greyscale images an easy classifier tells apart (a bright quadrant
    per class, plus noise), in the embedded-set form raw_images loads."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (CLASSES * PER_CLASS, 1, 12, 12), dtype=np.uint8)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, 0, row * 6:(row + 1) * 6, col * 6:(col + 1) * 6] += 180
    return {"images": images, "labels": labels, "source": "test quadrants"}


# ---------------------------------------------------------------- the run, one pipeline at a time
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("in_memory")


@pytest.fixture(scope="module")
def preprocessed() -> dict[str, Any]:
    return run("preprocess", raw_images=raw_digits(), raw_pretrain_images=raw_digits())


@pytest.fixture(scope="module")
def stage(folder: Path, preprocessed: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """``stage(name, **inputs)``: a training pipeline with its resume slot in ``folder``."""
    def train(name: str, **inputs: Any) -> dict[str, Any]:
        return run(name, primary_train=preprocessed["primary_train"],
                   **{f"{name}_resume": CheckpointSlot(folder / f"{name}.resume.pt")}, **inputs)
    return train


@pytest.fixture(scope="module")
def pretrained(stage: Callable[..., dict[str, Any]], preprocessed: dict[str, Any]) -> dict[str, Any]:
    return stage("pretrain", pretrain_source=preprocessed["pretrain_source"])


@pytest.fixture(scope="module")
def features(preprocessed: dict[str, Any]) -> dict[str, Any]:
    return {name: preprocessed[name] for name in ("feature_classifier", "fd_clf_reference")}


@pytest.fixture(scope="module")
def finetuned(stage, pretrained: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    return stage("finetune", pretrained=pretrained["pretrained"], **features)


@pytest.fixture(scope="module")
def baseline(stage, features: dict[str, Any]) -> dict[str, Any]:
    return stage("baseline", **features)


@pytest.fixture(scope="module")
def sampled(finetuned: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    return run("sample", finetuned=finetuned["finetuned"], baseline=baseline["baseline"])


def evaluate(folder: Path, preprocessed, features, pretrained, finetuned, baseline, sampled,
             params: dict[str, Any] | None = None) -> dict[str, Any]:
    per_model = {f"{model}_{what}": sampled[f"{model}_{what}"]
                 for model in ("maskdm", "baseline") for what in ("samples", "sampling_info")}
    accounting = {f"{name}_accounting": outputs[f"{name}_accounting"]
                  for name, outputs in (("pretrain", pretrained), ("finetune", finetuned), ("baseline", baseline))}
    return run("evaluate", params, primary_train=preprocessed["primary_train"],
               dataset_card=preprocessed["dataset_card"], feature_cache=FeatureCache(folder / "cache"),
               finetuned=finetuned["finetuned"], baseline=baseline["baseline"], **features, **per_model, **accounting)


def report(evaluated, finetuned, baseline, sampled, pretrained, preprocessed,
           params: dict[str, Any] | None = None) -> dict[str, Any]:
    return run("report", params, metrics=evaluated["metrics"], dataset_card=preprocessed["dataset_card"],
               pretrain_accounting=pretrained["pretrain_accounting"],
               finetune_accounting=finetuned["finetune_accounting"],
               baseline_accounting=baseline["baseline_accounting"],
               finetune_history=finetuned["finetune_history"], baseline_history=baseline["baseline_history"],
               maskdm_sample_grid=sampled["maskdm_sample_grid"],
               baseline_sample_grid=sampled["baseline_sample_grid"],
               **{f"{m}_guidance_sweep": evaluated[f"{m}_guidance_sweep"] for m in ("maskdm", "baseline")})


@pytest.fixture(scope="module")
def evaluated(folder: Path, preprocessed, features, pretrained, finetuned, baseline, sampled) -> dict[str, Any]:
    return evaluate(folder, preprocessed, features, pretrained, finetuned, baseline, sampled)


# ---------------------------------------------------------------- one test per pipeline
def test_preprocess_splits_converts_and_fits_the_fd_clf_feature_space(preprocessed: dict[str, Any]) -> None:
    train, heldout, card = preprocessed["primary_train"], preprocessed["primary_heldout"], preprocessed["dataset_card"]
    assert train["images"].shape == (128, 1, RESOLUTION, RESOLUTION) and train["images"].dtype == np.uint8
    assert heldout["images"].shape == (32, 1, RESOLUTION, RESOLUTION)
    assert sorted(np.unique(np.concatenate([train["labels"], heldout["labels"]]))) == list(range(CLASSES))
    assert (card["found"], card["train"], card["heldout"], card["source"]) == (160, 128, 32, "test quadrants")
    assert card["num_classes"] == CLASSES and card["skipped"] == 0
    assert tiny_params()["pretrain"]["data"] == "target" and len(preprocessed["pretrain_source"]["images"]) == 0
    classifier, reference = preprocessed["feature_classifier"], preprocessed["fd_clf_reference"]
    assert classifier["available"] and classifier["num_train"] > 0
    assert classifier["test_accuracy"] > 0.5, "four bright quadrants are easy to tell apart"
    dims = reference["mu"].shape[0]
    assert reference["sigma"].shape == (dims, dims) and reference["reference_n"] == 128
    assert reference["floor_n"] == SAMPLES and reference["floor_fd_clf"] > 0


def _check_stage(outputs: dict[str, Any], name: str, checkpoint: str) -> dict[str, Any]:
    state, history, accounting = outputs[checkpoint], outputs[f"{name}_history"], outputs[f"{name}_accounting"]
    assert state["format"] == CHECKPOINT_FORMAT and state["step"] == STEPS
    assert isinstance(history, pd.DataFrame) and list(history["step"].dropna().astype(int))[-1] == STEPS
    assert np.isfinite(history["loss"].dropna()).all()
    stats = accounting["stats"]
    assert accounting["stage"] == name and stats["steps"] == STEPS
    assert accounting["node_rank"] == 0 and "node_rank" not in state  # for the MLflow hook, not the checkpoint
    assert stats["images_seen"] == STEPS * BATCH and stats["wall_time_s"] > 0
    return state


def test_pretrain_trains_on_masked_tokens(pretrained: dict[str, Any], folder: Path) -> None:
    state = _check_stage(pretrained, "pretrain", "pretrained")
    stats = pretrained["pretrain_accounting"]["stats"]
    tokens = (RESOLUTION // 2) ** 2  # patch 2 (conf/smoke)
    ratio = tiny_params()["pretrain"]["mask"]["ratio"]
    assert tiny_params()["pretrain"]["mask"]["kind"] == "patch"
    visible = tokens - int(ratio * tokens)  # patch masks: floor(ratio * tokens) of them
    assert stats["tokens_seen"] == STEPS * BATCH * visible, "the encoder sees the visible tokens only"
    assert state["config"]["stage"]["mask"]["ratio"] == ratio
    assert (folder / "pretrain.resume.pt").is_file(), "the final state is in the slot too (the hook clears it)"


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5


def test_finetune_starts_from_the_pretrained_weights(finetuned, pretrained, baseline) -> None:
    state = _check_stage(finetuned, "finetune", "finetuned")
    assert tiny_params()["finetune"]["init_from"] == "raw"
    # The same recipe and seed from random weights (the baseline) ends far from the pre-trained
    # weights; fine-tuning ends a few small steps away from them.
    pre = pretrained["pretrained"]["model"]
    moved, apart = _distance(state["model"], pre), _distance(baseline["baseline"]["model"], pre)
    assert 0 < moved < apart / 4, (moved, apart)
    evals = finetuned["finetune_accounting"]["evals"]
    assert [e["step"] for e in evals] == [2, 4] and all(e["fd_clf_n"] == SAMPLES for e in evals)


def test_baseline_trains_from_random_weights_with_probes(baseline: dict[str, Any]) -> None:
    _check_stage(baseline, "baseline", "baseline")
    history = baseline["baseline_history"]
    assert history.dropna(subset=["fd_clf"])["step"].astype(int).tolist() == [2, 4]
    assert baseline["baseline"]["config"]["stage"]["mask"] is None


def test_sample_draws_per_model_arrays_grids_and_pngs(sampled: dict[str, Any]) -> None:
    for model in ("maskdm", "baseline"):
        images = sampled[f"{model}_samples"]["images"]
        assert images.shape == (SAMPLES, 1, RESOLUTION, RESOLUTION) and images.dtype == np.uint8
        assert isinstance(sampled[f"{model}_sample_grid"], Image.Image)
        pngs = sampled[f"{model}_sample_pngs"]
        assert sorted(pngs) == [f"{i:06d}" for i in range(SAMPLES)]
        assert np.array_equal(np.asarray(pngs["000003"]), images[3, 0])
        info = sampled[f"{model}_sampling_info"]
        assert (info["num_samples"], info["steps"], info["trained_steps"]) == (SAMPLES, 4, STEPS)
        # An unconditional, unguided sampling records what it always did, and no labels.
        assert set(info) == {"sampler", "steps", "eta", "seed", "num_samples", "weights", "trained_steps",
                             "device", "seconds", "img_per_s"}
        assert set(sampled[f"{model}_samples"]) == {"images"}
    assert not np.array_equal(sampled["maskdm_samples"]["images"], sampled["baseline_samples"]["images"])


def test_evaluate_scores_both_models_into_metrics(evaluated: dict[str, Any], preprocessed) -> None:
    metrics = evaluated["metrics"]
    for model in ("maskdm", "baseline"):
        scores = evaluated[f"{model}_scores"]
        assert scores["n_samples"] == SAMPLES and scores["fd_clf_n"] == SAMPLES and scores["fd_clf"] > 0
        assert scores["fid"] is None and scores["fid_reason"] == "evaluate.fid.enabled=false"
        assert metrics[model]["fd_clf"] == scores["fd_clf"]
        assert metrics[model]["sampling"]["num_samples"] == SAMPLES
        assert not any(key.startswith("class") for key in scores), "unconditional scores are what they were"
        assert "num_classes" not in metrics[model]["recipe"][next(iter(metrics[model]["recipe"]))]
        sweep = evaluated[f"{model}_guidance_sweep"]
        assert not sweep["available"] and "needs a class-conditional model" in sweep["reason"]
    assert metrics["real_floor"]["fd_clf"] == preprocessed["fd_clf_reference"]["floor_fd_clf"]
    stages = metrics["stages"]
    assert metrics["maskdm"]["training_cost"]["images_seen"] == (
        stages["pretrain"]["images_seen"] + stages["finetune"]["images_seen"]) == 2 * STEPS * BATCH
    assert metrics["baseline"]["training_cost"]["images_seen"] == STEPS * BATCH


def test_report_reads_the_run_it_follows(evaluated, finetuned, baseline, sampled, pretrained, preprocessed) -> None:
    outputs = report(evaluated, finetuned, baseline, sampled, pretrained, preprocessed)
    assert {"report_markdown", "report_curves", "report_samples", "report_guidance"} <= set(outputs)
    assert "## Guidance" not in outputs["report_markdown"]
    fd_clf = evaluated["metrics"]["maskdm"]["fd_clf"]
    assert f"{fd_clf:.2f}" in outputs["report_markdown"]
    assert len(outputs["report_samples"].axes) == 2


# ---------------------------------------------------------------- the same run, class-conditional
# Pre-trained without labels (pretrain.use_labels: false), fine-tuned and trained from scratch with
# them, sampled with classifier-free guidance at w = 2 and swept at w = 1, 2.
CONDITIONAL = {"model": {"class_conditional": True}, "pretrain": {**TRAINING, "use_labels": False},
               "sample": {**TINY["sample"], "guidance_scale": 2.0, "guidance_sweep": [1, 2]}}


@pytest.fixture(scope="module")
def conditional(tmp_path_factory: pytest.TempPathFactory, preprocessed, features) -> dict[str, Any]:
    """Every output of the conditional run, by stage."""
    params = load_params(runtime_params={**TINY, **CONDITIONAL})
    folder = tmp_path_factory.mktemp("conditional")

    def train(name: str, **inputs: Any) -> dict[str, Any]:
        return run(name, params, primary_train=preprocessed["primary_train"],
                   **{f"{name}_resume": CheckpointSlot(folder / f"{name}.resume.pt")}, **inputs)

    out = {"pretrain": train("pretrain", pretrain_source=preprocessed["pretrain_source"])}
    out["finetune"] = train("finetune", pretrained=out["pretrain"]["pretrained"], **features)
    out["baseline"] = train("baseline", **features)
    out["sample"] = run("sample", params, finetuned=out["finetune"]["finetuned"], baseline=out["baseline"]["baseline"])
    out["evaluate"] = evaluate(folder, preprocessed, features, out["pretrain"], out["finetune"], out["baseline"],
                               out["sample"], params)
    out["report"] = report(out["evaluate"], out["finetune"], out["baseline"], out["sample"], out["pretrain"],
                           preprocessed, params)
    return out


def test_conditional_run_fine_tunes_unconditional_weights_with_a_fresh_label_table(conditional) -> None:
    pretrained, finetuned = conditional["pretrain"]["pretrained"], conditional["finetune"]["finetuned"]
    assert "num_classes" not in pretrained["config"]["model"] and "label_emb.weight" not in pretrained["model"]
    assert finetuned["config"]["model"]["num_classes"] == CLASSES
    assert finetuned["model"]["label_emb.weight"].shape == (CLASSES + 1, 32)
    assert conditional["baseline"]["baseline"]["config"]["model"]["num_classes"] == CLASSES
    assert [e["step"] for e in conditional["finetune"]["finetune_accounting"]["evals"]] == [2, 4]


def test_conditional_run_samples_every_class_guided_and_scores_class_accuracy(conditional) -> None:
    for model in ("maskdm", "baseline"):
        samples, info = conditional["sample"][f"{model}_samples"], conditional["sample"][f"{model}_sampling_info"]
        assert samples["labels"].tolist() == [i % CLASSES for i in range(SAMPLES)]
        assert (info["guidance"], info["guidance_scale"], info["classes"]) == ("cfg", 2.0, list(range(CLASSES)))
        assert info["flops_per_sample"] > 0
        scores, metrics = conditional["evaluate"][f"{model}_scores"], conditional["evaluate"]["metrics"][model]
        assert 0 <= scores["class_accuracy"] <= 1 and scores["class_accuracy_n"] == SAMPLES
        assert set(scores["class_accuracy_per_class"]) == {str(c) for c in range(CLASSES)}
        assert metrics["class_accuracy"] == scores["class_accuracy"] and "class_accuracy_per_class" not in metrics
        sweep = conditional["evaluate"][f"{model}_guidance_sweep"]
        assert sweep["available"] and [p["scale"] for p in sweep["points"]] == [1.0, 2.0]
        assert sweep["points"][1]["flops_per_sample"] == 2 * sweep["points"][0]["flops_per_sample"]
        # w = 2 is the sample stage's setting: its samples are scored, not drawn again (the same images).
        assert sweep["points"][1]["reused"] and sweep["points"][1]["seconds"] is None
        assert sweep["points"][1]["fd_clf"] == scores["fd_clf"]
        assert sweep["points"][0]["seconds"] > 0 and not sweep["points"][0]["reused"]
        assert sweep["flops_per_sample"]["cfg"] == sweep["points"][1]["flops_per_sample"]
        flops = sweep["flops_per_sample"]
        assert flops["none"] < flops["sparse"] < flops["cfg"]
        assert list(metrics["recipe"].values())[-1]["num_classes"] == CLASSES  # finetune, baseline
    assert "num_classes" not in conditional["evaluate"]["metrics"]["maskdm"]["recipe"]["pretrain"]  # no labels
    markdown = conditional["report"]["report_markdown"]
    assert "## Guidance" in markdown and "class accuracy" in markdown
    assert len(conditional["report"]["report_guidance"].axes) == 2
    grid = np.asarray(conditional["sample"]["maskdm_sample_grid"])
    assert grid.shape[0] == CLASSES * (RESOLUTION + 1) + 1  # one row per class
