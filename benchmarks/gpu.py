"""``python -m benchmarks.gpu``: the pipeline's speed on a GPU against the card's own measured peak.

One process, in this order (each section is what the loop, sampler or metric of the pipeline
runs, not a stand-in):

1. the card's dense bf16 matrix rate: an 8192-cube product on random data, the mean of
   ``repeats`` after a warm-up; every ``mfu`` is a fraction of this measured rate (the
   datasheet's 989 TFLOP/s beside it);
2. model FLOPs per image counted from the architecture (models/flops.py) checked against torch's
   FLOP counter on this device;
3. training steps of the pipeline's loop (``TrainProcess._step``: draws, batch from the split on
   the GPU, forward, backward, clipping, AdamW, EMA) in bf16 at ``small-64`` and ``base-256``,
   unmasked and 90% block-4 masked, at a batch that fills about 70% of the card (measured from a
   probe step); images/s, TFLOP/s, MFU, and what the batch's loading costs;
4. which attention kernels ran (profiler kernel names), unmasked and masked, and the speed of
   each fused attention backend at base-256's shape;
5. sampling images/s (DPM-Solver++ 25 steps, DDIM 50) and Inception feature images/s;
6. last, ``torch.compile`` on one configuration only (base-256 unmasked, the MFU goal's): its
   compilation takes about a minute, and the whole command must end within 4 minutes, so it is
   skipped, and said so, when the time budget left is too short.

``--dry-run`` runs every section on the CPU at tiny sizes (the test suite does, so the script
cannot rot); its JSON goes where ``--json`` says, never under docs/. The real run needs CUDA.

    python -m benchmarks.gpu --json $OUT/benchmarks-gpu.json     # on the GPU machine
    python -m benchmarks.gpu --dry-run --json /tmp/gpu-dry.json  # anywhere, ~20 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_train import bench_preset, compiled, free_memory
from devkit import PROJECT_ROOT, load_average, machine_info
from maskdm_pipeline.devices import synchronize
from maskdm_pipeline.models import build_uvit
from maskdm_pipeline.models.flops import uvit_flops

SCHEMA = "maskdm-gpu-benchmark/1"
DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the vendor's datasheet
GOALS = {"mfu_base256_unmasked": 0.35, "masked90_speedup_base256": 6.0, "loading_fraction": 0.05}


def sizes(dry_run: bool) -> dict[str, Any]:
    """What each section runs: the real run's sizes, or the dry run's tiny ones."""
    if dry_run:
        return {"device": "cpu", "dtype": torch.float32, "matmul_n": 256, "warmup": 1, "repeats": 2,
                "presets": ["tiny"], "probe_batch": 4, "max_batch": 8, "steps": 2, "compile": ("tiny", "eager"),
                "sampling_batch": {"tiny": 4}, "inception_images": 4, "attention_shape": (1, 2, 17, 16)}
    return {"device": "cuda", "dtype": torch.bfloat16, "matmul_n": 8192, "warmup": 3, "repeats": 10,
            "presets": ["small-64", "base-256"], "probe_batch": 8, "max_batch": 2048, "steps": 8,
            "compile": ("base-256", "inductor"), "sampling_batch": {"small-64": 512, "base-256": 32},
            "inception_images": 2000, "attention_shape": (16, 12, 4097, 64)}


# ---------------------------------------------------------------------------- the ceiling
def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Dense matrix product rate: ``2 n^3`` FLOPs per product, random inputs (zeros run faster)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(warmup):
        a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":  # device events: no host round trip in the 1-2 ms measured
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - begin)
    rates = [2 * n**3 / t / 1e12 for t in times]
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "warmup": warmup, "repeats": repeats,
            "seconds_all": times, "tflops_all": rates, "tflops_mean": float(np.mean(rates)),
            "datasheet_tflops": DATASHEET_BF16_TFLOPS,
            "fraction_of_datasheet": float(np.mean(rates)) / DATASHEET_BF16_TFLOPS}


def flop_check(preset: str, device: torch.device) -> dict[str, Any]:
    """Counted (models/flops.py) against torch's FLOP counter, one image, forward and training."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = build_uvit(preset).to(device)
    x = torch.randn(1, model.in_chans, model.img_size, model.img_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    # On the CPU torch's counter does not see the fused attention: count its plain products there.
    backends = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), backends:
        with FlopCounterMode(display=False) as forward:
            model(x, t)
        with FlopCounterMode(display=False) as training:
            model(x, t).float().pow(2).mean().backward()
    flops = uvit_flops(model)
    return {"formula_forward": flops.forward, "counter_forward": forward.get_total_flops(),
            "forward_equal": flops.forward == forward.get_total_flops(), "formula_training": flops.training,
            "counter_training": training.get_total_flops(),
            "counter_over_formula_training": training.get_total_flops() / flops.training,
            "note": "the counter's backward omits the patch embedding's input gradient (the noisy image "
                    "needs none) and counts the fused attention's recomputed scores, hence a ratio near 1"}


# ---------------------------------------------------------------------------- attention, sampling, Inception
def attention_backends(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device,
                       repeats: int) -> dict[str, Any]:
    """Forward + backward of one scaled-dot-product attention per backend, at ``shape`` (B, H, L, hd)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, length, hd = shape
    flops = 3.5 * 4 * b * h * length * length * hd  # forward 4 B H L^2 hd; backward 2.5x (recomputes)
    out: dict[str, Any] = {"shape_bhld": list(shape), "flops_per_call": flops}
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    for name, backend in backends.items():
        try:
            with sdpa_kernel(backend):
                seconds = []
                for i in range(repeats + 1):
                    synchronize(device)
                    start = time.perf_counter()
                    torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
                    synchronize(device)
                    if i:  # the first call is the warm-up
                        seconds.append(time.perf_counter() - start)
            out[name] = {"ms": 1e3 * float(np.median(seconds)), "tflops": flops / float(np.median(seconds)) / 1e12}
        except RuntimeError as exc:  # a backend this device, dtype or shape does not support
            out[name] = {"error": str(exc).splitlines()[0][:200]}
    return out


def sampling(preset: str, batch: int, device: torch.device, precision: str) -> dict[str, Any]:
    """Images/s of one batch per sampler (untrained weights: speed does not depend on them)."""
    from maskdm_pipeline import generation

    torch.manual_seed(0)
    model = build_uvit(preset).eval()
    common = {"num_samples": batch, "batch_size": batch, "schedule": "linear", "prediction": "eps",
              "seed": 0, "device": device, "precision": precision}
    generation.generate(model, sampler="dpm++2m", steps=2, **common)  # warm-up
    out: dict[str, Any] = {"batch": batch, "precision": precision}
    for sampler, steps in (("dpm++2m", 25), ("ddim", 50)):
        start = time.perf_counter()
        generation.generate(model, sampler=sampler, steps=steps, **common)
        seconds = time.perf_counter() - start
        out[f"{sampler}-{steps}"] = {"seconds": seconds, "img_per_s": batch / seconds}
    return out


def inception(n: int, device: torch.device) -> dict[str, Any]:
    """Inception pool3 features of ``n`` 64x64 RGB images (resized to 299 inside), images/s."""
    from benchmarks.standin_weights import benchmark_weights
    from maskdm_pipeline.metrics import InceptionFeatures

    images = np.random.default_rng(0).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        weights, what = benchmark_weights(None, Path(tmp))
        extractor = InceptionFeatures(2048, weights, device=device, batch_size=min(n, 250), allow_download=False)
        extractor(images[: min(n, 250)])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        extractor(images)
        seconds = time.perf_counter() - start
    return {"images": n, "batch_size": extractor.batch_size, "seconds": seconds, "img_per_s": n / seconds,
            "weights": what}


# ---------------------------------------------------------------------------- the report
def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def card(device: torch.device) -> dict[str, Any]:
    info = machine_info(device)
    info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=driver_version())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    memory_gib=props.total_memory / 2**30)
    return info


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The three GPU goals of benchmarks/README.md, from the base-256 figures (None where base-256 did not run)."""
    base = report["train"].get("base-256")
    base = base if base and "modes" in base else None
    unmasked = base["modes"]["unmasked"] if base else None
    values = {"mfu_base256_unmasked": unmasked and unmasked["mfu"],
              "masked90_speedup_base256": base and base["masked90_speedup"],
              "loading_fraction": max((m["loading_fraction"] for p in report["train"].values()
                                       for m in p.get("modes", {}).values()), default=None)}
    out = {}
    for key, target in GOALS.items():
        value = values[key]
        passed = None if value is None else (value <= target if key == "loading_fraction" else value >= target)
        out[key] = {"target": target, "value": value, "passed": passed}
    return out


REQUIRED = {"schema": str, "dry_run": bool, "machine": dict, "matmul": dict, "flop_check": dict, "train": dict,
            "attention_backends": dict, "sampling": dict, "inception": dict, "compile": dict, "goals": dict,
            "elapsed_s": float}
REQUIRED_MODE = {"step_s": float, "img_per_s": float, "mfu": float, "tflops": float, "flops_per_image": dict,
                 "loading_fraction": float, "attention": dict, "images_on_gpu": bool}


def check_schema(report: dict[str, Any]) -> list[str]:
    """What is missing or mistyped in a report (empty: it is complete)."""
    problems = [f"{k}: expected {t.__name__}" for k, t in REQUIRED.items() if not isinstance(report.get(k), t)]
    problems += [f"{k}: {v['error']}" for k, v in report.items() if isinstance(v, dict) and "error" in v]
    problems += [f"train.{k}: {v['error']}" for k, v in (report.get("train") or {}).items() if "error" in v]
    for preset, result in (report.get("train") or {}).items():
        for mode in ("unmasked", "masked90"):
            entry = result.get("modes", {}).get(mode)
            if entry is None:
                problems.append(f"train.{preset}.modes.{mode}: missing")
                continue
            problems += [f"train.{preset}.modes.{mode}.{k}: expected {t.__name__}"
                         for k, t in REQUIRED_MODE.items() if not isinstance(entry.get(k), t)]
    if not isinstance((report.get("matmul") or {}).get("tflops_mean"), float):
        problems.append("matmul.tflops_mean: expected float")
    return problems


COMPILE_NEEDS_S = 100  # compiling base-256's step (about a minute) and timing it


def section(report: dict[str, Any], key: str, measure: Any, *args: Any, save: Any, device: torch.device) -> Any:
    """``report[key] = measure(*args)``; an error is recorded there (type and first line) and the
    run goes on to the next section, so one failure on the GPU costs one figure, not the call."""
    try:
        report[key] = measure(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON and by check_schema, exit status 1
        report[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        traceback.print_exc()
    free_memory(device)
    save(report)
    return report[key]


def run(dry_run: bool, budget_s: float, save: Any = lambda report: None, log: Any = print) -> dict[str, Any]:
    """Every section in turn; ``save(report)`` after each, so that a run stopped from outside
    still leaves what it measured."""
    started = time.perf_counter()
    size = sizes(dry_run)
    device = torch.device(size["device"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # fp32 leftovers (the loss) on the tensor cores
    else:  # tiny tensors: more threads than free cores only wait on each other (100x slower under load)
        torch.set_num_threads(1)
    report: dict[str, Any] = {"schema": SCHEMA, "dry_run": dry_run, "machine": card(device),
                              "precision": "bf16 autocast" if not dry_run else "fp32 (dry run)"}
    kw = {"save": save, "device": device}
    matmul = section(report, "matmul", matmul_rate, size["matmul_n"], size["dtype"], device, size["warmup"],
                     size["repeats"], **kw)
    ceiling = matmul.get("tflops_mean") or DATASHEET_BF16_TFLOPS  # MFU needs a ceiling; the JSON says which
    log(f"matmul {size['matmul_n']}^3: {ceiling:.1f} TFLOP/s (datasheet {DATASHEET_BF16_TFLOPS:g})")
    section(report, "flop_check", lambda: {p: flop_check(p, device) for p in size["presets"]}, **kw)
    report["train"] = {}
    for preset in size["presets"]:
        result = section(report["train"], preset, bench_preset, preset, size, ceiling, **kw)
        for mode, m in result.get("modes", {}).items():
            log(f"{preset} {mode} batch {result['batch']['batch_size']}: {m['img_per_s']:.1f} img/s, "
                f"{m['tflops']:.1f} TFLOP/s, MFU {m['mfu']:.1%}, loading {m['loading_fraction']:.1%}, "
                f"fused attention {m['attention']['fused']}")
    section(report, "attention_backends", attention_backends, size["attention_shape"], size["dtype"], device,
            size["repeats"], **kw)
    section(report, "sampling", lambda: {p: sampling(p, batch, device, "fp32" if dry_run else "bf16")
                                         for p, batch in size["sampling_batch"].items()}, **kw)
    section(report, "inception", inception, size["inception_images"], device, **kw)
    preset, backend = size["compile"]
    left = budget_s - (time.perf_counter() - started)
    if (dry_run or left > COMPILE_NEEDS_S) and "modes" in report["train"].get(preset, {}):
        section(report, "compile", compiled, preset, backend, size, report["train"][preset], ceiling, **kw)
    else:
        report["compile"] = {"skipped": f"{left:.0f} s of the {budget_s:.0f} s budget left (compiling {preset} "
                                        "takes about a minute), or its eager figures are missing"}
    report["goals"] = goals(report)
    report["machine"]["load_average_at_end"] = load_average()
    report["elapsed_s"] = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where the report goes")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="seconds this process may take; torch.compile is skipped when too few are left")
    args = parser.parse_args(argv)
    docs = (PROJECT_ROOT / "docs").resolve()
    if args.dry_run and docs in args.json.resolve().parents:
        parser.error("a dry run never writes under docs/: only a measurement on a GPU goes there")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no GPU: torch sees no CUDA device (use --dry-run to check the script on the CPU)")
    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save(report: dict[str, Any]) -> None:
        args.json.write_text(json.dumps({**report, "command": command}, indent=2, default=str))

    report = run(args.dry_run, args.budget_s, save)
    report["command"] = command
    problems = check_schema(report)
    save(report)
    print(json.dumps(report["goals"], indent=1))
    if problems:
        raise SystemExit("incomplete report: " + "; ".join(problems))
    return report


if __name__ == "__main__":
    main()
