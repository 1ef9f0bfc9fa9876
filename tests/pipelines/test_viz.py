"""`kedro viz build` (the real CLI) on a copy of the project's config, and the DAG it describes;
with `--include-previews` on a finished smoke project, what a click on a dataset shows.

The copy keeps build/ and viz metadata out of the work tree; the package itself is imported
from the installed (editable) distribution, so the copy only needs conf/, pyproject.toml and
an empty src/ (Kedro checks that the source folder exists).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

PIPELINES = {"preprocess", "pretrain", "finetune", "baseline", "sample", "evaluate", "report"}
# Left to right as kedro-viz should draw them; it draws none when the layers form a cycle.
LAYERS = ["raw", "primary", "models", "model_output", "reporting"]


@pytest.fixture(scope="module")
def viz(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The flowchart JSON of the __default__ pipeline, as the static site serves it."""
    root = tmp_path_factory.mktemp("viz_project")
    shutil.copytree(project_root / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()  # a developer's conf/local must not change the test
    shutil.copy(project_root / "pyproject.toml", root)
    (root / "src").mkdir()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    main = root / "build" / "api" / "main"
    assert main.is_file(), sorted(p.name for p in (root / "build").iterdir())
    data = json.loads(main.read_text())
    data["log"] = result.stdout + result.stderr
    return data


class Graph:
    """Task and dataset nodes of the flowchart, without the collapsed modular-pipeline nodes."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.nodes = {n["id"]: n for n in data["nodes"] if n["type"] != "modularPipeline"}
        self.children: dict[str, set[str]] = defaultdict(set)
        for edge in data["edges"]:
            if edge["source"] in self.nodes and edge["target"] in self.nodes:
                self.children[edge["source"]].add(edge["target"])

    def find(self, name: str, kind: str) -> str:
        """The id of the node with this full name and type ('task' or 'data')."""
        ids = [i for i, n in self.nodes.items() if n.get("full_name", n["name"]) == name and n["type"] == kind]
        assert len(ids) == 1, f"{kind} {name!r}: {len(ids)} matches"
        return ids[0]

    def downstream(self, start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for child in self.children[stack.pop()] - seen:
                seen.add(child)
                stack.append(child)
        return seen

    def tasks_in(self, ids: set[str], pipeline: str) -> set[str]:
        return {self.nodes[i].get("full_name", self.nodes[i]["name"]) for i in ids
                if self.nodes[i]["type"] == "task" and pipeline in self.nodes[i]["pipelines"]}


def test_all_seven_pipelines_are_registered(viz: dict[str, Any]) -> None:
    assert {p["id"] for p in viz["pipelines"]} == PIPELINES | {"__default__"}
    tasks = [n for n in viz["nodes"] if n["type"] == "task"]
    for name in PIPELINES:  # every stage pipeline has nodes in the default DAG
        assert any(name in n["pipelines"] for n in tasks), name


def test_pretrained_feeds_the_finetune_node(viz: dict[str, Any]) -> None:
    graph = Graph(viz)
    assert graph.find("finetune", "task") in graph.children[graph.find("pretrained", "data")]


@pytest.mark.parametrize("checkpoint, model", [("finetuned", "maskdm"), ("baseline", "baseline")])
def test_both_models_reach_evaluate_through_sampling(viz: dict[str, Any], checkpoint: str, model: str) -> None:
    graph = Graph(viz)
    below = graph.downstream(graph.find(checkpoint, "data"))
    sampling = graph.tasks_in(below, "sample")
    assert f"{model}.draw_samples" in sampling
    scoring = graph.tasks_in(graph.downstream(graph.find(f"{model}.draw_samples", "task")), "evaluate")
    assert f"{model}.score_samples" in scoring and "collect_metrics" in scoring


def test_metrics_and_sample_grids_feed_the_report(viz: dict[str, Any]) -> None:
    graph = Graph(viz)
    for dataset in ("metrics", "maskdm_sample_grid", "baseline_sample_grid"):
        assert graph.tasks_in(graph.children[graph.find(dataset, "data")], "report"), dataset
    outputs = {graph.nodes[i]["name"] for t in ("build_report", "plot_quality_vs_compute", "plot_samples",
                                                "plot_guidance")
               for i in graph.children[graph.find(t, "task")]}
    assert outputs == {"report_markdown", "report_curves", "report_samples", "report_guidance"}


def test_layers_are_drawn_in_order(viz: dict[str, Any]) -> None:
    assert "circular dependency" not in viz["log"], "kedro-viz disabled the layers:\n" + viz["log"][-2000:]
    layers = viz["layers"]
    assert set(LAYERS) <= set(layers), layers
    assert [layer for layer in layers if layer in LAYERS] == LAYERS
    datasets = [n for n in viz["nodes"] if n["type"] == "data"]
    for name in ("raw_images", "pretrained", "maskdm_sample_grid", "metrics", "report_markdown"):
        assert next(n for n in datasets if n["name"] == name).get("layer"), name


def test_viz_build_prints_no_naming_or_resolver_warning(viz: dict[str, Any]) -> None:
    """`kedro viz build` loads every pipeline and the config: neither Kedro's warning about dotted
    dataset names nor OmegaConf's register_new_resolver deprecation reaches the user."""
    assert "contain '.' characters" not in viz["log"] and "register_new_resolver" not in viz["log"], viz["log"][-3000:]


# ----------------------------------------------------------------------------- previews
# `kedro viz build --include-previews` on a finished smoke project: clicking a dataset shows its
# content. kedro-datasets' pillow.ImageDataset has no `preview`; the sample grids' catalog type
# (datasets.ImageDataset) gets one from datasets.previews.ImagePreviewMixin.

@pytest.fixture(scope="module")
def previews(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{dataset name: (its file, the node's details as the static site serves them)}``."""
    root = tmp_path_factory.mktemp("viz_previews") / "project"
    shutil.copytree(smoke_run, root, symlinks=True)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-m", "kedro", "viz", "build", "--include-previews"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "could not be previewed" not in result.stdout + result.stderr, result.stdout[-3000:]
    api = root / "build" / "api"
    main = json.loads((api / "main").read_text())
    return {n["name"]: json.loads((api / "nodes" / n["id"]).read_text())
            for n in main["nodes"] if n["type"] == "data" and (api / "nodes" / n["id"]).is_file()}


def _file(details: dict[str, Any]) -> Path:
    return Path(details["filepath"])


@pytest.mark.parametrize("name", ["metrics", "dataset_card"])
def test_json_outputs_preview_their_content(previews: dict[str, Any], name: str) -> None:
    details = previews[name]
    assert details["preview_type"] == "JSONPreview"
    assert json.loads(details["preview"]) == json.loads(_file(details).read_text())


@pytest.mark.parametrize("name", ["report_curves", "report_samples", "maskdm_sample_grid"])
def test_figures_and_grids_preview_as_images(previews: dict[str, Any], name: str) -> None:
    details = previews[name]
    assert details["preview_type"] == "ImagePreview"
    assert base64.b64decode(details["preview"]) == _file(details).read_bytes()


def test_histories_preview_their_logged_steps(previews: dict[str, Any]) -> None:
    details = previews["pretrain_history"]
    assert details["preview_type"] == "TablePreview"
    rows = pd.read_csv(_file(details))
    assert details["preview"]["columns"] == list(rows.columns)
    assert len(details["preview"]["data"]) == min(len(rows), 20)  # preview_args: nrows 20


def test_the_grids_preview_is_annotated_as_kedro_viz_expects(tmp_path: Path) -> None:
    """kedro-viz reads the kind of preview from the return annotation (ImagePreview: a base64 PNG)."""
    import inspect

    from PIL import Image

    from maskdm_pipeline.datasets import ImageDataset

    dataset = ImageDataset(filepath=str(tmp_path / "grid.png"))
    dataset.save(Image.new("L", (16, 8), 128))
    annotation = inspect.signature(dataset.preview).return_annotation
    assert getattr(annotation, "__name__", str(annotation)) == "ImagePreview"  # kedro-viz's test
    assert base64.b64decode(dataset.preview()) == (tmp_path / "grid.png").read_bytes()
