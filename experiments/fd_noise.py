"""How far does one fd_clf move when only the sampling seed changes?

Every fd_clf in ``claim``'s results is one estimate from N generated images (N = 256 at 64
tokens), drawn with one sampling seed. Seeds of training differ, but so do draws of the same
trained model: before reading a gap between two recipes as real, one needs the size of that
second noise. This redraws the final samples of finished runs with other sampling seeds (the
sampler, steps and eta the run recorded in ``<model>_sampling.json``, its N, classifier and
reference; only the seed changes) and scores each draw. The run's own seed is drawn too, and
must give back the recorded final fd_clf: a check that the measurement here is the pipeline's.

    python -m experiments.fd_noise /work/claim64/tokens64-seed0 /work/claim64/tokens64-seed1 \\
        --seeds 1 2 3 4 5 --out experiments/results/fd-noise-64.json

It reuses the pipeline's own code (:mod:`maskdm_pipeline.generation`, :mod:`maskdm_pipeline.fd_clf`).
Like ``claim.collect`` it reads a run folder by the file names every version of the pipeline has
written (listed in ``MODELS`` and ``FD_CLF``), not through the run's catalog: the catalog's
dataset names changed between versions (``baseline.scores`` became ``baseline_scores``), and
results from before the change must stay readable.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.fileio import CheckpointError, load_checkpoint, load_torch_state

# Per model (conf/base/catalog.yml): the checkpoint its final samples come from, what the sample
# stage recorded of them, and their scores.
MODELS = {model: (f"data/06_models/{checkpoint}.pt", f"data/07_model_output/{model}_sampling.json",
                  f"data/08_reporting/{model}_scores.json")
          for model, checkpoint in (("maskdm", "finetuned"), ("baseline", "baseline"))}
FD_CLF = ("data/04_feature/feature_classifier.pt", "data/04_feature/fd_clf_reference.pt")


def redraw(run: Path, model: str, seeds: list[int]) -> dict[str, Any]:
    """fd_clf of ``model``'s final EMA weights in ``run`` at each sampling seed (the run's own first).

    Returns:
        ``{"run", "model", "recorded", "n", "by_seed": {seed: fd_clf}, "mean", "std"}``; ``mean``
        and ``std`` over ``seeds`` only (the own seed's value is the check, not a sample).

    Raises:
        CheckpointError, FileNotFoundError: ``run`` has no finished checkpoint, sampling record or
            scores for ``model``.
        ValueError: the run recorded no fd_clf (no classifier, or fewer samples than N).
    """
    checkpoint_path, sampling_path, scores_path = (run / rel for rel in MODELS[model])
    checkpoint = load_checkpoint(checkpoint_path)
    sample, recorded = json.loads(sampling_path.read_text()), json.loads(scores_path.read_text())
    if recorded.get("fd_clf_n") is None:
        raise ValueError(f"{scores_path}: the run recorded no fd_clf ({recorded.get('fd_clf_reason')}); "
                         "nothing to redraw")
    n = int(recorded["fd_clf_n"])
    classifier, reference = (load_torch_state(run / rel) for rel in FD_CLF)
    net = generation.model_from_checkpoint(checkpoint, weights="ema")
    diffusion = checkpoint["config"]["diffusion"]
    by_seed = {}
    for seed in [int(sample["seed"]), *seeds]:
        images, _ = generation.generate(net, num_samples=n, batch_size=n,
                                        schedule=diffusion["schedule"], prediction=diffusion["prediction"],
                                        sampler=sample["sampler"], steps=sample["steps"],
                                        eta=float(sample.get("eta", 1.0)), seed=seed)
        by_seed[seed] = fd_clf.score(images, classifier, reference, n)["fd_clf"]
    values = [by_seed[s] for s in seeds]
    return {"run": str(run), "model": model, "recorded": recorded["fd_clf"], "own_seed": int(sample["seed"]),
            "n": n, "by_seed": by_seed, "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per run and model, then per model the mean over runs of each run's
    mean over all its draws (its own seed included): the steadier final score of that model."""
    lines = ["| run | model | recorded final fd_clf | own seed redrawn | other seeds: mean ± std | min | max | "
             "all draws: mean |", "|---|---|---|---|---|---|---|---|"]
    per_model: dict[str, list[float]] = {}
    for r in rows:
        others = [v for s, v in r["by_seed"].items() if s != r["own_seed"]]
        every = statistics.mean(r["by_seed"].values())
        per_model.setdefault(r["model"], []).append(every)
        std = f" ± {r['std']:.2f}" if r["std"] is not None else ""
        lines.append(f"| {Path(r['run']).name} | {r['model']} | {r['recorded']:.2f} | "
                     f"{r['by_seed'][r['own_seed']]:.2f} | {r['mean']:.2f}{std} | {min(others):.2f} | "
                     f"{max(others):.2f} | {every:.2f} |")
    for model, values in per_model.items():
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        lines.append(f"| all {len(values)} runs | {model} | | | | | | **{statistics.mean(values):.2f}{spread}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run folders of python -m experiments.claim")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                        help="sampling seeds besides the run's own")
    parser.add_argument("--out", type=Path, default=None, help="the JSON results")
    parser.add_argument("--table-from", type=Path, default=None, metavar="JSON",
                        help="draw nothing: print the table of an earlier --out file")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        rows = json.loads(args.table_from.read_text())["rows"]
        for row in rows:  # JSON object keys are strings
            row["by_seed"] = {int(seed): value for seed, value in row["by_seed"].items()}
        print(table(rows))  # noqa: T201 - a command-line tool's output
        return
    if not args.runs:
        parser.error("give finished run folders (or --table-from an earlier results file)")
    try:
        rows = [redraw(run, model, args.seeds) for run in args.runs for model in args.models]
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"fd_noise: {exc}") from exc
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "table": table(rows)}, indent=2))
    print(table(rows))  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
