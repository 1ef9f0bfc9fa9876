"""The report's guidance part: fd_clf and class accuracy against the guidance scale, and what each
guidance mode costs (pure: matplotlib, no Kedro).

Reads the evaluate stage's sweeps (``<model>_guidance_sweep.json``, ``fd_clf.guidance_sweep``):
per model, the points ``{"scale", "fd_clf", "class_accuracy", "flops_per_sample", ...}`` and the
forward-pass FLOPs per sample of each mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from maskdm_pipeline.reporting.markdown import MODELS, _fmt, md_table

STYLES = {"maskdm": "tab:blue", "baseline": "tab:orange"}
_MODE_NAMES = {"none": "no guidance", "cfg": "cfg (second pass: no label)",
               "sparse": "sparse (second pass on 1 - r of the patches)"}


def _available(sweeps: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {key: sweep for key, sweep in sweeps.items() if sweep and sweep.get("available")}


def guidance_section(sweeps: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: the sweep's numbers per model and scale, and each mode's FLOPs per sample;
    ``""`` when no model was swept (an unconditional model under cfg, an empty sweep)."""
    swept = _available(sweeps)
    if not swept:
        return ""
    first = next(iter(swept.values()))
    interval = first.get("guidance_interval")
    where = "every step" if interval is None else f"noise levels sigma in ({interval[0]:g}, {interval[1]:g}]"
    mode = first["guidance"] + (f", r = {first['sparse_mask_ratio']:g}" if first["guidance"] == "sparse" else "")
    header = ["model", "w", f"fd_clf (N={first['num_samples']})", "class accuracy", "GFLOPs / sample"]
    rows = [[MODELS[key].split(" (")[0], f"{p['scale']:g}", _fmt(p.get("fd_clf")), _fmt(p.get("class_accuracy"), 3),
             _fmt(p["flops_per_sample"] / 1e9, 3)]
            for key, sweep in swept.items() for p in sweep["points"]]
    cost_rows = [[MODELS[key].split(" (")[0], *(_fmt(f / 1e9, 3) if f is not None else "n/a (unconditional)"
                                                for f in (sweep["flops_per_sample"].get(m)
                                                          for m in ("none", "cfg", "sparse")))]
                 for key, sweep in swept.items()]
    ceiling = first.get("classifier_accuracy")
    lines = [
        "## Guidance",
        f"D = D_weak + w (D_strong - D_weak), w = 1 no guidance; mode {mode}, {where}, "
        f"{first['sampler']} with {first['steps']} steps, the same seeds and classes at every w "
        "(docs/guidance.md). Class accuracy: how often the fd_clf classifier sees the class a sample "
        "was asked for" + (f"; on held-out real images it scores {ceiling:.3f}: samples above that are "
                            "more prototypical than real ones, not better (fd_clf shows what that costs)."
                            if ceiling else "."),
        "![guidance sweep](guidance_sweep.png)",
        md_table(header, rows),
        f"Forward-pass FLOPs per sample of each mode at any w != 1 ({where}; the {first['steps']}-step sampler; "
        "counted from the architecture: `models/flops.py`):",
        md_table(["model", *(_MODE_NAMES[m] for m in ("none", "cfg", "sparse"))], cost_rows),
    ]
    return "\n\n".join(lines)


def guidance_figure(sweeps: Mapping[str, Mapping[str, Any]]) -> Figure:
    """fd_clf (left) and class accuracy (right) against the guidance scale w, one line per model."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    swept = _available(sweeps)
    for key, sweep in swept.items():
        points = sweep["points"]
        scales = [p["scale"] for p in points]
        label = MODELS[key].split(" (")[0]
        left.plot(scales, [p.get("fd_clf") for p in points], "o-", color=STYLES[key], label=label)
        if any(p.get("class_accuracy") is not None for p in points):
            right.plot(scales, [p.get("class_accuracy") for p in points], "o-", color=STYLES[key], label=label)
    left.set_ylabel("fd_clf (lower is better)")
    right.set_ylabel("class accuracy (higher is better)")
    for ax in (left, right):
        ax.set_xlabel("guidance scale w (1: none)")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    if not swept:  # one message across the empty figure, not over an axis label
        reasons = {sweep.get("reason") for sweep in sweeps.values() if sweep}
        for ax in (left, right):
            ax.set_axis_off()
        fig.text(0.5, 0.5, "no guidance sweep:\n" + "\n".join(sorted(r for r in reasons if r))[:300],
                 ha="center", va="center", fontsize=9, color="0.4", wrap=True)
    mode = next((s["guidance"] for s in swept.values()), None)
    fig.suptitle("Guidance sweep" + (f" ({mode})" if mode else ""))
    return fig
