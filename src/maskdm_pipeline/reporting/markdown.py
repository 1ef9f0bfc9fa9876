"""The Markdown report: quality and compute tables, the reach section and a reading of the numbers.

Pure (no Kedro). MaskDM is always charged for its pre-training: its totals are pre-training +
fine-tuning. Lower fd_clf / FID is better.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from maskdm_pipeline.reporting.curves import (
    _N_KEYS,
    STAGES,
    Curve,
    StageCost,
    compare_curves,
)

MODELS = {"maskdm": "MaskDM (masked pre-train + fine-tune)", "baseline": "Baseline (from scratch)"}
# Below this relative gap, a one-seed comparison without error bars is "too close to call".
CLOSE_CALL = 0.10
# An evaluation made before this fraction of the equal-compute budget is called coarse.
STALE = 0.75


def _fmt(x: float | int | None, digits: int = 2) -> str:
    """Integers with thousands separators, floats with ``digits`` decimals, missing as n/a."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    return f"{float(x):,.{digits}f}"


def _count(x: float | None) -> str:
    """A count that may be unknown (NaN or None) as 1,234 or n/a."""
    return _fmt(int(x)) if x is not None and math.isfinite(x) else "n/a"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _n_of(entry: Mapping[str, Any]) -> int | None:
    return next((int(entry[k]) for k in _N_KEYS if entry.get(k) is not None), None)


def _unavailable(reason: str, notes: list[str]) -> str:
    """A table cell for a missing value; a long reason (e.g. where to put the FID weights)
    becomes a numbered note under the table, printed once instead of in every cell."""
    if len(reason) <= 80:
        return f"unavailable: {reason}"
    if reason not in notes:
        notes.append(reason)
    return f"unavailable [{notes.index(reason) + 1}]"


def _fd_clf_cell(entry: Mapping[str, Any], card: Mapping[str, Any], notes: list[str]) -> str:
    if entry.get("fd_clf") is not None:
        n = _n_of(entry)
        return f"{_fmt(entry['fd_clf'])} (N={n})" if n else _fmt(entry["fd_clf"])
    if entry.get("fd_clf_reason"):
        return _unavailable(str(entry["fd_clf_reason"]), notes)
    if card.get("labels") is False:
        reason = "the data have no class labels, so there is no classifier for fd_clf"
        return _unavailable(reason, notes)
    return _unavailable("not computed", notes)


def quality_table(metrics: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """A row per model: FID (or why not), fd_clf with its N, the real-data floor, samples."""
    notes: list[str] = []
    floor = metrics.get("real_floor") or {}
    floor_cell = _fd_clf_cell(floor, card, notes) if floor else "n/a"
    rows = []
    for key, name in MODELS.items():
        entry = metrics.get(key) or {}
        fid = entry.get("fid")
        fid_cell = _fmt(fid) if fid is not None else _unavailable(
            str(entry.get("fid_reason") or "not computed"), notes)
        rows.append([name, fid_cell, _fd_clf_cell(entry, card, notes), floor_cell,
                     _fmt(entry.get("n_samples"))])
    header = ["model", "FID", "fd_clf", "real-data floor (fd_clf)", "samples"]
    if any("class_accuracy" in (metrics.get(key) or {}) for key in MODELS):  # class-conditional models
        header.append("class accuracy")
        for row, key in zip(rows, MODELS, strict=True):
            entry = metrics.get(key) or {}
            row.append(_fmt(entry["class_accuracy"], 3) if entry.get("class_accuracy") is not None else
                       _unavailable(str(entry.get("class_accuracy_reason") or "not computed"), notes))
    table = md_table(header, rows)
    footnotes = "\n".join(f"[{i}] {text}  " for i, text in enumerate(notes, 1))
    return f"{table}\n\n{footnotes}" if notes else table


def compute_table(costs: Mapping[str, StageCost | None]) -> str:
    """Wall time, images, tokens, token-blocks, img/s per stage; MaskDM's total and its ratio to
    the baseline. Token-blocks not recorded (older accountings) show as n/a, never as free."""
    pre, fine, base = (costs.get(s) for s in STAGES)
    total = pre + fine if pre and fine else None
    if total and not (pre.token_blocks_seen and fine.token_blocks_seen):
        total = replace(total, token_blocks_seen=0)  # a part unknown: the sum is unknown
    rows = []
    for name, cost in [("pretrain (masked)", pre), ("finetune", fine),
                       ("**MaskDM total** (pretrain + finetune)", total),
                       ("**baseline** (from scratch)", base)]:
        rows.append([name, "missing", "", "", "", "", "", ""] if cost is None else [
            name, _fmt(cost.wall_time_s, 1), _fmt(cost.images_seen), _fmt(cost.tokens_seen),
            _fmt(cost.token_blocks_seen or None), _fmt(cost.img_per_s, 0), _fmt(cost.steps),
            cost.device])
    if total and base and base.wall_time_s > 0 and base.images_seen > 0:
        blocks = (f"{total.token_blocks_seen / base.token_blocks_seen:.2f}x"
                  if total.token_blocks_seen and base.token_blocks_seen else "n/a")
        rows.append(["MaskDM total / baseline", f"{total.wall_time_s / base.wall_time_s:.2f}x",
                     f"{total.images_seen / base.images_seen:.2f}x",
                     f"{total.tokens_seen / max(base.tokens_seen, 1):.2f}x", blocks, "", "", ""])
    return md_table(["stage", "wall time (s)", "images", "tokens", "token-blocks", "img/s", "steps",
                     "device"], rows)


def _mask_text(mask: Mapping[str, Any] | None) -> str:
    if mask is None:
        return "none"
    if mask["kind"] == "crop":
        return f"crop, {mask['crop_size']}x{mask['crop_size']} patches kept"
    blocks = f" in {mask['block_size']}x{mask['block_size']}-patch blocks" if mask["kind"] == "block" else ""
    return f"{mask['kind']}, {mask['ratio']:.0%} dropped{blocks}"


def recipe_table(metrics: Mapping[str, Any]) -> str:
    """A row per model and stage: mask, dense blocks, target and loss weighting, hflip (the
    ``recipe`` of ``metrics.json``, ``training.resume.stage_recipe``)."""
    rows = []
    for key, name in MODELS.items():
        for stage, r in ((metrics.get(key) or {}).get("recipe") or {"?": None}).items():
            if r is None:
                rows.append([name, stage, "n/a", "", "", ""])
                continue
            weighting = (f"min-SNR, gamma {r['min_snr_gamma']:g}" if r["loss_weighting"] == "min_snr"
                         else "unweighted")
            dense = "-" if r["dense_blocks"] is None else str(r["dense_blocks"])
            rows.append([name, stage, _mask_text(r["mask"]), dense,
                         f"{r['prediction']} prediction ({r['schedule']}), {weighting}", f"{r['hflip']:g}"])
    return md_table(["model", "stage", "mask", "dense blocks", "loss", "hflip"], rows)


def reach_section(maskdm: Curve, baseline: Curve, cmp: Mapping[str, Any]) -> str:
    """Markdown: compute MaskDM needed to reach the baseline's last training-time probe (the fd_clf
    measured on ``<stage>.eval_num_samples`` samples during training, not the final score of the
    sampled images); quality at equal compute, from the probes too."""
    if maskdm.empty or baseline.empty:
        missing = " and ".join(c.label for c in (maskdm, baseline) if c.empty)
        return (f"No periodic fd_clf evaluations were recorded for {missing}, so there is no "
                "quality-vs-compute curve to read this from. Periodic evaluations need labelled data "
                "and `finetune.eval_every` / `baseline.eval_every` > 0; the tables above and the "
                "reading below compare end points only.")
    lines = []
    if maskdm.n != baseline.n:
        lines.append(f"Note: the periodic evaluations used different sample counts (MaskDM "
                     f"N={maskdm.n}, baseline N={baseline.n}); fd_clf depends on N.")
    target, reach = cmp["target"], cmp["reach"]
    probe = (f"the baseline's last training-time probe (fd_clf {_fmt(target)} on N={baseline.n} samples "
             f"drawn during training, `baseline.eval_num_samples`, after {_fmt(cmp['baseline_wall_s'], 1)} s; "
             "not the final score in the table above)")
    if reach is None:
        best = float(maskdm.points["fd_clf"].min())
        lines.append(f"- **MaskDM did not reach** {probe} in any of its own probes; its best "
                     f"was {_fmt(best)}.")
    else:
        base_s = cmp["baseline_wall_s"]
        frac = f"{reach['wall_s'] / base_s:.2f}x" if base_s > 0 else "n/a"
        lines.append(f"- MaskDM reached {probe} by "
                     f"**{_fmt(reach['wall_s'], 1)} s** of total training "
                     f"({_fmt(int(reach['images']))} images, {_count(reach.get('tokens'))} tokens, "
                     f"{_count(reach.get('token_blocks'))} token-blocks, "
                     f"step {_fmt(int(reach['step']))}, "
                     f"both counting pre-training), i.e. {frac} the baseline's "
                     f"{_fmt(base_s, 1)} s (MaskDM's first probe at or below it: an upper bound).")
    rows = []
    for key, curve in (("maskdm", maskdm), ("baseline", baseline)):
        q = cmp["at_budget"].get(key)
        rows.append([curve.label, _fmt(q["fd_clf"]) if q else "no evaluation yet",
                     f"{_fmt(q['wall_s'], 1)} s" if q else ""])
    lines.append(f"- Quality at equal compute (the smaller total training budget, "
                 f"{_fmt(cmp['budget_s'], 1)} s of wall time; the latest training-time probe within it):\n\n"
                 + md_table(["model", f"fd_clf (N={maskdm.n})", "measured at"], rows))
    return "\n".join(lines)


def _verdict(a: float, b: float) -> tuple[str, float]:
    """('maskdm' | 'baseline' | 'tie', relative gap) for two lower-is-better numbers."""
    gap = abs(a - b) / max(abs(a), abs(b), 1e-12)
    return ("tie" if a == b else "maskdm" if a < b else "baseline"), gap


def _equal_compute_sentence(cmp: Mapping[str, Any]) -> str:
    qm, qb = cmp["at_budget"].get("maskdm"), cmp["at_budget"].get("baseline")
    budget = f"At equal wall time ({_fmt(cmp['budget_s'], 1)} s)"
    if not (qm and qb):
        late = "MaskDM" if not qm else "the baseline"
        return f"{budget} {late} had not been evaluated yet, so no equal-compute comparison."
    who, gap = _verdict(qm["fd_clf"], qb["fd_clf"])
    lo, hi = sorted((qm["fd_clf"], qb["fd_clf"]))
    if who == "tie" or gap < CLOSE_CALL:
        text = (f"{budget} they measure within {CLOSE_CALL:.0%} of each other ({_fmt(lo)} vs "
                f"{_fmt(hi)}): too close to call")
    else:
        text = (f"{budget} {'MaskDM' if who == 'maskdm' else 'the baseline'} measures better "
                f"({_fmt(lo)} vs {_fmt(hi)}), so in this run masked pre-training "
                f"{'paid off' if who == 'maskdm' else 'did not pay off'} at equal compute")
    # An evaluation long before the budget makes "equal compute" coarse: say so.
    stale = [(name, q) for name, q in (("MaskDM", qm), ("the baseline", qb))
             if q["wall_s"] < STALE * cmp["budget_s"]]
    if stale:
        text += " (coarse: " + ", ".join(
            f"{name} was last evaluated at {_fmt(q['wall_s'], 1)} s" for name, q in stale) + ")"
    return text + "."


def reading(metrics: Mapping[str, Any], costs: Mapping[str, StageCost | None],
            cmp: Mapping[str, Any]) -> str:
    """One honest paragraph built only from the numbers at hand."""
    m, b = metrics.get("maskdm") or {}, metrics.get("baseline") or {}
    s: list[str] = []
    metric = next((k for k in ("fd_clf", "fid") if m.get(k) is not None and b.get(k) is not None),
                  None)
    if metric is None:
        s.append("Neither fd_clf nor FID is available for both models, so this run cannot say "
                 "which model samples better; only the costs below are comparable.")
    else:
        who, gap = _verdict(float(m[metric]), float(b[metric]))
        name = "fd_clf" if metric == "fd_clf" else "FID"
        n = m.get(f"{metric}_n") if m.get(f"{metric}_n") == b.get(f"{metric}_n") else None
        final = f"final {name} of the sampled images" + (f" (N={n})" if n else "")
        if who == "tie":
            s.append(f"Both models reach the same {final} ({_fmt(m[metric])}).")
        else:
            win, lose = (m, b) if who == "maskdm" else (b, m)
            s.append(f"By the {final}, {'MaskDM' if who == 'maskdm' else 'the baseline'} is "
                     f"better: {_fmt(win[metric])} vs {_fmt(lose[metric])} ({gap:.0%} lower).")
        floor = (metrics.get("real_floor") or {}).get(metric)
        if floor is not None:
            s.append(f"Two sets of real images score {_fmt(floor)} against each other, so MaskDM "
                     f"sits {_fmt(m[metric] - floor)} and the baseline {_fmt(b[metric] - floor)} "
                     "above that floor.")
        if who != "tie" and gap < CLOSE_CALL:
            s.append(f"A gap under {CLOSE_CALL:.0%} from one seed without error bars is too close "
                     "to call.")
        if metric == "fd_clf" and m.get("fid") is not None and b.get("fid") is not None:
            s.append(f"FID: {_fmt(m['fid'])} (MaskDM) vs {_fmt(b['fid'])} (baseline).")
    pre, fine, base = (costs.get(k) for k in STAGES)
    if pre and fine and base and base.wall_time_s > 0:
        total = pre + fine
        s.append(f"MaskDM's training took {_fmt(total.wall_time_s, 1)} s "
                 f"({_fmt(pre.wall_time_s, 1)} s pre-training + {_fmt(fine.wall_time_s, 1)} s "
                 f"fine-tuning, {_fmt(total.images_seen)} images) against the baseline's "
                 f"{_fmt(base.wall_time_s, 1)} s ({_fmt(base.images_seen)} images): "
                 f"{total.wall_time_s / base.wall_time_s:.2f}x the wall time.")
        if len({pre.device, fine.device, base.device}) > 1:
            s.append("The stages ran on different devices, so their wall times are not directly "
                     "comparable.")
    else:
        s.append("Some stage accounting is missing, so the total cost cannot be compared.")
    if cmp.get("target") is not None:
        reach = cmp["reach"]
        s.append("On the training-time probe curves MaskDM never reached the baseline's last probe."
                 if reach is None else
                 "On the training-time probe curves MaskDM matched the baseline's last probe after at most "
                 f"{_fmt(reach['wall_s'], 1)} s of total training.")
        s.append(_equal_compute_sentence(cmp))
    else:
        s.append("Without periodic evaluations on both curves, the compute needed to reach a given "
                 "quality is unknown; the comparison rests on end points only.")
    s.append("These are single-run measurements at this run's scale; they say nothing about other "
             "resolutions, datasets or budgets.")
    return " ".join(s)


def build_markdown(metrics: Mapping[str, Any], costs: Mapping[str, StageCost | None],
                   maskdm: Curve, baseline: Curve, card: Mapping[str, Any], guidance: str = "") -> str:
    """The whole report, referring to the figures saved next to it; ``guidance``: the guidance
    section (``reporting.guidance.guidance_section``), placed after the samples when not empty."""
    cmp = compare_curves(maskdm, baseline, costs)
    res = card.get("resolution", "?")
    data = (f"{_fmt(card.get('train'))} training images from `{card.get('source', '?')}` at "
            f"{res}x{res}, {card.get('channels', '?')} channel(s); labels: "
            f"{'yes' if card.get('labels') else 'no'}.") if card else "no dataset card."
    sections = [
        "# MaskDM vs training from scratch",
        f"Data: {data} Lower FID / fd_clf is better. fd_clf is the Frechet distance on the "
        "features of a small classifier trained on the real data (not FID); the real-data floor is "
        "the same distance between two sets of real images.",
        "## Recipes",
        "What each model was trained with (`metrics.json`: `recipe`); dense blocks: the first k "
        "in-blocks see every token before the masked ones are dropped (0: MaskDM).",
        recipe_table(metrics),
        "## Sample quality", quality_table(metrics, card),
        "## Compute",
        "Training wall time only (evaluation and checkpointing excluded); MaskDM is charged for "
        "its pre-training. Tokens: patch tokens fed to the network (visible ones when masked); "
        "token-blocks: patch tokens summed over the network's blocks, so dense blocks count every "
        "token (attention's quadratic part is not counted, see docs/method-in-code.md).",
        compute_table(costs),
        "## Quality vs compute", "![quality vs compute](quality_vs_compute.png)",
        reach_section(maskdm, baseline, cmp),
        "## Reading", reading(metrics, costs, cmp),
        "## Samples", "![samples side by side](samples_side_by_side.png)",
    ]
    if guidance:
        sections.append(guidance)
    return "\n\n".join(sections) + "\n"
