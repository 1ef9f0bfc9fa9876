"""Training-step throughput of the MaskDM U-ViT at several mask ratios, side by side.

Measures one optimisation step (forward + backward + AdamW step) in images per second:

- ratio 0: the unmasked step (``mask=None``), MSE on the whole image (plain DSM);
- ratio > 0: the masked step of MDSM (METHOD.md section 1), MSE on the visible patches only.

All ratios run in one process on one model, each with its own warm-up, and the reported
figure is the median over repeats, so the speed-ups are comparable on a busy machine.
Mask sampling and noising are inside the timed step (they are part of a real step).

    python benchmarks/train_step.py --preset small-64 --batch-size 16 --json out.json

Issue target: small-64, batch 16, CPU: the 90% block-4 masked step >= 5x the unmasked one.

On a machine other jobs share, pass ``--threads 1``: with more OpenMP threads than free cores
the threads wait on each other at every op, which hurts the small masked step most and can
hide the speed-up entirely (seen here: 2 threads on 2 busy cores, 90% step 2 s in one run
and 17 s in the next).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_name
from maskdm_pipeline.masking import MASK_KINDS, mask_count, sample_masks
from maskdm_pipeline.models import UViT, build_uvit, count_parameters
from maskdm_pipeline.models.patching import keep_visible, patchify

T = 1000


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, torch threads and version, Python, and the GPU's name on CUDA."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: UViT,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    kind: str,
    ratio: float,
    block_size: int,
    crop_size: int | None,
) -> float:
    """One DDPM ε-prediction step; masked (MDSM) when ``ratio > 0``. Returns the loss."""
    b = x0.shape[0]
    t = torch.randint(0, T, (b,), device=x0.device)
    eps = torch.randn_like(x0)
    a = alphas_cumprod[t].view(b, 1, 1, 1)
    # Noise the whole image first, then drop tokens (METHOD.md section 1 step 1).
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    if ratio == 0:
        loss = F.mse_loss(model(x_t, t), eps)
    else:
        mask = sample_masks(
            kind,
            model.grid_size,
            b,
            ratio=ratio,
            block_size=block_size,
            crop_size=crop_size,
            device=x0.device,
        )
        pred = model(x_t, t, mask)  # (B, N_vis, p*p*C)
        loss = F.mse_loss(pred, keep_visible(patchify(eps, model.patch_size), mask))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _time_blocks(run: tuple[Any, ...], device: torch.device, steps: int) -> float:
    """Seconds per step over one timed block of ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        train_step(*run)
    _sync(device)
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
    alphas_cumprod: torch.Tensor,
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
        (model, optimizer, x0, alphas_cumprod, kind, r, block_size, crop_size) for r in ratios
    ]
    per_step: list[list[float]] = [[] for _ in ratios]
    for i, run in enumerate(runs):
        for _ in range(warmup):
            train_step(*run)
        _sync(x0.device)
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
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).to(device=device, dtype=torch.float32)
    x0 = torch.rand(batch_size, model.in_chans, model.img_size, model.img_size, device=device)
    x0 = x0 * 2 - 1

    results = bench_ratios(
        model, optimizer, x0, alphas_cumprod, ratios, kind=kind, block_size=block_size,
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
    )
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
