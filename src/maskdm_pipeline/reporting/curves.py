"""Training cost and quality-vs-compute curves for the final report.

Pure (pandas, numpy; no Kedro). The question every run answers is "did masked pre-training pay
off, and by how much compute?", so MaskDM is always charged for its pre-training: its curve
starts where pre-training ended (wall time, images and steps), and its totals are pre-training +
fine-tuning. Lower fd_clf / FID is better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

STAGES = ("pretrain", "finetune", "baseline")
_N_KEYS = ("fd_clf_n", "n_samples", "num_samples", "n")


@dataclass(frozen=True)
class StageCost:
    """What a stage (or a sum of stages) cost to train; evaluation and checkpointing excluded.

    ``tokens_seen`` counts the patch tokens fed to the network (visible ones when masked);
    ``token_blocks_seen`` the patch tokens summed over its blocks (``UViT.token_blocks``), which
    also charges dense-first masking's dense blocks for all their tokens. 0: not recorded.
    """

    wall_time_s: float
    images_seen: int
    tokens_seen: int
    steps: int
    device: str = "?"
    token_blocks_seen: int = 0

    @property
    def img_per_s(self) -> float:
        return self.images_seen / self.wall_time_s if self.wall_time_s > 0 else math.nan

    def __add__(self, other: StageCost) -> StageCost:
        device = self.device if self.device == other.device else f"{self.device}+{other.device}"
        return StageCost(self.wall_time_s + other.wall_time_s,
                         self.images_seen + other.images_seen,
                         self.tokens_seen + other.tokens_seen, self.steps + other.steps, device,
                         self.token_blocks_seen + other.token_blocks_seen)


ZERO_COST = StageCost(0.0, 0, 0, 0, "-")


@dataclass(frozen=True)
class Curve:
    """fd_clf measured during training on the full cost axis (MaskDM's after pre-training)."""

    label: str
    points: pd.DataFrame  # step, wall_s, images, tokens, token_blocks (NaN if unknown), fd_clf; sorted
    n: int | None  # sample count of the periodic evaluations
    offset: StageCost = ZERO_COST  # cost already spent when this curve's step 0 began

    @property
    def empty(self) -> bool:
        return self.points.empty


def stage_cost(accounting: Mapping[str, Any] | None,
               fallback: Mapping[str, Any] | None = None) -> StageCost | None:
    """A stage's cost from its accounting record, else ``metrics["stages"][stage]``; or None."""
    stats = dict((accounting or {}).get("stats") or {}) or dict(fallback or {})
    if not stats or stats.get("wall_time_s") is None:
        return None
    return StageCost(float(stats["wall_time_s"]), int(stats.get("images_seen") or 0),
                     int(stats.get("tokens_seen") or 0), int(stats.get("steps") or 0),
                     str(stats.get("device", "?")), int(stats.get("token_blocks_seen") or 0))


def eval_points(accounting: Mapping[str, Any] | None,
                history: pd.DataFrame | None) -> tuple[pd.DataFrame, int | None]:
    """A stage's periodic fd_clf evaluations (step, elapsed_s, images_seen, tokens_seen,
    token_blocks_seen, fd_clf), and their N.

    The accounting's ``evals`` list is the primary source; the history table's fd_clf column is
    the fallback (its eval rows may lack elapsed_s, which is then interpolated from the log rows).
    tokens_seen is images_seen times the stage's tokens per image (visible tokens when masked,
    from the accounting's totals): the compute axis on which masking's saving shows;
    token_blocks_seen likewise with the token-blocks per image (dense blocks charged in full).
    Both NaN when the accounting does not record them.
    """
    cols = ["step", "elapsed_s", "images_seen", "fd_clf"]
    evals = pd.DataFrame(list((accounting or {}).get("evals") or []))
    source = evals if "fd_clf" in evals else None
    if source is None and history is not None and "fd_clf" in history:
        source = history.copy()
        logged = history.dropna(subset=["elapsed_s"]) if "elapsed_s" in history else history[:0]
        if "elapsed_s" not in source or source["elapsed_s"].isna().any():
            source["elapsed_s"] = (np.interp(source["step"], logged["step"], logged["elapsed_s"])
                                   if len(logged) else np.nan)
        if "images_seen" not in source:
            stage = ((accounting or {}).get("config") or {}).get("stage") or {}
            source["images_seen"] = source["step"] * stage.get("batch_size", np.nan)
    if source is None:
        return pd.DataFrame(columns=cols), None
    n = next((int(source[k].dropna().iloc[-1]) for k in _N_KEYS
              if k in source and source[k].notna().any()), None)
    points = source.reindex(columns=cols).apply(pd.to_numeric, errors="coerce")
    stats = (accounting or {}).get("stats") or {}
    images = stats.get("images_seen") or 0
    for key in ("tokens_seen", "token_blocks_seen"):
        total = stats.get(key) or 0
        points[key] = points["images_seen"] * (total / images if images and total else np.nan)
    points = points.dropna(subset=["step", "elapsed_s", "fd_clf"]).sort_values("step")
    return points.reset_index(drop=True), n


def quality_curve(label: str, points: pd.DataFrame, n: int | None,
                  offset: StageCost = ZERO_COST) -> Curve:
    """Put a stage's evaluations on the cumulative cost axis, shifted by the cost before it.

    A cost before it without token-blocks (an accounting older than them) leaves that axis
    NaN rather than charging nothing: pre-training never looks free.
    """
    unknown = offset.images_seen and not offset.token_blocks_seen
    shifted = pd.DataFrame({
        "step": points["step"] + offset.steps,
        "wall_s": points["elapsed_s"] + offset.wall_time_s,
        "images": points["images_seen"].fillna(0) + offset.images_seen,
        "tokens": _column(points, "tokens_seen") + offset.tokens_seen,
        "token_blocks": _column(points, "token_blocks_seen") + (np.nan if unknown else offset.token_blocks_seen),
        "fd_clf": points["fd_clf"],
    })
    return Curve(label, shifted.reset_index(drop=True), n, offset)


def _column(points: pd.DataFrame, name: str) -> pd.Series:
    return points.get(name, pd.Series(np.nan, index=points.index))


def cost_to_reach(curve: Curve, target: float) -> dict[str, float] | None:
    """The first evaluation of ``curve`` with fd_clf <= ``target`` (None: never reached).

    Reported at that evaluation, not interpolated: the crossing happened at or before it,
    so this is an upper bound on the compute needed, at the resolution of ``eval_every``.
    """
    hits = curve.points[curve.points["fd_clf"] <= target]
    if hits.empty:
        return None
    return {k: float(v) for k, v in hits.iloc[0].items()}


def quality_at(curve: Curve, budget_s: float) -> dict[str, float] | None:
    """The latest measured quality within a wall-time budget (None: no evaluation so early)."""
    within = curve.points[curve.points["wall_s"] <= budget_s + 1e-9]
    if within.empty:
        return None
    return {k: float(v) for k, v in within.iloc[-1].items()}


def compare_curves(maskdm: Curve, baseline: Curve,
                   costs: Mapping[str, StageCost | None]) -> dict[str, Any]:
    """Compute to reach the baseline's last training-time probe (fd_clf), and both qualities at the smaller budget."""
    out: dict[str, Any] = {"target": None, "reach": None, "budget_s": None, "at_budget": {}}
    if maskdm.empty or baseline.empty:
        return out
    out["target"] = float(baseline.points["fd_clf"].iloc[-1])
    out["baseline_wall_s"] = float(baseline.points["wall_s"].iloc[-1])
    out["reach"] = cost_to_reach(maskdm, out["target"])
    pre, fine, base = (costs.get(s) for s in STAGES)
    ends = [float(c.points["wall_s"].iloc[-1]) for c in (maskdm, baseline)]
    if pre and fine and base:
        ends = [(pre + fine).wall_time_s, base.wall_time_s]
    out["budget_s"] = min(ends)
    out["at_budget"] = {"maskdm": quality_at(maskdm, out["budget_s"]),
                        "baseline": quality_at(baseline, out["budget_s"])}
    return out


@dataclass(frozen=True)
class QualityVsCompute:
    """Per-stage costs and both quality curves: what the report's text and its figure share,
    computed once per run."""

    costs: Mapping[str, StageCost | None]  # pretrain / finetune / baseline; None when unknown
    maskdm: Curve  # fine-tuning evaluations, shifted by the pre-training cost
    baseline: Curve


def quality_vs_compute(
    metrics: Mapping[str, Any],
    accountings: Mapping[str, Mapping[str, Any] | None],
    finetune_history: pd.DataFrame | None,
    baseline_history: pd.DataFrame | None,
) -> QualityVsCompute:
    """Per-stage costs from the accounting records (``accountings`` by stage), falling back to
    ``metrics["stages"]``; MaskDM's fine-tuning evaluations shifted by the pre-training cost, and
    the baseline's. Used by the report pipeline and ``experiments.claim``."""
    stages = metrics.get("stages") or {}
    costs = {s: stage_cost(accountings.get(s), stages.get(s)) for s in STAGES}
    points, n = eval_points(accountings.get("finetune"), finetune_history)
    maskdm = quality_curve("MaskDM", points, n, costs.get("pretrain") or ZERO_COST)
    points, n = eval_points(accountings.get("baseline"), baseline_history)
    return QualityVsCompute(costs, maskdm, quality_curve("baseline", points, n))


def final_points(
    metrics: Mapping[str, Any], costs: Mapping[str, StageCost | None]
) -> dict[str, tuple[float, float, int | None]]:
    """model -> (total training wall s, final fd_clf, its N) where both are known; MaskDM's total
    is pre-training + fine-tuning."""
    pre, fine = costs.get("pretrain"), costs.get("finetune")
    totals = {"maskdm": pre + fine if pre and fine else None, "baseline": costs.get("baseline")}
    finals = {}
    for key, total in totals.items():
        entry = metrics.get(key) or {}
        if total is not None and entry.get("fd_clf") is not None:
            finals[key] = (total.wall_time_s, float(entry["fd_clf"]), entry.get("fd_clf_n"))
    return finals
