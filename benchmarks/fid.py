"""FID machinery speed, ours vs pytorch-fid, side by side in one process.

1. Frechet distance at 2048-d: ``maskdm_pipeline.metrics.frechet_distance`` (symmetric eigh) vs
   ``pytorch_fid.fid_score.calculate_frechet_distance`` (SciPy ``sqrtm``) on the same statistics:
   median seconds, the ratio, and how closely the two values agree. Target: >= 4x.
2. Inception pool3 activations in images/s from the same PNG files: ``features_from_files``
   vs ``pytorch_fid.fid_score.get_activations`` (DataLoader with the CLI's default worker count,
   ``min(8, cpus)``, and with 0 workers), plus ours without channels-last to show what it buys.
   The same network object class and weights for all. Target: >= 1.3x.

Stand-in random weights with the real architecture are used when the real file is absent: speed
does not depend on the weight values (the values printed are then not FID, only agreement checks).

Every variant gets a warm-up, then the variants run interleaved for ``--repeats`` rounds and the
median is reported, so load from other jobs hits all of them alike.

    python -m benchmarks.fid --json out.json [--num-images 100] [--repeats 3] [--threads N]

On a machine other jobs share, compare at ``--threads 1`` as well: the ratios are what matter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_fid.fid_score as pfs
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from benchmarks.standin_weights import benchmark_weights
from devkit import load_average, machine_info
from maskdm_pipeline.metrics import (
    InceptionFeatures,
    InceptionWeightsUnavailable,
    features_from_files,
    frechet_distance,
    stats,
)


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Warm each up once, then time them round-robin ``repeats`` times.

    Returns wall seconds and this process's CPU seconds (all its threads; not DataLoader worker
    processes). With ``--threads 1`` CPU seconds hardly move with other jobs' load, so they give
    the cleaner comparison on a shared machine; wall seconds are what a user waits.
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def _paired_speedups(times: dict[str, list[float]], fast: str, slow: str) -> list[float]:
    """Per-round ratios: the two ran back to back, so each ratio saw about the same load."""
    return [s / f for f, s in zip(times[fast], times[slow], strict=True)]


def bench_frechet(dims: int, num_features: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims)
    # Correlated, full-rank, FID-like statistics (two slightly different distributions).
    mu1, s1 = stats(rng.standard_normal((num_features, dims)) @ mixing)
    mu2, s2 = stats(rng.standard_normal((num_features, dims)) @ (mixing * 1.1) + 0.05)
    values: dict[str, float] = {}

    def ours() -> None:
        values["ours"] = frechet_distance(mu1, s1, mu2, s2)

    def scipy_sqrtm() -> None:
        values["pytorch_fid"] = float(pfs.calculate_frechet_distance(mu1, s1, mu2, s2))

    times, cpu = _interleaved({"ours": ours, "pytorch_fid": scipy_sqrtm}, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "dims": dims,
        "num_features": num_features,
        "seconds_median": med,
        "seconds_all": times,
        "cpu_seconds_median": cpu_med,
        "speedup": med["pytorch_fid"] / med["ours"],
        "speedup_cpu_time": cpu_med["pytorch_fid"] / cpu_med["ours"],
        "speedup_median_of_rounds": statistics.median(
            _paired_speedups(times, "ours", "pytorch_fid")
        ),
        "values": values,
        "relative_difference": abs(values["ours"] - values["pytorch_fid"])
        / abs(values["pytorch_fid"]),
        "target_speedup": 4.0,
    }


def _write_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(path)
        files.append(path)
    return files


def bench_activations(
    weights: Path, num_images: int, image_size: int, batch_size: int, repeats: int
) -> dict[str, Any]:
    cli_workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
    ours = InceptionFeatures(2048, weights, device="cpu", batch_size=batch_size)
    ours_nchw = InceptionFeatures(
        2048, weights, device="cpu", batch_size=batch_size, channels_last=False
    )
    # pytorch-fid's own path: its InceptionV3 in default layout (ours_nchw.model is exactly that).
    reference_model = ours_nchw.model
    pfs.tqdm = lambda x: x  # no progress bar in the timings or the output
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_images(Path(tmp), num_images, image_size)

        def run(name: str, fn: Callable[[], np.ndarray]) -> Callable[[], None]:
            def go() -> None:
                outputs[name] = fn()

            return go

        fns = {
            "ours": run("ours", lambda: features_from_files(ours, files)),
            "ours_without_channels_last": run(
                "ours_without_channels_last", lambda: features_from_files(ours_nchw, files)
            ),
            f"pytorch_fid_get_activations_workers{cli_workers}": run(
                "pytorch_fid",
                lambda: pfs.get_activations(
                    files, reference_model, batch_size, 2048, "cpu", cli_workers
                ),
            ),
            "pytorch_fid_get_activations_workers0": run(
                "pytorch_fid_w0",
                lambda: pfs.get_activations(files, reference_model, batch_size, 2048, "cpu", 0),
            ),
        }
        times, cpu = _interleaved(fns, repeats)
    img_s = {k: num_images / statistics.median(v) for k, v in times.items()}
    cpu_s_per_img = {k: statistics.median(v) / num_images for k, v in cpu.items()}
    reference_key = f"pytorch_fid_get_activations_workers{cli_workers}"
    diff = np.abs(outputs["ours"] - outputs["pytorch_fid"])
    return {
        "num_images": num_images,
        "image_size": image_size,
        "batch_size": batch_size,
        "img_per_s_median": img_s,
        "seconds_all": times,
        "cpu_seconds_per_image_median": cpu_s_per_img,
        "speedup_vs_pytorch_fid": img_s["ours"] / img_s[reference_key],
        # Same process, no workers on either side: the compute-only comparison.
        "speedup_cpu_time_vs_pytorch_fid_workers0": cpu_s_per_img[
            "pytorch_fid_get_activations_workers0"
        ]
        / cpu_s_per_img["ours"],
        "speedup_vs_pytorch_fid_median_of_rounds": statistics.median(
            _paired_speedups(times, "ours", reference_key)
        ),
        "speedup_vs_pytorch_fid_workers0": img_s["ours"]
        / img_s["pytorch_fid_get_activations_workers0"],
        "max_abs_activation_difference": float(diff.max()),
        "max_relative_activation_difference": float(
            diff.max() / np.abs(outputs["pytorch_fid"]).max()
        ),
        "target_speedup": 1.3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--fd-dims", type=int, default=2048)
    parser.add_argument("--fd-features", type=int, default=5000)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--weights", type=Path, help="Inception weights (default: hub cache)")
    args = parser.parse_args()
    if args.threads:
        # Both torch's OpenMP pool and numpy/scipy's BLAS: on a shared machine, more threads than
        # free cores make every parallel op wait for the slowest thread (timings then vary 5x).
        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)

    result: dict[str, Any] = {"machine": machine_info()}
    # Frechet first: it is numpy/scipy only, so torch's OpenMP threads are not yet spinning.
    result["frechet"] = bench_frechet(args.fd_dims, args.fd_features, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        weights, result["weights"] = benchmark_weights(args.weights, Path(tmp))
        try:
            result["activations"] = bench_activations(
                weights, args.num_images, args.image_size, args.batch_size, args.repeats
            )
        except InceptionWeightsUnavailable as exc:
            result["activations"] = {"error": str(exc)}
    result["machine"]["load_average_at_end"] = load_average()

    fd, act = result["frechet"], result["activations"]
    print(
        f"frechet {fd['dims']}-d: ours {fd['seconds_median']['ours']:.2f} s, scipy sqrtm "
        f"{fd['seconds_median']['pytorch_fid']:.2f} s -> {fd['speedup']:.1f}x "
        f"(median of per-round ratios {fd['speedup_median_of_rounds']:.1f}x, CPU time "
        f"{fd['speedup_cpu_time']:.1f}x; target 4x); "
        f"relative difference {fd['relative_difference']:.1e}"
    )
    if "img_per_s_median" in act:
        for name, value in act["img_per_s_median"].items():
            print(f"activations {name}: {value:.1f} img/s")
        print(
            f"activations speed-up vs pytorch-fid: {act['speedup_vs_pytorch_fid']:.2f}x "
            f"(median of per-round ratios {act['speedup_vs_pytorch_fid_median_of_rounds']:.2f}x; "
            f"target 1.3x); CPU time vs pytorch-fid without workers "
            f"{act['speedup_cpu_time_vs_pytorch_fid_workers0']:.2f}x; "
            "max relative activation difference "
            f"{act['max_relative_activation_difference']:.1e}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
