"""The benchmark suite's building blocks at tiny sizes, and the JSON schema (no timing assertions).

The suite itself (``python -m benchmarks``) takes minutes; here every section runs on the
smallest inputs that exercise its code, and the Performance table is rendered from a result
assembled from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import devkit
from benchmarks import suite, train_step
from benchmarks.__main__ import main, render_markdown

SMOKE_SIZE = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def sampler_comparison() -> dict:
    source = suite.untrained_source("test: untrained model", **SMOKE_SIZE)
    with torch.inference_mode():
        return suite.bench_samplers(source, num_samples=8, repeats=1, ddpm_repeats=1)


def test_sampler_comparison_schema(sampler_comparison: dict) -> None:
    assert set(sampler_comparison["results"]) == {"ddpm-1000", "ddim-250", "ddim-50", "dpm++2m-25"}
    assert sampler_comparison["reference"] == "ddim-250"
    for r in sampler_comparison["results"].values():
        assert r["seconds_median"] > 0 and r["speedup_vs_reference"] > 0
        assert r["fd_clf"] is None and r["fd_clf_ratio_vs_reference"] is None
    assert sampler_comparison["results"]["ddim-250"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert sampler_comparison["quality_reason"] == "test: untrained model"
    assert sampler_comparison["model"]["source"] == "untrained"


@pytest.mark.slow
def test_sampler_comparison_with_quality() -> None:
    """With a classifier and reference statistics, every sampler gets an fd_clf and its ratio."""
    from maskdm_pipeline import fd_clf
    from maskdm_pipeline.metrics import ClassifierConfig, SmallConvClassifier, classifier_state
    from maskdm_pipeline.metrics import stats as feature_stats

    source = suite.untrained_source("", **SMOKE_SIZE)
    torch.manual_seed(0)
    clf = SmallConvClassifier(ClassifierConfig(in_chans=1, height=8, width=8, num_classes=10))
    features = fd_clf.classifier_features({"available": True, **classifier_state(clf)})
    real = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8).numpy()
    source.features, source.reference, source.quality_reason = features, feature_stats(features(real)), None
    out = suite.bench_samplers(source, num_samples=8, repeats=1, samplers=suite.SAMPLERS[1:])
    for r in out["results"].values():
        assert r["fd_clf"] is not None and r["fd_clf_ratio_vs_reference"] is not None


@pytest.mark.slow
def test_train_step_section() -> None:
    cfg = suite.SuiteConfig(mode="test", train_presets={"tiny": 2}, train_ratios=(0.0, 0.5),
                            train_repeats=1)
    report = suite.bench_train_steps(cfg, torch.device("cpu"))["tiny"]
    assert [r["ratio"] for r in report["results"]] == [0.0, 0.5]
    assert report["config"]["kind"] == "patch" and report["results"][1]["visible_tokens"] == 8
    assert report["ratios_vs_unmasked"]["0.5"] > 0


def test_train_step_cli_still_works(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    train_step.main(["--preset", "tiny", "--batch-size", "2", "--ratios", "0", "0.5", "--kind",
                     "patch", "--warmup", "0", "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text())["results"][1]["speedup_vs_unmasked"] > 0


def test_project_copy_and_measured_run(tmp_path: Path) -> None:
    """The e2e part's pieces: a runnable project copy, and wall time + peak RSS of a child."""
    root = devkit.make_project_copy(tmp_path / "project")
    assert (root / "conf" / "base" / "catalog.yml").is_file() and (root / "pyproject.toml").is_file()
    assert (root / "src" / "maskdm_pipeline").is_dir() and (root / "data" / "06_models").is_dir()
    assert not list((root / "conf" / "local").iterdir())
    code = "x = bytearray(64 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    stats = suite.run_measured([sys.executable, "-c", code], tmp_path, {}, tmp_path / "log", 60)
    assert stats["returncode"] == 0 and stats["wall_s"] > 0 and stats["peak_rss_mib"] >= 64


def test_mask_choice() -> None:
    assert suite.choose_mask(16, (0.0, 0.5, 0.75, 0.9), 4)[0] == "block"  # small-64
    assert suite.choose_mask(4, (0.0, 0.5, 0.75, 0.9), 4)[0] == "patch"  # tiny: one block


def test_targets_markdown_and_cli(sampler_comparison: dict, tmp_path: Path) -> None:
    """A result with every section (fake timings where a section is slow) renders and passes
    through ``--markdown``; targets and flat ratios are present, machine info is recorded."""
    train = {"config": {"preset": "small-64", "batch_size": 4, "kind": "block", "block_size": 4},
             "results": [{"ratio": 0.0, "img_per_s": 1.0, "speedup_vs_unmasked": 1.0},
                         {"ratio": 0.5, "img_per_s": 1.9, "speedup_vs_unmasked": 1.9},
                         {"ratio": 0.9, "img_per_s": 6.0, "speedup_vs_unmasked": 6.0}],
             "ratios_vs_unmasked": {"0.5": 1.9, "0.9": 6.0}}
    fid = {"frechet": {"dims": 2048, "speedup": 9.0, "relative_difference": 1e-12,
                       "seconds_median": {"ours": 1.0, "pytorch_fid": 9.0}},
           "activations": {"num_images": 10, "speedup_vs_pytorch_fid": 1.2,
                           "max_relative_activation_difference": 1e-6,
                           "img_per_s_median": {"ours": 6.0, "pytorch_fid_get_activations_workers2": 5.0,
                                                "pytorch_fid_get_activations_workers0": 4.0}}}
    e2e = {"env": "base", "label": "default `kedro run`", "completed": True, "total_wall_s": 500.0,
           "peak_rss_mib": 1500.0, "stages": {"preprocess": {"wall_s": 500.0, "peak_rss_mib": 1500.0}}}
    cache = {"label": "`kedro run --env smoke`", "completed": True, "noop_vs_full": 0.25,
             "noop": {"wall_s": 5.0, "nodes_run": 0}, "forced_full": {"wall_s": 20.0}}
    result = {"schema": suite.SCHEMA, "mode": "quick", "note": "fake",
              "machine": devkit.machine_info(torch.device("cpu")),
              "train_step": {"small-64": train}, "sampling": sampler_comparison, "fid": fid,
              "e2e": e2e, "cache": cache}
    result["machine"]["load_average_at_end"] = result["machine"]["load_average_at_start"]
    result["targets"] = suite.evaluate_targets(result)
    result["ratios"] = suite.flat_ratios(result)

    t = result["targets"]
    assert t["train_step_masked90_small64"]["passed"] is True
    assert "batch 4" in t["train_step_masked90_small64"]["note"]
    assert t["sampler_dpmpp25_vs_ddim250"]["passed"] is None  # no quality on an untrained model
    assert t["inception_vs_pytorch_fid"]["passed"] is False
    assert t["frechet_vs_scipy_sqrtm"]["passed"] is True
    assert t["kedro_run_e2e"]["passed"] is True
    assert result["ratios"]["train_step.small-64.mask0.9_vs_unmasked"] == 6.0
    assert "sampling.dpm++2m-25.speedup_vs_ddim-250" in result["ratios"]
    for key in ("cpu", "torch_threads", "torch", "date"):
        assert result["machine"][key] is not None

    table = render_markdown(result)
    assert table.startswith("| benchmark | ours | reference | ratio | target | result |")
    assert "**FAIL**" in table and "DPM-Solver++ 25" in table and "6.00x" in table
    assert "every stage up to date (no-op), vs a full run | 5.0 s (0 nodes run) | 20.0 s" in table
    assert result["ratios"]["cache.noop_vs_full"] == 0.25
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps(result))
    assert main(["--markdown", str(path)]) == 0


def test_markdown_of_a_quick_result_without_e2e(sampler_comparison: dict) -> None:
    result = {"schema": suite.SCHEMA, "mode": "quick", "machine": {"cpu": "x"},
              "sampling": sampler_comparison, "e2e": {"skipped": "quick mode"}}
    result["targets"] = suite.evaluate_targets(result)
    table = render_markdown(result)
    assert "not measured" in table and "`python -m benchmarks --quick`" in table


@pytest.mark.slow
def test_data_section_and_its_rows(tmp_path: Path) -> None:
    """The data benchmarks at tiny sizes: 1 and 2 workers write the same shards, both training
    rates and both loop rates are measured, and the rows and targets render."""
    from benchmarks import data

    section = {"preprocess": data.bench_preprocess(130, repeats=1, log=lambda msg: None),
               "mmap_vs_ram": data.bench_mmap_vs_ram(64, size=8, steps=1, batch=8, repeats=1),
               "loop_vs_bare": data.bench_loop_vs_bare(steps=1, batch=8, repeats=1,
                                                       images=np.zeros((16, 1, 16, 16), np.uint8))}
    assert section["preprocess"]["identical_output"] and set(section["preprocess"]["results"]) == {"1", "2"}
    assert section["mmap_vs_ram"]["ratio_mmap_vs_ram"] > 0 and section["loop_vs_bare"]["ratio_loop_vs_bare"] > 0
    memory = {"sizes": [10, 100], "ratios": {"preprocess": 1.1},
              "runs": {str(n): {"runs": {"preprocess": {"peak_rss_anon_mib": 500.0 + n, "peak_rss_file_mib": 9.0,
                                                         "peak_rss_shmem_mib": 0.1}}} for n in (10, 100)}}
    result = {"schema": suite.SCHEMA, "mode": "quick", "machine": {"cpu": "x"}, "data": section, "memory": memory}
    result["targets"] = suite.evaluate_targets(result)
    assert result["targets"]["memory_200k_vs_20k"]["passed"] is True
    assert result["targets"]["no_images_in_shared_memory"]["passed"] is True
    assert "data.training.loop_vs_bare" in suite.flat_ratios(result)
    table = render_markdown(result)
    assert "2 workers vs 1" in table and "memory-mapped shards vs RAM" in table and "Peak memory" in table
    tree = data.sample_tree(__import__("os").getpid())
    assert tree["RssAnon"] > 0 and set(tree) == {"RssAnon", "RssFile", "RssShmem"}
