"""Guidance on finished quick-start runs: does MaskDM respond to it less than the baseline, and does
sparse guidance help it, with and without labels?

Reads finished run folders (a `kedro run` of the whole DAG in a project copy: its checkpoints and
its fd_clf classifier and reference), and redraws each model's samples under several guidance
settings, with the pipeline's own code (:func:`maskdm_pipeline.generation.generate`,
:func:`maskdm_pipeline.fd_clf.score` and ``class_accuracy``, ``generation.sampling_cost``); only
the guidance, the sampler's steps and the sampling seed change, never the weights.

    python -m experiments.guidance --conditional /work/runs/cond --unconditional /work/runs/plain \\
        --out experiments/results/guidance.json

Three measurements (docs/results.md "Class-conditional models and guidance"):

- ``scales``: a conditional run's models under cfg and under sparse guidance at each w of
  ``--scales``, at the run's own sampler and steps: fd_clf and class accuracy against w;
- ``equal_flops``: cfg at the run's steps against sparse guidance given the same forward-pass FLOPs
  per sample (more steps: its weak pass is cheaper), at each w;
- ``unconditional``: an unconditional run's models under sparse guidance at each w (no labels:
  the same network on fewer tokens guides itself), fd_clf only.

Every point is drawn with each of ``--seeds`` (the same seeds and classes at every setting), and
reported as the mean and the spread over them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from devkit import load_average, machine_info
from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.diffusion import Guidance
from maskdm_pipeline.fileio import load_checkpoint, load_torch_state

CHECKPOINTS = {"maskdm": "data/06_models/finetuned.pt", "baseline": "data/06_models/baseline.pt"}
FD_CLF = ("data/04_feature/feature_classifier.pt", "data/04_feature/fd_clf_reference.pt")
SAMPLING = {"sampler": "dpm++2m", "eta": 0.0}  # the quick start's sampler (conf/base)


class Run:
    """One finished run folder: its two models, its classifier and reference."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.checkpoints = {model: load_checkpoint(folder / rel) for model, rel in CHECKPOINTS.items()}
        self.classifier, self.reference = (load_torch_state(folder / rel) for rel in FD_CLF)

    def cost(self, model: str, guidance: Guidance, steps: int) -> int:
        """Forward-pass FLOPs per sample of ``model`` sampled with ``guidance`` in ``steps`` steps."""
        checkpoint = self.checkpoints[model]
        return generation.sampling_cost(generation.model_from_checkpoint(checkpoint),
                                        schedule=checkpoint["config"]["diffusion"]["schedule"],
                                        sampler=SAMPLING["sampler"], steps=steps, guidance=guidance)

    def draw(self, model: str, guidance: Guidance, steps: int, n: int, seed: int) -> dict[str, Any]:
        """fd_clf (and class accuracy when conditional) of ``n`` samples of ``model``, and their cost."""
        checkpoint = self.checkpoints[model]
        net = generation.model_from_checkpoint(checkpoint, weights="ema")
        classes = generation.resolve_classes(net, None)
        diffusion = checkpoint["config"]["diffusion"]
        settings = {"schedule": diffusion["schedule"], "steps": steps, "sampler": SAMPLING["sampler"]}
        start = time.perf_counter()
        images, _ = generation.generate(net, num_samples=n, batch_size=min(n, 256), prediction=diffusion["prediction"],
                                        eta=SAMPLING["eta"], seed=seed, classes=classes, guidance=guidance, **settings)
        point = {"fd_clf": fd_clf.score(images, self.classifier, self.reference, n)["fd_clf"],
                 "flops_per_sample": generation.sampling_cost(net, guidance=guidance, **settings),
                 "seconds": time.perf_counter() - start}
        if classes is not None:
            asked = generation.class_labels(range(n), classes).numpy()
            point["class_accuracy"] = fd_clf.class_accuracy(images, asked, self.classifier)["class_accuracy"]
        return point


def measure(run: Run, model: str, guidance: Guidance, steps: int, n: int, seeds: list[int]) -> dict[str, Any]:
    """One setting over ``seeds``: each seed's point and the mean / spread of each measure."""
    draws = [run.draw(model, guidance, steps, n, seed) for seed in seeds]
    out: dict[str, Any] = {"model": model, "guidance": guidance.mode, "scale": guidance.scale, "steps": steps,
                           "sparse_mask_ratio": guidance.sparse_mask_ratio if guidance.mode == "sparse" else None,
                           "flops_per_sample": draws[0]["flops_per_sample"], "seeds": seeds, "draws": draws}
    for key in ("fd_clf", "class_accuracy"):
        values = [d[key] for d in draws if d.get(key) is not None]
        if values:
            out[key] = statistics.mean(values)
            out[f"{key}_spread"] = (max(values) - min(values)) / 2 if len(values) > 1 else None
    print(f"{model:8s} {guidance.mode:6s} w={guidance.scale:<4g} steps={steps:<3d} fd_clf {out['fd_clf']:.2f}"  # noqa: T201
          + (f"  class acc {out['class_accuracy']:.3f}" if "class_accuracy" in out else "")
          + f"  {out['flops_per_sample'] / 1e9:.3f} GFLOPs", flush=True)
    return out


def steps_at_budget(run: Run, model: str, guidance: Guidance, budget: int, limit: int = 200) -> int:
    """The most sampler steps whose FLOPs per sample under ``guidance`` stay within ``budget``."""
    return max([steps for steps in range(1, limit + 1) if run.cost(model, guidance, steps) <= budget], default=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conditional", type=Path, help="a finished run with model.class_conditional=true")
    parser.add_argument("--unconditional", type=Path, help="a finished plain quick-start run")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--steps", type=int, default=25, help="the sampler's steps (the quick start's 25)")
    parser.add_argument("--ratio", type=float, default=0.75, help="sparse guidance's mask ratio r")
    parser.add_argument("--samples", type=int, default=256, help="N of every fd_clf (the quick start's 256)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1234, 4321])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.conditional is None and args.unconditional is None:
        parser.error("give --conditional and/or --unconditional run folders")
    results: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                               "scales": [], "equal_flops": [], "unconditional": []}
    cfg, sparse = Guidance(mode="cfg"), Guidance(mode="sparse", sparse_mask_ratio=args.ratio)
    if args.conditional is not None:
        run = Run(args.conditional)
        for model in CHECKPOINTS:
            for w in args.scales:
                for mode in (cfg, sparse):
                    if w == 1.0 and mode is sparse:
                        continue  # w = 1 is the same unguided sampling for both modes
                    results["scales"].append(measure(run, model, replace(mode, scale=w), args.steps, args.samples,
                                                     args.seeds))
            for w in args.scales:
                if w == 1.0:
                    continue
                budget = run.cost(model, replace(cfg, scale=w), args.steps)  # cfg at the run's steps
                steps = steps_at_budget(run, model, replace(sparse, scale=w), budget)
                results["equal_flops"].append(measure(run, model, replace(sparse, scale=w), steps, args.samples,
                                                      args.seeds))
    if args.unconditional is not None:
        run = Run(args.unconditional)
        for model in CHECKPOINTS:
            for w in args.scales:
                results["unconditional"].append(measure(run, model, replace(sparse, scale=w), args.steps,
                                                        args.samples, args.seeds))
    results["load_average_at_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
