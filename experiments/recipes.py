"""One table and one figure over recipes: each MaskDM arm's mean curve beside its baseline's.

``claim`` draws one results file at a time, one line per seed. Issue 18 compares several arms
(90% masks, dense-first masking, 50% masks, min-SNR), each in its own results file, and asks for
the curves late in training. This puts them in one picture: per arm, the mean fd_clf over its
seeds with the band between its best and worst seed, on the two compute axes that do not depend
on machine load (tokens, token-blocks). Arms that reused one baseline (``--baseline-from``) share
it: a baseline sees the scale and every ``--params`` key outside ``pretrain.*``, so files that
agree on those share one baseline line, and each seed counts once.

    python -m experiments.recipes experiments/results/claim-64.json \\
        experiments/results/claim-64-dense2.json --out experiments/results/recipes-64.png

The table printed is ``claim --compare``'s, one row per file, named by ``--labels`` if given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from experiments import claim
from maskdm_pipeline.reporting.figures import AXES

PLOT_AXES = ("tokens", "token_blocks")  # independent of machine load, unlike wall time


def mean_curve(curves: list[dict[str, list[float]]], axis: str) -> dict[str, np.ndarray]:
    """Mean, min and max fd_clf over seeds at each evaluation, against ``axis``.

    The seeds of one arm spend the same compute per step, so their evaluations fall at the same
    ``axis`` values; only the points every seed reached are kept (a shorter curve truncates).

    Args:
        curves: per seed, the ``curves[model]`` record of a ``claim`` result.
        axis: one of ``tokens``, ``token_blocks``, ``images``.

    Returns:
        ``x``, ``mean``, ``lo``, ``hi``: float64 arrays of one length. A missing fd_clf is NaN.

    Raises:
        ValueError: the seeds' evaluations do not fall at the same ``axis`` values.
    """
    n = min(len(c[axis]) for c in curves)
    xs = np.array([c[axis][:n] for c in curves], dtype=np.float64)
    if not np.allclose(xs, xs[0], rtol=1e-9):
        raise ValueError(f"seeds evaluated at different {axis}: one arm's runs must share their recipe")
    fd = np.array([[np.nan if v is None else v for v in c["fd_clf"][:n]] for c in curves], dtype=np.float64)
    return {"x": xs[0], "mean": fd.mean(axis=0), "lo": fd.min(axis=0), "hi": fd.max(axis=0)}


def arms(records: list[dict[str, Any]], labels: list[str] | None = None) -> list[dict[str, Any]]:
    """The lines to draw: one per MaskDM arm (one per file) and one per distinct baseline recipe.

    Args:
        records: loaded ``claim`` results files, each of one scale.
        labels: one per record, naming its MaskDM arm; default: "MaskDM, " and its ``--params``.

    Returns:
        Dicts with ``label``, ``model`` (``maskdm`` or ``baseline``), ``seeds`` (sorted list),
        ``curves`` (per seed) and ``real_floor``; the baselines come first, one per distinct
        (scale, ``--params`` outside ``pretrain.*``).
    """
    baselines: dict[str, dict[str, Any]] = {}
    maskdm = []
    for i, record in enumerate(records):
        extra, results = record["extra_params"], record["results"]
        rest = claim.setting_label(claim.baseline_params(extra))
        for r in results:
            key = json.dumps([r["scale_tokens"], rest])
            line = baselines.setdefault(key, {"label": "baseline" + (f", {rest}" if rest else ""),
                                              "model": "baseline", "by_seed": {}, "real_floor": r["real_floor"]})
            line["by_seed"].setdefault(r["seed"], r["curves"]["baseline"])
        maskdm.append({"label": labels[i] if labels else "MaskDM, " + (claim.setting_label(extra) or "as configured"),
                       "model": "maskdm", "seeds": sorted(r["seed"] for r in results),
                       "curves": [r["curves"]["maskdm"] for r in sorted(results, key=lambda r: r["seed"])],
                       "real_floor": results[0]["real_floor"]})
    lines = []
    for line in baselines.values():
        seeds = sorted(line.pop("by_seed").items())
        lines.append({**line, "seeds": [s for s, _ in seeds], "curves": [c for _, c in seeds]})
    return lines + maskdm


def plot(lines: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """fd_clf (log) against tokens and token-blocks: a mean line and a min-max band per arm."""
    from matplotlib.figure import Figure  # only the plot needs matplotlib
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, len(PLOT_AXES))
    for ax, axis in zip(axes, PLOT_AXES, strict=True):
        for i, line in enumerate(lines):
            c = mean_curve(line["curves"], axis)
            style = {"color": "0.15" if line["model"] == "baseline" else f"C{i}",
                     "ls": "--" if line["model"] == "baseline" and i else "-"}
            ax.plot(c["x"], c["mean"], marker="o", ms=2.5, lw=1.4, **style,
                    label=f"{line['label']} ({len(line['seeds'])} seed{'s' * (len(line['seeds']) > 1)})")
            if len(line["seeds"]) > 1:
                ax.fill_between(c["x"], c["lo"], c["hi"], color=style["color"], alpha=0.12, lw=0)
        ax.axhline(lines[0]["real_floor"], color="0.5", ls=":", lw=0.9, label="real-data floor")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel("fd_clf, mean over seeds (band: best to worst seed)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7.5)
    fig.suptitle(title or "fd_clf vs compute, per recipe (MaskDM charged for its pre-training)")
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results files of python -m experiments.claim")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    parser.add_argument("--labels", nargs="+", default=None, help="one per results file: its MaskDM arm's name")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.results):
        parser.error(f"--labels: {len(args.labels)} given for {len(args.results)} results files; give one per file")
    records = [json.loads(p.read_text()) for p in args.results]
    for path, record in zip(args.results, records, strict=True):
        if len({r["scale_tokens"] for r in record["results"]}) != 1:
            raise SystemExit(f"{path}: holds {'no runs' if not record['results'] else 'several scales'}; "
                             "give results files of one scale each")
    plot(arms(records, args.labels), args.out, args.title)
    print(claim.compare(records, args.labels))  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
