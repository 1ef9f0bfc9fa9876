"""Does masked pre-training pay off, and by how much compute? Several seeds, several token counts.

Each run is a real ``kedro run`` of the whole DAG in its own throw-away project copy, with the
scale's parameters and the seed given through ``--params``, exactly as a user would. The
per-seed comparison reuses the report's own logic (:mod:`maskdm_pipeline.reporting`): MaskDM's
quality curve starts after its pre-training cost, the baseline's at zero.

    python -m experiments.claim --scales 16 256 --seeds 0 1 2 --jobs 2

Compute is measured four ways: images processed, tokens processed (visible ones when masked),
token-blocks (tokens summed over the network's blocks, so dense-first masking's dense blocks are
charged for every token: ``UViT.token_blocks``), all three independent of machine load, and
training wall time (evaluation excluded; sensitive to load, so runs in parallel share the cores
evenly). Each result carries, per axis, the speed-up to the baseline's final quality
(``speedup_<axis>``) and both models' quality at the smaller of the two budgets
(``equal_<axis>_budget``, ``at_equal_<axis>``), with ``<axis>`` one of ``images``, ``tokens``,
``token_blocks`` (and ``wall`` for the speed-up), and each model's recipe (``recipe``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from devkit import cpu_name, kedro_command, make_project_copy
from maskdm_pipeline import reporting
from maskdm_pipeline.models import build_uvit

ROOT = Path(__file__).resolve().parents[1]
# The compute axes on which "equal compute" is measured besides wall time (reporting's curve columns).
EQUAL_AXES = ("images", "tokens", "token_blocks")

# Token count -> parameters on top of conf/base. 16 tokens: the quick start itself.
# 256 tokens: 32x32 digits at patch 2, 90% masks of 2x2-patch blocks. An unmasked step costs ~10x
# more than at 16 tokens on a CPU, a masked one about as much, so the unmasked budgets are smaller
# (the first budget tried, 1000 masked + 500 unmasked steps, left both models at noise).
SCALES: dict[str, dict[str, Any]] = {
    "16": {},
    # 64 tokens (issue 18): 16x16 digits at patch 2, the tiny preset and the quick start's recipe
    # (x0, batch 64, lr 2e-3). A baseline pilot reached 3.5x the real-data floor after 6,000
    # steps (the end of the fast phase), so every training stage runs 8,000 steps. Masks: 90% in
    # 2x2-patch blocks, 14 of the 16 blocks of the 8x8 grid (8 tokens visible): the geometry of
    # the paper's 4x4 blocks on a 16x16 grid, at a quarter of the tokens.
    "64": {
        "model.patch_size": 2,
        "pretrain.mask.kind": "block",
        "pretrain.mask.ratio": 0.9,
        "pretrain.mask.block_size": 2,
        "pretrain.steps": 8000,
        "finetune.steps": 8000,
        "baseline.steps": 8000,
    },
    "256": {
        "preprocess.resolution": 32,
        "model.patch_size": 2,
        "pretrain.mask.kind": "block",
        "pretrain.mask.ratio": 0.9,
        "pretrain.mask.block_size": 2,
        "pretrain.steps": 4000,
        "pretrain.batch_size": 32,
        "finetune.steps": 1000,
        "finetune.batch_size": 32,
        "finetune.eval_every": 250,
        "finetune.eval_num_samples": 128,
        "baseline.steps": 2000,
        "baseline.batch_size": 32,
        "baseline.eval_every": 250,
        "baseline.eval_num_samples": 128,
        "pretrain.checkpoint_every": 500,
        "finetune.checkpoint_every": 500,
        "baseline.checkpoint_every": 500,
    },
}


def _params(scale: str, seed: int, extra: dict[str, Any]) -> str:
    values = {**SCALES[scale], **extra}
    for stage, offset in (("pretrain", 0), ("finetune", 1), ("baseline", 1)):
        values[f"{stage}.seed"] = 100 * seed + offset  # finetune and baseline share data order and noise
    return ",".join(f"{k}={v}" for k, v in values.items())


def new_project(root: Path) -> Path:
    """A fresh copy of the project (conf, pyproject, empty src: the package is installed)."""
    shutil.rmtree(root, ignore_errors=True)
    return make_project_copy(root, ROOT, copy_src=False)


def is_started(root: Path) -> bool:
    """A project copy that an earlier, interrupted invocation set up: resume it rather than wipe it.

    Each stage resumes from its ``<stage>.resume.pt`` (bitwise equal to an uninterrupted run), and
    ``--only-missing-outputs`` skips the stages that had finished.
    """
    return (root / "pyproject.toml").is_file() and (root / "conf").is_dir()


def kedro_run(root: Path, args: list[str], threads: int) -> None:
    """``kedro run <args>`` in ``root``, as a user runs it; the log goes to ``root/run.log``."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    with open(root / "run.log", "a") as log:
        subprocess.run([*kedro_command(), "run", *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)


# What a MaskDM-side sweep (pre-training parameters only) must recompute; everything else in a
# reference run's data folder (splits, classifier, baseline, its samples and scores) is reused.
MASKDM_OUTPUTS = ("06_models/pretrained*", "06_models/finetuned*", "07_model_output/maskdm_*",
                  "08_reporting/pretrain_*", "08_reporting/finetune_*", "08_reporting/maskdm_*",
                  "08_reporting/metrics.json", "08_reporting/report.md", "08_reporting/*.png")


def baseline_params(extra: dict[str, Any]) -> dict[str, Any]:
    """The extra ``--params`` the baseline sees: all but ``pretrain.*`` (the only stage it skips)."""
    return {k: v for k, v in extra.items() if not k.startswith("pretrain.")}


def check_reusable(extra: dict[str, Any]) -> None:
    """A reused baseline is only the same baseline when the sweep touches pre-training alone."""
    others = sorted(baseline_params(extra))
    if others:
        raise SystemExit(f"--baseline-from reuses the reference runs' splits, baseline and samples, so --params may "
                         f"only change pretrain.*; got {', '.join(others)}. Drop --baseline-from to rerun everything.")


def reuse_baseline(root: Path, reference: Path) -> None:
    """Copy a finished reference run's data into ``root`` minus MaskDM's outputs."""
    if not (reference / "data/08_reporting/metrics.json").is_file():
        raise SystemExit(f"--baseline-from: {reference} has no finished run (data/08_reporting/metrics.json); "
                         "run the reference configuration first, e.g. python -m experiments.claim --scales ...")
    shutil.copytree(reference / "data", root / "data", dirs_exist_ok=True)
    for pattern in MASKDM_OUTPUTS:
        for path in (root / "data").glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_one(scale: str, seed: int, workdir: Path, extra: dict[str, Any], threads: int,
            env_name: str | None = None, baseline_from: Path | None = None) -> dict[str, Any]:
    """One full ``kedro run`` in a fresh project copy; returns its metrics and accounting.

    With ``baseline_from``, the baseline side comes from the same scale and seed there and
    ``kedro run --only-missing-outputs`` trains, samples and scores MaskDM only.
    """
    root = workdir / f"tokens{scale}-seed{seed}"
    if (root / "data/08_reporting/metrics.json").is_file():
        return collect(root, scale, seed)  # finished before: reuse (the runs are deterministic)
    start = time.perf_counter()
    args = ["--params", _params(scale, seed, extra)] + (["--env", env_name] if env_name else [])
    if is_started(root):
        args.append("--only-missing-outputs")  # interrupted before: finished stages stay, the rest resumes
    else:
        new_project(root)
        if baseline_from is not None:
            reuse_baseline(root, baseline_from / root.name)
            args.append("--only-missing-outputs")
    record_devices(root)
    kedro_run(root, args, threads)
    result = collect(root, scale, seed)
    result["run_wall_s"] = time.perf_counter() - start
    return result


DEVICES_FILE = "devices.json"  # in a run's project copy: the names of the devices of the machine it ran on


def record_devices(root: Path) -> None:
    """Write the names of this machine's devices into the run's copy (the CPU model, and the GPU's
    name where CUDA sees one), so that :func:`collect` names the device a run trained on even when
    it collects on another machine (``--collect-only``)."""
    names = {"cpu": cpu_name()}
    if torch.cuda.is_available():
        names["cuda"] = torch.cuda.get_device_name(0)
    (root / DEVICES_FILE).write_text(json.dumps(names))


def device_used(root: Path, accounting: dict[str, Any]) -> str | None:
    """``cuda: NVIDIA H200`` or ``cpu: AMD EPYC 7B13``: the device the training stages ran on (their
    accounting's ``stats.device``), named as :func:`record_devices` wrote it; None when the
    accounting predates the field. Raises ValueError when the stages ran on different devices."""
    kinds = {str(a.get("stats", {}).get("device")) for a in accounting.values()} - {"None"}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise ValueError(f"{root}: the training stages ran on different devices ({', '.join(sorted(kinds))})")
    kind = kinds.pop().split(":")[0]  # "cuda:0" -> "cuda"
    names = json.loads((root / DEVICES_FILE).read_text()) if (root / DEVICES_FILE).is_file() else {}
    return f"{kind}: {names[kind]}" if kind in names else kind


def collect(root: Path, scale: str, seed: int) -> dict[str, Any]:
    report = root / "data/08_reporting"
    metrics = json.loads((report / "metrics.json").read_text())
    acc = {s: json.loads((report / f"{s}_accounting.json").read_text()) for s in ("pretrain", "finetune", "baseline")}
    for record in acc.values():
        _backfill_token_blocks(record)
    # The report's own costs and curves: MaskDM charged for pre-training.
    computed = reporting.quality_vs_compute(metrics, acc, None, None)
    costs, maskdm, baseline = computed.costs, computed.maskdm, computed.baseline
    n = maskdm.n
    target = float(baseline.points["fd_clf"].iloc[-1])
    reach = reporting.cost_to_reach(maskdm, target)
    curves = {"maskdm": maskdm.points, "baseline": baseline.points}
    # np.min keeps a NaN (an axis a run did not record) whatever the order; min() would not.
    budget = {axis: float(np.min([c[axis].iloc[-1] for c in curves.values()])) for axis in EQUAL_AXES}
    at = {axis: {name: _latest(c, axis, budget[axis]) for name, c in curves.items()} for axis in budget}
    end = {axis: float(baseline.points[axis].iloc[-1]) for axis in (*EQUAL_AXES, "wall_s")}
    return {
        "scale_tokens": int(scale),
        "seed": seed,
        "fd_clf_n": n,
        "real_floor": metrics["real_floor"]["fd_clf"],
        "final": {"maskdm": metrics["maskdm"]["fd_clf"], "baseline": metrics["baseline"]["fd_clf"]},
        "cost": {s: vars(c) for s, c in costs.items() if c is not None},
        "device": device_used(root, acc),
        # What each stage was given: steps of a global batch (the images follow; see "cost" for
        # what was spent, which equals it unless a stage was cut short).
        "budget": {s: {"steps": a["config"]["stage"]["steps"], "batch_size": a["config"]["stage"]["batch_size"]}
                   for s, a in acc.items() if a.get("config")},
        # Model, schedule and budget of each stage: a results file explains itself after SCALES changes.
        "config": {s: a.get("config") for s, a in acc.items()},
        "recipe": {model: metrics[model].get("recipe") for model in ("maskdm", "baseline")},
        "baseline_target": target,
        "maskdm_reach": reach,
        # Compute the baseline spent on its final quality over what MaskDM needed to reach it
        # (None: not reached, or an axis the accounting did not record).
        **{f"speedup_{axis}": _ratio(end[key], reach[key]) if reach else None
           for axis, key in (*((a, a) for a in EQUAL_AXES), ("wall", "wall_s"))},
        **{f"equal_{axis}_budget": budget[axis] for axis in EQUAL_AXES},
        **{f"at_equal_{axis}": at[axis] for axis in EQUAL_AXES},
        "curves": {"maskdm": maskdm.points.to_dict("list"), "baseline": baseline.points.to_dict("list")},
    }


def _ratio(spent: float, needed: float) -> float | None:
    return spent / needed if math.isfinite(spent) and math.isfinite(needed) and needed else None


def _backfill_token_blocks(accounting: dict[str, Any]) -> None:
    """Token-blocks for an accounting record written before they were recorded (issue 17).

    Such runs had no dense blocks (k = 0), so every block saw exactly the stage's tokens:
    token-blocks = tokens x blocks, with the block count of the model the record names.
    """
    stats = accounting.get("stats") or {}
    if stats.get("token_blocks_seen") is not None or not stats.get("tokens_seen"):
        return
    config = {k: v for k, v in accounting["config"]["model"].items() if v is not None}
    with torch.device("meta"):  # the block count only: no memory, no init cost
        blocks = build_uvit(config.pop("preset"), **config).num_blocks
    stats["token_blocks_seen"] = int(stats["tokens_seen"]) * blocks
    stats["token_blocks_per_image"] = int(stats["visible_tokens_per_image"]) * blocks


def _latest(points: pd.DataFrame, axis: str, budget: float) -> float | None:
    within = points[points[axis] <= budget + 1e-9]
    return None if within.empty else float(within["fd_clf"].iloc[-1])


def _spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not reached"
    text = f"{statistics.mean(got):.2f}"
    if len(got) > 1:
        text += f" ± {statistics.stdev(got):.2f}"
    missing = len(values) - len(got)
    return text + (f" ({missing} of {len(values)} seeds never reached it)" if missing else "")


def _blocks(rows: list[dict[str, Any]]) -> list[str]:
    """The token-blocks cells: speed-up, then quality at equal token-blocks (MaskDM, baseline);
    n/a for results collected before token-blocks were recorded."""
    if any("speedup_token_blocks" not in r for r in rows):
        return ["n/a"] * 3
    return [_spread([r["speedup_token_blocks"] for r in rows]),
            *(_spread([r["at_equal_token_blocks"][model] for r in rows]) for model in ("maskdm", "baseline"))]


def summarise(results: list[dict[str, Any]]) -> str:
    """Markdown: per scale, mean ± std over seeds of the quantities the claim is about."""
    lines = ["| tokens | seeds | fd_clf MaskDM (final) | fd_clf baseline (final) | real floor | "
             "speed-up to baseline's final quality (images) | (tokens processed) | (wall time) | "
             "at equal images: MaskDM | baseline | at equal tokens: MaskDM | baseline | "
             "speed-up (token-blocks) | at equal token-blocks: MaskDM | baseline |",
             "|---" * 15 + "|"]
    for scale in sorted({r["scale_tokens"] for r in results}):
        rows = [r for r in results if r["scale_tokens"] == scale]
        lines.append("| " + " | ".join([
            str(scale), str(len(rows)),
            _spread([r["final"]["maskdm"] for r in rows]), _spread([r["final"]["baseline"] for r in rows]),
            _spread([r["real_floor"] for r in rows]),
            *(_spread([r[f"speedup_{axis}"] for r in rows]) for axis in ("images", "tokens", "wall")),
            *(_spread([r[f"at_equal_{axis}"][model] for r in rows])
              for axis in ("images", "tokens") for model in ("maskdm", "baseline")),
            *_blocks(rows),
        ]) + " |")
    return "\n".join(lines)


def setting_label(extra: dict[str, Any]) -> str:
    """A results file's extra ``--params`` as ``a.b=v, c.d=w`` (empty when there are none)."""
    return ", ".join(f"{k}={v}" for k, v in extra.items())


def compare(records: list[dict[str, Any]], labels: list[str] | None = None) -> str:
    """Markdown: one row per results file (e.g. one per mask setting of a sweep), same baseline.

    ``records``: the loaded results files. The label is ``labels[i]`` if given, else the file's
    extra ``--params``; "visible tokens" and "pre-training img/s" come from the pre-training
    accounting, so the row shows what each mask setting cost per image.
    """
    lines = ["| setting | tokens | seeds | visible tokens per pre-training image | pre-training img/s | "
             "fd_clf MaskDM (final) | fd_clf baseline (final) | speed-up (images) | (tokens) | (wall time) | "
             "at equal tokens: MaskDM | baseline | token-blocks per pre-training image | "
             "speed-up (token-blocks) | at equal token-blocks: MaskDM | baseline |", "|---" * 16 + "|"]
    for i, record in enumerate(records):
        label = labels[i] if labels else setting_label(record["extra_params"]) or "as configured"
        for scale in sorted({r["scale_tokens"] for r in record["results"]}):
            rows = [r for r in record["results"] if r["scale_tokens"] == scale]
            pre = [r["cost"]["pretrain"] for r in rows]
            lines.append("| " + " | ".join([
                label, str(scale), str(len(rows)),
                _spread([p["tokens_seen"] / p["images_seen"] for p in pre]),
                _spread([p["images_seen"] / p["wall_time_s"] for p in pre]),
                _spread([r["final"]["maskdm"] for r in rows]), _spread([r["final"]["baseline"] for r in rows]),
                *(_spread([r[f"speedup_{axis}"] for r in rows]) for axis in ("images", "tokens", "wall")),
                *(_spread([r["at_equal_tokens"][model] for r in rows]) for model in ("maskdm", "baseline")),
                _spread([p["token_blocks_seen"] / p["images_seen"] for p in pre])
                if all(p.get("token_blocks_seen") for p in pre) else "n/a",
                *_blocks(rows),
            ]) + " |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """fd_clf against each compute axis, one row per token count, one line per seed and model.

    MaskDM's curve starts where its pre-training ended (pre-training is charged to it).
    """
    from matplotlib.figure import Figure  # only the plot needs matplotlib
    from matplotlib.ticker import EngFormatter

    scales = sorted({r["scale_tokens"] for r in results})
    fig = Figure(figsize=(20, 3.8 * len(scales)), layout="constrained")
    axes = fig.subplots(len(scales), len(reporting.AXES), squeeze=False)
    colors = {"maskdm": "tab:blue", "baseline": "tab:orange"}
    for row, scale in zip(axes, scales, strict=True):
        rows = [r for r in results if r["scale_tokens"] == scale]
        for ax, (axis, label) in zip(row, reporting.AXES.items(), strict=True):
            for r in rows:
                for model, color in colors.items():
                    curve = r["curves"][model]
                    if axis not in curve:  # a result collected before token-blocks were recorded
                        continue
                    ax.plot(curve[axis], curve["fd_clf"], "o-", ms=3, lw=1, alpha=0.8, color=color,
                            label=f"{'MaskDM' if model == 'maskdm' else 'baseline'}" if r is rows[0] else None)
                pre = r["cost"].get("pretrain") or {}
                start = {"images": pre.get("images_seen"), "tokens": pre.get("tokens_seen"),
                         "token_blocks": pre.get("token_blocks_seen"), "wall_s": pre.get("wall_time_s")}[axis]
                if start:
                    ax.axvline(start, color=colors["maskdm"], ls=":", lw=0.8)
            ax.axhline(rows[0]["real_floor"], color="0.5", ls="--", lw=0.8, label="real-data floor")
            ax.set_yscale("log")
            if axis != "wall_s":
                ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 1.5M: no overlapping digits
            ax.set_xlabel(label)
            ax.set_ylabel(f"fd_clf (N={rows[0]['fd_clf_n']})")
            ax.set_title(f"{scale} tokens, {len(rows)} seed(s)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(title or "fd_clf vs compute; dotted: end of MaskDM's pre-training (one per seed)")
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", default=["16", "256"], choices=sorted(SCALES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each gets --threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maskdm-experiments"))
    parser.add_argument("--params", default="", help="extra a.b=v,... for every run (e.g. a mask ratio sweep)")
    parser.add_argument("--collect-only", action="store_true",
                        help="run nothing: summarise the runs under --workdir that have finished")
    parser.add_argument("--baseline-from", type=Path, default=None,
                        help="a finished --workdir whose splits and baseline to reuse (sweeps over pretrain.* only)")
    parser.add_argument("--env", default=None, help="a Kedro environment (smoke: check the script quickly)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/claim.json",
                        help="the JSON results; the figure goes beside it with a .png suffix")
    parser.add_argument("--title", default="", help="the figure's title")
    parser.add_argument("--compare", nargs="+", type=Path, default=None, metavar="JSON",
                        help="run nothing: one table over earlier results files (e.g. a mask sweep)")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare([json.loads(path.read_text()) for path in args.compare]))  # noqa: T201 - a CLI's output
        return
    extra = dict(item.split("=", 1) for item in args.params.split(",") if item)
    jobs = [(scale, seed) for scale in args.scales for seed in args.seeds]
    if args.baseline_from is not None:
        check_reusable(extra)
    if args.collect_only:
        results = [collect(args.workdir / f"tokens{scale}-seed{seed}", scale, seed) for scale, seed in jobs
                   if (args.workdir / f"tokens{scale}-seed{seed}/data/08_reporting/metrics.json").is_file()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: run_one(*job, args.workdir, extra, args.threads, args.env,
                                                             args.baseline_from), jobs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = summarise(results)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count()}
    if not args.collect_only:  # what this invocation ran with; collected runs may have had other loads
        machine.update(jobs=args.jobs, threads_per_job=args.threads)
    args.out.write_text(json.dumps({"machine": machine, "extra_params": extra, "results": results,
                                    "table": table}, indent=2))
    if results:
        plot(results, args.out.with_suffix(".png"), args.title)
    print(table)  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
