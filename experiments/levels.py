"""Speed-up to several quality levels, from the curves in ``experiments.claim`` results files.

``claim`` measures the speed-up to one level, the baseline's final fd_clf. Late in training that
one number can hide what happened on the way: MaskDM can reach every intermediate quality sooner
and still never reach the baseline's last value (issue 18 asks for the curves late in training).
This reads the curves a results file already holds and, for each level, gives per seed the
compute each model spent to first reach it (MaskDM charged for its pre-training) and their ratio:
baseline over MaskDM, above 1 where MaskDM got there with less.

    python -m experiments.levels experiments/results/claim-64.json --levels 100 60 35 20 15
    python -m experiments.levels experiments/results/claim-64.json --axis token_blocks

The first point at or below a level counts (curves are evaluated every few hundred steps, so a
cost is an upper bound, as in ``claim``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

AXES = ("tokens", "token_blocks", "images", "wall_s")


def first_reach(curve: dict[str, list[float]], level: float, axis: str) -> float | None:
    """The ``axis`` value at the first evaluation whose fd_clf is at most ``level``; None if never."""
    for cost, value in zip(curve[axis], curve["fd_clf"], strict=True):
        if value is not None and value <= level:
            return float(cost)
    return None


def level_rows(results: list[dict[str, Any]], levels: list[float], axis: str) -> list[dict[str, Any]]:
    """Per level: each seed's cost to reach it for both models and the baseline / MaskDM ratio."""
    rows = []
    for level in levels:
        seeds = []
        for r in results:
            maskdm = first_reach(r["curves"]["maskdm"], level, axis)
            baseline = first_reach(r["curves"]["baseline"], level, axis)
            seeds.append({"seed": r["seed"], "maskdm": maskdm, "baseline": baseline,
                          "speedup": baseline / maskdm if maskdm and baseline else None})
        rows.append({"level": level, "axis": axis, "seeds": seeds})
    return rows


def _cell(values: list[float | None], scale: float = 1.0, digits: int = 2) -> str:
    got = [v / scale for v in values if v is not None]
    if not got:
        return "not reached"
    text = f"{statistics.mean(got):.{digits}f}" + (f" ± {statistics.stdev(got):.{digits}f}" if len(got) > 1 else "")
    missing = len(values) - len(got)
    return text + (f" ({missing} of {len(values)} never)" if missing else "")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, mean ± std over seeds (costs in millions, wall time in seconds)."""
    axis = rows[0]["axis"] if rows else "tokens"
    scale, unit = (1.0, "s") if axis == "wall_s" else (1e6, "M")
    lines = [f"| fd_clf level | MaskDM {axis} ({unit}) | baseline {axis} ({unit}) | speed-up (baseline / MaskDM) |",
             "|---|---|---|---|"]
    for row in rows:
        seeds = row["seeds"]
        lines.append(f"| {row['level']:g} | {_cell([s['maskdm'] for s in seeds], scale, 1)} | "
                     f"{_cell([s['baseline'] for s in seeds], scale, 1)} | {_cell([s['speedup'] for s in seeds])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="a results file of python -m experiments.claim")
    parser.add_argument("--levels", nargs="+", type=float, default=[100, 60, 35, 20, 15])
    parser.add_argument("--axis", choices=AXES, default="tokens")
    parser.add_argument("--scale", default=None, help="only the runs of this scale (tokens), if the file has several")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())["results"]
    if args.scale is not None:
        results = [r for r in results if str(r["scale_tokens"]) == args.scale]
    if not results:
        raise SystemExit(f"{args.results}: no runs{' of scale ' + args.scale if args.scale else ''}")
    print(table(level_rows(results, args.levels, args.axis)))  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
