"""What MLflow gets (tracking.py and the hook's code-version tags) and which parameters name files
(params.ProjectPath): pure functions, no store, no Kedro session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from maskdm_pipeline import __version__, tracking
from maskdm_pipeline.hooks import code_version
from maskdm_pipeline.project import path_parameters, resolve_path_parameters

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
        ("pretrain.loss", 0.5, 10), ("pretrain.lr", 1e-3, 10), ("pretrain.lr", 1e-3, 20)]
    assert tracking.metrics_of("metrics", {"maskdm": {"fd_clf": 3.0, "fid": None, "recipe": {"hflip": 0.5}}}) == [
        ("maskdm.fd_clf", 3.0, 0)]
    assert tracking.metrics_of("finetune_accounting", {"stats": {"steps": 30}}) == [("finetune.steps", 30.0, 0)]
    assert tracking.is_artifact("maskdm_sample_grid") and tracking.is_tracked("report_markdown")
    assert not tracking.is_tracked("maskdm_samples") and not tracking.has_metrics("dataset_card")


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


def test_cache_tags_are_keys_mlflow_accepts() -> None:
    """Every output's fingerprint and what the cache decided for each part, as valid tag keys."""
    import re

    from maskdm_pipeline.tracking import cache_tags

    records = {"pretrained": {"fingerprint": "ab12"}, "metrics": {"fingerprint": "cd34"}, "broken": {}}
    decisions = [{"stage": "pretrain", "part": "pretrain", "reasons": []},
                 {"stage": "report", "part": "build_report+plot_quality_vs_compute", "reasons": ["input changed"]},
                 {"stage": "sample", "part": "[maskdm]", "reasons": ["cache.rerun"]}]
    tags = cache_tags(records, decisions)
    assert tags["fingerprint.pretrained"] == "ab12" and "fingerprint.broken" not in tags
    assert tags["cache.pretrain"] == "up to date"
    assert tags["cache.report/build_report_plot_quality_vs_compute"] == "ran"
    assert tags["cache.sample/_maskdm_"] == "ran"
    assert all(re.fullmatch(r"[\w\-. :/]+", key) for key in tags)
