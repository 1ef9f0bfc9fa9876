"""The transfer claim (paper section 4.4: VGGFace2 -> 10% / 1% of CelebA-HQ, "46% better FID"),
measured on digits with ``--env transfer``: pre-train on MNIST, fine-tune on a few-shot subset of
scikit-learn's digits, against the same fine-tuning from scratch, over several seeds.

    python -m experiments.transfer --seeds 0 1 2

For each seed the 10% run is a full ``kedro run --env transfer``; the 1% run reuses its
pre-trained model (pre-training never sees the target) and reruns every later stage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from experiments.claim import ROOT, is_started, kedro_run, new_project

LATER_STAGES = "preprocess,finetune,baseline,sample,evaluate,report"


def _seeds(seed: int) -> str:
    return f"pretrain.seed={100 * seed},finetune.seed={100 * seed + 1},baseline.seed={100 * seed + 1}"


def run_seed(seed: int, workdir: Path, threads: int) -> list[dict[str, Any]]:
    ten, one = workdir / f"seed{seed}-10pct", workdir / f"seed{seed}-1pct"
    # A copy left by an interrupted invocation is resumed, not wiped (see claim.is_started).
    resume = ["--only-missing-outputs"]
    if not (ten / "data/08_reporting/metrics.json").is_file():
        started = is_started(ten)
        if not started:
            new_project(ten)
        kedro_run(ten, ["--env", "transfer", "--params", f"{_seeds(seed)},preprocess.subset=0.1",
                        *(resume if started else [])], threads)
    if not (one / "data/08_reporting/metrics.json").is_file():
        started = is_started(one)
        if not started:
            new_project(one)
            for rel in ("06_models/pretrained.pt", "08_reporting/pretrain_accounting.json",
                        "08_reporting/pretrain_history.csv"):
                shutil.copy(ten / "data" / rel, one / "data" / rel)  # the pre-training and what it cost
        kedro_run(one, ["--env", "transfer", "--pipelines", LATER_STAGES, "--params",
                        f"{_seeds(seed)},preprocess.subset=0.01", *(resume if started else [])], threads)
    return [collect(ten, seed, 0.1), collect(one, seed, 0.01)]


def collect(root: Path, seed: int, subset: float) -> dict[str, Any]:
    metrics = json.loads((root / "data/08_reporting/metrics.json").read_text())
    card = json.loads((root / "data/08_reporting/dataset_card.json").read_text())
    maskdm, baseline = metrics["maskdm"]["fd_clf"], metrics["baseline"]["fd_clf"]
    return {
        "seed": seed, "subset": subset, "train_images": card["train"],
        "fd_clf": {"maskdm": maskdm, "baseline": baseline, "real_floor": metrics["real_floor"]["fd_clf"]},
        "fd_clf_n": metrics["maskdm"]["fd_clf_n"],
        "relative_improvement": (baseline - maskdm) / baseline,
    }


def summarise(results: list[dict[str, Any]]) -> str:
    lines = ["| target subset | training images | seeds | fd_clf MaskDM | fd_clf from scratch | real floor | "
             "relative improvement (1 - MaskDM / scratch) |", "|---|---|---|---|---|---|---|"]

    def spread(values: list[float], pct: bool = False) -> str:
        scale = 100 if pct else 1
        mean = statistics.mean(values) * scale
        sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return f"{mean:.1f}{'%' if pct else ''} ± {sd:.1f}{'%' if pct else ''}"

    for subset in (0.1, 0.01):
        rows = [r for r in results if r["subset"] == subset]
        if rows:
            lines.append(f"| {subset:.0%} | {rows[0]['train_images']} | {len(rows)} | "
                         f"{spread([r['fd_clf']['maskdm'] for r in rows])} | "
                         f"{spread([r['fd_clf']['baseline'] for r in rows])} | "
                         f"{spread([r['fd_clf']['real_floor'] for r in rows])} | "
                         f"{spread([r['relative_improvement'] for r in rows], pct=True)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maskdm-transfer"))
    parser.add_argument("--collect-only", action="store_true",
                        help="run nothing: summarise the runs under --workdir that have finished")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/transfer.json")
    args = parser.parse_args(argv)
    if args.collect_only:
        results = [collect(args.workdir / f"seed{seed}-{name}", seed, subset) for seed in args.seeds
                   for name, subset in (("10pct", 0.1), ("1pct", 0.01))
                   if (args.workdir / f"seed{seed}-{name}/data/08_reporting/metrics.json").is_file()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = [r for rows in pool.map(lambda s: run_seed(s, args.workdir, args.threads), args.seeds)
                       for r in rows]
    table = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "table": table}, indent=2))
    print(table)  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
