"""The experiment scripts' bookkeeping: reusing a baseline in a sweep, resuming, and the compute axes.

The experiments themselves are whole ``kedro run``s (minutes each); here their file handling and
their arithmetic run on small hand-made run folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from experiments import claim, fd_noise, guidance, levels, recipes
from maskdm_pipeline.diffusion import Guidance

BASELINE_SIDE = ["03_primary/train.npz", "04_feature/feature_classifier.pt", "06_models/baseline.pt",
                 "07_model_output/baseline_samples.npz", "07_model_output/baseline_png/0.png",
                 "08_reporting/baseline_accounting.json", "08_reporting/baseline_scores.json",
                 "08_reporting/dataset_card.json"]
MASKDM_SIDE = ["06_models/pretrained.pt", "06_models/finetuned.pt", "06_models/pretrained.resume.pt",
               "07_model_output/maskdm_samples.npz", "07_model_output/maskdm_png/0.png",
               "08_reporting/pretrain_accounting.json", "08_reporting/finetune_history.csv",
               "08_reporting/maskdm_scores.json", "08_reporting/metrics.json", "08_reporting/report.md",
               "08_reporting/quality_vs_compute.png"]


def _touch(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / rel).write_text(rel)


def test_reuse_baseline_keeps_the_baseline_side_and_drops_everything_maskdm(tmp_path: Path) -> None:
    reference, run = tmp_path / "ref/tokens16-seed0", tmp_path / "sweep/tokens16-seed0"
    _touch(reference, BASELINE_SIDE + MASKDM_SIDE)
    claim.reuse_baseline(run, reference)
    kept = sorted(str(p.relative_to(run / "data")) for p in (run / "data").rglob("*") if p.is_file())
    assert kept == sorted(BASELINE_SIDE)
    assert all((reference / "data" / rel).is_file() for rel in MASKDM_SIDE)  # the reference is untouched


def test_reuse_baseline_refuses_an_unfinished_reference(tmp_path: Path) -> None:
    _touch(tmp_path / "ref", BASELINE_SIDE)
    with pytest.raises(SystemExit, match=r"ref has no finished run"):
        claim.reuse_baseline(tmp_path / "run", tmp_path / "ref")


def test_a_sweep_with_a_reused_baseline_may_only_change_pretraining() -> None:
    claim.check_reusable({"pretrain.mask.ratio": "0.5", "pretrain.mask.kind": "block"})
    with pytest.raises(SystemExit, match=r"finetune\.lr, model\.patch_size"):
        claim.check_reusable({"pretrain.mask.ratio": "0.5", "model.patch_size": "2", "finetune.lr": "1e-3"})


def test_an_interrupted_copy_is_resumed_not_wiped(tmp_path: Path) -> None:
    assert not claim.is_started(tmp_path / "nothing")
    root = claim.new_project(tmp_path / "run")
    assert claim.is_started(root)
    (root / "data/06_models/baseline.resume.pt").write_text("state")
    assert claim.is_started(root)  # run_one then adds --only-missing-outputs instead of new_project


def _accounting(stage: str, images: int, tokens_per_image: int, wall: float,
                evals: list[tuple[int, float]], token_blocks_per_image: int) -> dict[str, Any]:
    """evals: (images_seen, fd_clf) at wall time proportional to images; a batch of 10 images."""
    return {"stage": stage,
            "stats": {"wall_time_s": wall, "images_seen": images, "tokens_seen": images * tokens_per_image,
                      "token_blocks_seen": images * token_blocks_per_image, "steps": images // 10,
                      "device": "cpu"},
            "config": {"stage": {"steps": images // 10, "batch_size": 10}},
            "evals": [{"step": i // 10, "elapsed_s": wall * i / images, "images_seen": i, "fd_clf": f,
                       "fd_clf_n": 64} for i, f in evals]}


def test_collect_puts_pretraining_on_every_compute_axis(tmp_path: Path) -> None:
    # Pre-training: 1000 images at 4 of 16 tokens (4000 tokens, as much as 250 whole images), with
    # one dense block of a 5-block network: 1 x 16 + 4 x 4 = 32 token-blocks per image, 80 unmasked.
    report = tmp_path / "data/08_reporting"
    report.mkdir(parents=True)
    acc = {"pretrain": _accounting("pretrain", 1000, 4, 10.0, [], 32),
           "finetune": _accounting("finetune", 1000, 16, 20.0, [(500, 30.0), (1000, 18.0)], 80),
           "baseline": _accounting("baseline", 1000, 16, 20.0, [(500, 40.0), (1000, 20.0)], 80)}
    for stage, record in acc.items():
        (report / f"{stage}_accounting.json").write_text(json.dumps(record))
    (report / "metrics.json").write_text(json.dumps(
        {"maskdm": {"fd_clf": 18.0}, "baseline": {"fd_clf": 20.0}, "real_floor": {"fd_clf": 4.0}}))
    claim.record_devices(tmp_path)
    result = claim.collect(tmp_path, "16", 0)
    # Each seed names the device it trained on and the budget each stage was given.
    assert result["device"] == f"cpu: {claim.cpu_name()}"
    assert result["budget"]["finetune"] == {"steps": 100, "batch_size": 10}
    # MaskDM first reaches the baseline's final 20.0 after 1000 fine-tuning images.
    assert result["maskdm_reach"]["images"] == 2000
    assert result["speedup_images"] == pytest.approx(1000 / 2000)
    assert result["speedup_tokens"] == pytest.approx(16_000 / (4000 + 16_000))
    assert result["speedup_wall"] == pytest.approx(20.0 / 30.0)
    # At the baseline's 16,000 tokens MaskDM has fine-tuned on 750 images: its latest evaluation is 30.0.
    assert result["equal_tokens_budget"] == 16_000
    assert result["at_equal_tokens"] == {"maskdm": 30.0, "baseline": 20.0}
    assert result["at_equal_images"] == {"maskdm": None, "baseline": 20.0}  # no MaskDM evaluation by then
    # Token-blocks charge the dense block: MaskDM reached it after 32,000 + 80,000 of them.
    assert result["maskdm_reach"]["token_blocks"] == 112_000
    assert result["speedup_token_blocks"] == pytest.approx(80_000 / 112_000)
    assert result["equal_token_blocks_budget"] == 80_000  # MaskDM then fine-tuned on 600 images
    assert result["at_equal_token_blocks"] == {"maskdm": 30.0, "baseline": 20.0}
    table = claim.summarise([result])
    assert "| 16 | 1 | 18.00 | 20.00 | 4.00 | 0.50 | 0.80 | 0.67 | not reached | 20.00 | 30.00 | 20.00 |" \
           " 0.71 | 30.00 | 20.00 |" in table
    claim.plot([result, {**result, "seed": 1}], tmp_path / "claim.png")
    with Image.open(tmp_path / "claim.png") as figure:
        assert figure.format == "PNG" and figure.width > 4 * figure.height  # one row, four axes
    sweep = tmp_path / "r050.json"
    sweep.write_text(json.dumps({"extra_params": {"pretrain.mask_ratio": "0.5"}, "results": [result]}))
    row = claim.compare([json.loads(sweep.read_text())]).splitlines()[-1]
    assert row.startswith("| pretrain.mask_ratio=0.5 | 16 | 1 | 4.00 | 100.00 | 18.00 | 20.00 | 0.50 | 0.80 |")
    assert row.endswith("| 32.00 | 0.71 | 30.00 | 20.00 |")
    # Results collected before token-blocks existed still tabulate, as n/a.
    old = {k: v for k, v in result.items() if "token_blocks" not in k}
    assert claim.summarise([old]).splitlines()[-1].endswith("| n/a | n/a | n/a |")


def test_the_device_comes_from_the_machine_the_run_trained_on(tmp_path: Path) -> None:
    (tmp_path / claim.DEVICES_FILE).write_text(json.dumps({"cpu": "Some CPU", "cuda": "NVIDIA H200"}))
    on_gpu = {s: {"stats": {"device": "cuda:0"}} for s in ("pretrain", "finetune", "baseline")}
    assert claim.device_used(tmp_path, on_gpu) == "cuda: NVIDIA H200"  # whatever the collecting machine has
    assert claim.device_used(tmp_path, {"pretrain": {"stats": {}}}) is None  # recorded before the field
    with pytest.raises(ValueError, match="different devices"):
        claim.device_used(tmp_path, {**on_gpu, "baseline": {"stats": {"device": "cpu"}}})


def test_token_blocks_are_backfilled_for_runs_recorded_before_them() -> None:
    """Accounting from before token-blocks existed had k = 0: tokens x blocks, from its model."""
    record = {"config": {"model": {"preset": "tiny", "img_size": 16, "in_chans": 1, "patch_size": 2,
                                   "embed_dim": None, "depth": None, "num_heads": None}},
              "stats": {"tokens_seen": 8 * 640, "visible_tokens_per_image": 8, "images_seen": 640}}
    claim._backfill_token_blocks(record)
    assert record["stats"]["token_blocks_seen"] == 5 * 8 * 640  # tiny: depth 4 -> 2 + 1 + 2 blocks
    assert record["stats"]["token_blocks_per_image"] == 5 * 8
    recorded = {"config": record["config"], "stats": {"tokens_seen": 1, "token_blocks_seen": 7}}
    claim._backfill_token_blocks(recorded)
    assert recorded["stats"]["token_blocks_seen"] == 7  # a recorded value is never replaced


def test_levels_give_the_cost_to_first_reach_each_quality_and_the_ratio() -> None:
    """MaskDM ahead early, behind late: the per-level ratios show what one final-value speed-up hides."""
    run = {"seed": 0, "curves": {
        "maskdm": {"tokens": [6.0, 8.0, 10.0, 12.0], "fd_clf": [90.0, 50.0, 30.0, 25.0]},
        "baseline": {"tokens": [2.0, 4.0, 8.0, 12.0], "fd_clf": [150.0, 100.0, 40.0, 20.0]}}}
    rows = levels.level_rows([run], [100, 50, 30, 20], "tokens")
    got = {row["level"]: row["seeds"][0] for row in rows}
    assert (got[100]["maskdm"], got[100]["baseline"]) == (6.0, 4.0)  # first point at or below the level
    assert got[50]["speedup"] == 8.0 / 8.0
    assert got[30]["speedup"] == 12.0 / 10.0
    assert got[20]["maskdm"] is None and got[20]["speedup"] is None  # never reached: no ratio
    assert "1.20" in levels.table(rows) and "not reached" in levels.table(rows)


def _result(seed: int, maskdm: list[float], baseline: list[float], step: float = 2.0) -> dict[str, Any]:
    def curve(fd: list[float], start: float) -> dict[str, list[float]]:
        xs = [start + step * i for i in range(len(fd))]
        return {"tokens": xs, "token_blocks": [5 * x for x in xs], "fd_clf": fd}
    return {"scale_tokens": 64, "seed": seed, "real_floor": 4.0,
            "curves": {"maskdm": curve(maskdm, 6.0), "baseline": curve(baseline, 2.0)}}


def test_recipes_share_a_reused_baseline_and_average_each_arm_over_its_seeds() -> None:
    """Arms that differ only in pretrain.* share one baseline line, each seed once; min-SNR gets its own."""
    plain = {"extra_params": {}, "results": [_result(0, [90, 40], [150, 30]), _result(1, [70, 20], [130, 10])]}
    dense = {"extra_params": {"pretrain.dense_blocks": "2"}, "results": [_result(0, [80, 50], [150, 30])]}
    snr = {"extra_params": {"diffusion.loss_weighting": "min_snr", "pretrain.mask_ratio": "0.5"},
           "results": [_result(0, [60, 25], [140, 12])]}
    lines = recipes.arms([plain, dense, snr], labels=["90%", "dense", "50%, min-SNR"])
    assert [(line["label"], line["model"], line["seeds"]) for line in lines] == [
        ("baseline", "baseline", [0, 1]),
        ("baseline, diffusion.loss_weighting=min_snr", "baseline", [0]),
        ("90%", "maskdm", [0, 1]), ("dense", "maskdm", [0]), ("50%, min-SNR", "maskdm", [0])]
    mean = recipes.mean_curve(lines[2]["curves"], "token_blocks")
    assert mean["x"].tolist() == [30.0, 40.0]
    assert mean["mean"].tolist() == [80.0, 30.0] and mean["lo"].tolist() == [70.0, 20.0]
    assert mean["hi"].tolist() == [90.0, 40.0]
    assert recipes.mean_curve(lines[0]["curves"], "tokens")["mean"].tolist() == [140.0, 20.0]


def test_recipes_refuse_to_average_seeds_evaluated_at_different_compute() -> None:
    curves = [_result(0, [90, 40], [1, 1])["curves"]["maskdm"],
              _result(1, [90, 40], [1, 1], step=3.0)["curves"]["maskdm"]]
    with pytest.raises(ValueError, match="different tokens"):
        recipes.mean_curve(curves, "tokens")


def test_recipes_draws_the_figure_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for name, extra in (("a", {}), ("b", {"pretrain.dense_blocks": "2"})):
        run = _result(0, [90, 40], [150, 30])
        run.update(final={"maskdm": 40, "baseline": 30}, cost={"pretrain": {"tokens_seen": 6.0, "images_seen": 1.0,
                   "wall_time_s": 1.0, "token_blocks_seen": 30.0}},
                   **{f"speedup_{a}": None for a in ("images", "tokens", "wall", "token_blocks")},
                   **{f"at_equal_{a}": {"maskdm": 40, "baseline": 30} for a in ("images", "tokens", "token_blocks")})
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"extra_params": extra, "results": [run]}))
    recipes.main([*map(str, files), "--out", str(tmp_path / "arms.png")])
    assert (tmp_path / "arms.png").stat().st_size > 10_000
    assert "pretrain.dense_blocks=2" in capsys.readouterr().out
    recipes.main([*map(str, files), "--out", str(tmp_path / "arms.png"), "--labels", "plain", "dense"])
    assert "| dense | 64 |" in capsys.readouterr().out  # the table's rows carry the figure's names
    with pytest.raises(SystemExit):
        recipes.main([*map(str, files), "--out", str(tmp_path / "x.png"), "--labels", "one"])


def test_fd_noise_redraws_the_recorded_final_score_and_other_seeds_differ(smoke_run: Path) -> None:
    """The run's own sampling seed gives back its recorded fd_clf: the redraw is the pipeline's measurement.

    (The smoke models are barely trained, so their samples hardly depend on the noise: other seeds
    differ from the recorded value only in the fifth digit here, by tenths at 64 tokens.)"""
    row = fd_noise.redraw(smoke_run, "baseline", seeds=[7, 8])
    assert row["by_seed"][row["own_seed"]] == pytest.approx(row["recorded"], rel=1e-9)
    assert row["by_seed"][7] != row["recorded"] and row["by_seed"][7] != row["by_seed"][8]
    assert row["std"] > 0 and row["n"] == json.loads(
        (smoke_run / "data/08_reporting/baseline_scores.json").read_text())["fd_clf_n"]
    every = sum(row["by_seed"].values()) / 3
    assert f"| all 1 runs | baseline | | | | | | **{every:.2f}** |" in fd_noise.table([row])


def test_fd_noise_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="baseline.pt"):
        fd_noise.main([str(tmp_path), "--models", "baseline"])


def test_guidance_gives_sparse_guidance_the_steps_cfg_pays_for() -> None:
    """At equal FLOPs per sample sparse guidance gets the most steps within cfg's budget."""
    class Costs:
        def cost(self, model: str, settings: Guidance, steps: int) -> int:
            return steps * (200 if settings.mode == "cfg" else 133)

    budget = Costs().cost("maskdm", Guidance(2.0, "cfg"), 25)
    assert guidance.steps_at_budget(Costs(), "maskdm", Guidance(2.0, "sparse"), budget) == 37  # 37 x 133 <= 5000


@pytest.mark.slow
def test_the_fashion256_gpu_command_runs_on_the_cpu_at_tiny_size(tmp_path: Path, monkeypatch) -> None:
    """The device command of docs/results.md, dry: the fashion32 environment and claim's whole
    machinery on generated IDX files, one seed; the results file has claim's schema."""
    from image_factory import write_fashion_like

    from experiments import fashion256

    monkeypatch.setenv("FASHION_MNIST_DIR", str(write_fashion_like(tmp_path)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "fashion-256.json"
    fashion256.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "runs")])
    record = json.loads(out.read_text())
    (result,) = record["results"]
    assert result["seed"] == 0 and result["scale_tokens"] == 256
    assert result["device"] == f"cpu: {claim.cpu_name()}"
    assert result["budget"]["baseline"] == {"steps": 4, "batch_size": 8}
    assert record["extra_params"]["trainer.device"] == "cpu"
    assert len(result["curves"]["baseline"]["fd_clf"]) >= 2 and out.with_suffix(".png").is_file()
