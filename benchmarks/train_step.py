"""Training-step throughput of the MaskDM U-ViT at several mask ratios, side by side.

Measures one optimisation step (forward + backward + AdamW step) in images per second, with the
pipeline's own loss objects called as the training loop calls them
(``loss(model, x0, t=t, noise=noise)``, and ``loss(model, x0, mask, t=t, noise=noise)`` when
masked), so the figure is the step the pipeline runs:

- ratio 0: :class:`~maskdm_pipeline.diffusion.DenoisingLoss`, DSM on the whole image (fine-tuning
  and the baseline);
- ratio > 0: :class:`~maskdm_pipeline.diffusion.MaskedDenoisingLoss`, MDSM on the visible patches
  only (masked pre-training, METHOD.md section 1).

All ratios run in one process on one model, each with its own warm-up, and the reported
figure is the median over repeats, so the speed-ups are comparable on a busy machine.
Drawing t, the noise and the masks is inside the timed step (the loop draws them every step);
the loop's EMA update, gradient clipping and logging are not.

    python -m benchmarks.train_step --preset small-64 --batch-size 16 --json out.json

Issue target: small-64, batch 16, CPU: the 90% block-4 masked step >= 5x the unmasked one.

On a machine other jobs share, pass ``--threads 1``: with more OpenMP threads than free cores
the threads wait on each other at every op, which hurts the small masked step most and can
hide the speed-up entirely (seen here: 2 threads on 2 busy cores, 90% step 2 s in one run
and 17 s in the next).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from devkit import machine_info
from maskdm_pipeline.devices import synchronize
from maskdm_pipeline.diffusion import (
    PREDICTIONS,
    DenoisingLoss,
    MaskedDenoisingLoss,
    draw_noise,
    draw_timesteps,
    make_schedule,
)
from maskdm_pipeline.masking import MASK_KINDS, mask_count, sample_masks
from maskdm_pipeline.models import UViT, build_uvit, count_parameters

Losses = tuple[DenoisingLoss, MaskedDenoisingLoss]


def train_step(
    model: UViT,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    losses: Losses,
    kind: str,
    ratio: float,
    block_size: int,
    crop_size: int | None,
) -> float:
    """One training step; masked (MDSM) when ``ratio > 0``, else DSM. Returns the loss."""
    dsm, mdsm = losses
    b = x0.shape[0]
    t = draw_timesteps(b, dsm.schedule.num_timesteps, device=x0.device)
    noise = draw_noise(x0.shape, device=x0.device)
    if ratio == 0:
        loss = dsm(model, x0, t=t, noise=noise)
    else:
        mask = sample_masks(kind, model.grid_size, b, ratio=ratio, block_size=block_size,
                            crop_size=crop_size, device=x0.device)
        loss = mdsm(model, x0, mask, t=t, noise=noise)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _time_blocks(run: tuple[Any, ...], device: torch.device, steps: int) -> float:
    """Seconds per step over one timed block of ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        train_step(*run)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def _ratio_result(
    model: UViT,
    batch_size: int,
    ratio: float,
    per_step: list[float],
    kind: str,
    block_size: int,
    crop_size: int | None,
) -> dict[str, Any]:
    step_s = statistics.median(per_step)
    masked = 0 if ratio == 0 else mask_count(kind, model.grid_size, ratio, block_size, crop_size)
    return {
        "ratio": ratio,
        "masked_tokens": masked,
        "visible_tokens": model.num_patches - masked,
        "step_s_median": step_s,
        "step_s_all": per_step,
        "img_per_s": batch_size / step_s,
    }


def bench_ratios(
    model: UViT,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    losses: Losses,
    ratios: list[float],
    *,
    kind: str = "block",
    block_size: int = 4,
    crop_size: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    steps: int = 1,
    interleave: bool = False,
) -> list[dict[str, Any]]:
    """Median seconds per step of each ratio over ``repeats`` timed blocks of ``steps`` steps.

    Each ratio gets ``warmup`` untimed steps first. With ``interleave`` the timed blocks run
    round-robin over the ratios (a burst of load from other jobs then hits every ratio alike);
    without it each ratio runs all its blocks in turn (the CLI's behaviour).
    """
    runs = [
        (model, optimizer, x0, losses, kind, r, block_size, crop_size) for r in ratios
    ]
    per_step: list[list[float]] = [[] for _ in ratios]
    for i, run in enumerate(runs):
        for _ in range(warmup):
            train_step(*run)
        synchronize(x0.device)
        if not interleave:
            per_step[i] = [_time_blocks(run, x0.device, steps) for _ in range(repeats)]
    if interleave:
        for _ in range(repeats):
            for i, run in enumerate(runs):
                per_step[i].append(_time_blocks(run, x0.device, steps))
    return [
        _ratio_result(model, x0.shape[0], r, times, kind, block_size, crop_size)
        for r, times in zip(ratios, per_step, strict=True)
    ]


def run_benchmark(
    preset: str = "small-64",
    *,
    batch_size: int = 16,
    ratios: list[float] | None = None,
    kind: str = "block",
    block_size: int = 4,
    crop_size: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    steps: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    interleave: bool = False,
    prediction: str = "eps",
    schedule_kind: str = "linear",
) -> dict[str, Any]:
    """Build ``preset`` and measure every ratio on it; returns the report (machine, config, results).

    Every ratio gets ``speedup_vs_unmasked`` (None when ratio 0 is not among ``ratios``).
    Thread counts are the caller's business (``torch.set_num_threads`` before calling).
    """
    ratios = [0.0, 0.5, 0.75, 0.9] if ratios is None else list(ratios)
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_uvit(preset).to(device).train()
    # AdamW as in METHOD.md section 4 (betas 0.99/0.99, weight decay 0.03 on every parameter).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=2e-4, betas=(0.99, 0.99), weight_decay=0.03
    )
    schedule = make_schedule(schedule_kind).to(device)
    losses = (DenoisingLoss(schedule, prediction), MaskedDenoisingLoss(schedule, prediction))
    x0 = torch.rand(batch_size, model.in_chans, model.img_size, model.img_size, device=device)
    x0 = x0 * 2 - 1

    results = bench_ratios(
        model, optimizer, x0, losses, ratios, kind=kind, block_size=block_size,
        crop_size=crop_size, warmup=warmup, repeats=repeats, steps=steps, interleave=interleave,
    )
    base = next((r["step_s_median"] for r in results if r["ratio"] == 0), None)
    for r in results:
        r["speedup_vs_unmasked"] = None if base is None else base / r["step_s_median"]
    return {
        "machine": machine_info(device),
        "config": {
            "preset": preset,
            "params": count_parameters(model),
            "tokens": model.num_patches,
            "grid_size": model.grid_size,
            "batch_size": batch_size,
            "kind": kind,
            "block_size": block_size,
            "crop_size": crop_size,
            "warmup": warmup,
            "repeats": repeats,
            "steps_per_repeat": steps,
            "interleaved": interleave,
            "precision": "fp32",
            "prediction": prediction,
            "schedule": schedule_kind,
        },
        "results": results,
    }


def print_report(report: dict[str, Any]) -> None:
    """The report as the CLI's plain-text table."""
    m, c = report["machine"], report["config"]
    print(
        f"{c['preset']} batch {c['batch_size']}, {c['kind']} masks, {m['device']} "
        f"({m['cpu']}, {m['torch_threads']} threads), torch {m['torch']}"
    )
    print(f"{'ratio':>6} {'visible':>8} {'step s':>9} {'img/s':>9} {'speed-up':>9}")
    for r in report["results"]:
        speedup = "-" if r["speedup_vs_unmasked"] is None else f"{r['speedup_vs_unmasked']:.2f}x"
        print(
            f"{r['ratio']:>6.2f} {r['visible_tokens']:>8d} {r['step_s_median']:>9.3f} "
            f"{r['img_per_s']:>9.1f} {speedup:>9}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-64")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument("--kind", choices=MASK_KINDS, default="block")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="kept square side for --kind crop (the ratio is then ignored)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per ratio")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per ratio (median)")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed block")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction", choices=PREDICTIONS, default="eps",
                        help="diffusion.prediction (the paper's eps by default)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The CLI: parse ``argv``, measure, print the table, write ``--json``; returns the report."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(
        args.preset,
        batch_size=args.batch_size,
        ratios=args.ratios,
        kind=args.kind,
        block_size=args.block_size,
        crop_size=args.crop_size,
        warmup=args.warmup,
        repeats=args.repeats,
        steps=args.steps,
        device=args.device,
        seed=args.seed,
        prediction=args.prediction,
    )
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
