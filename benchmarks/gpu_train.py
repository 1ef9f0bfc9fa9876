"""The training-step part of ``python -m benchmarks.gpu`` (benchmarks/gpu.py says what it measures):
the pipeline's own loop (``TrainProcess._step``) at a batch that fills the card, unmasked and 90%
block-masked, eager and compiled, with what loading a batch costs and which attention kernels
ran. On the CPU (the dry run) the same code runs at tiny sizes.
"""

from __future__ import annotations

import gc
import re
import time
from typing import Any

import numpy as np
import torch

from maskdm_pipeline.devices import synchronize
from maskdm_pipeline.models import build_uvit
from maskdm_pipeline.models.flops import uvit_flops
from maskdm_pipeline.training import DiffusionConfig, MaskConfig, ModelConfig, StageConfig, TrainerConfig
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.loop import TrainProcess
from maskdm_pipeline.training.process import StopOnSignal, images_to_device

FUSED = re.compile(r"flash|fmha|mem_eff|efficient_attention|cudnn.*(sdpa|attn|fmha)|sdpa", re.I)
ATTENTION = re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)
FILL = 0.7  # share of the card's memory the chosen batch may take (the rest: fragmentation, spikes)


def _shape(preset: str) -> tuple[int, int, int]:
    """(C, H, W) of the preset's images, and its patch grid side, from a model on the meta device."""
    with torch.device("meta"):
        model = build_uvit(preset)
    return model.in_chans, model.img_size, model.grid_size


def _mask(preset: str) -> MaskConfig:
    """90% block-4 masks, the paper's setting, where the patch grid holds blocks of 4; else patch masks."""
    grid = _shape(preset)[2]
    return MaskConfig(kind="block", ratio=0.9, block_size=4) if grid >= 8 else MaskConfig(kind="patch", ratio=0.75)


def _job(preset: str, batch: int, masked: bool, device: str, images: np.ndarray) -> TrainJob:
    model = ModelConfig(preset=preset, img_size=int(images.shape[-1]), in_chans=int(images.shape[1]))
    return TrainJob(images=images, model=model, diffusion=DiffusionConfig(),
                    stage=StageConfig(steps=10**6, batch_size=batch, lr=2e-4, ema_update_after_step=0),
                    trainer=TrainerConfig(device=device, precision="bf16" if device == "cuda" else "fp32"),
                    mask=_mask(preset) if masked else None, name="benchmark", progress=False)


def _images(preset: str, n: int) -> np.ndarray:
    channels, side, _ = _shape(preset)
    return np.random.default_rng(0).integers(0, 256, (n, channels, side, side), dtype=np.uint8)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def choose_batch(preset: str, size: dict[str, Any]) -> dict[str, Any]:
    """The batch that fills about ``FILL`` of the card: a probe step's peak memory, less what
    stays allocated between steps (weights, EMA, AdamW state, the split), per image, scaled."""
    device = torch.device(size["device"])
    probe = size["probe_batch"]
    if device.type != "cuda":
        return {"batch_size": size["max_batch"], "rule": "dry run: fixed"}
    free_memory(device)
    proc = TrainProcess(_job(preset, probe, False, "cuda", _images(preset, 4 * probe)), rank=0, world_size=1,
                        local_rank=0)
    for _ in range(2):
        proc._step(StopOnSignal())
    synchronize(device)
    static, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    total = torch.cuda.get_device_properties(device).total_memory
    per_image = (peak - static) / probe
    batch = int(min(size["max_batch"], FILL * (total - static) / per_image)) // 8 * 8
    del proc
    free_memory(device)
    return {"batch_size": max(8, batch), "probe_batch": probe, "static_gib": static / 2**30,
            "gib_per_image": per_image / 2**30, "total_gib": total / 2**30,
            "rule": f"{FILL:.0%} of the card's memory less what stays between steps, over a probe step's peak "
                    f"per image, rounded down to a multiple of 8, at most {size['max_batch']}"}


def time_steps(proc: TrainProcess, warmup: int, steps: int) -> float:
    """Seconds per step of the loop's own step (it ends with a host read of the loss)."""
    stop = StopOnSignal()
    for _ in range(warmup):
        proc._step(stop)
    synchronize(proc.device)
    start = time.perf_counter()
    for _ in range(steps):
        proc._step(stop)
    synchronize(proc.device)
    return (time.perf_counter() - start) / steps


def loading_time(proc: TrainProcess, images: Any, repeats: int = 10) -> float:
    """Seconds per batch of the loop's draws and gather from ``images`` (the split on the GPU or the
    host array), alone: an upper bound of its share of a step, where it runs in series."""
    synchronize(proc.device)
    start = time.perf_counter()
    for _ in range(repeats):
        draws = proc.streams.draw(proc.stage.batch_size)
        images_to_device(images, draws.indices, proc.device)
    synchronize(proc.device)
    return (time.perf_counter() - start) / repeats


def attention_kernels(proc: TrainProcess) -> dict[str, Any]:
    """The attention operators (which backend torch dispatched to) and, on a GPU, the kernels
    that ran, in one profiled step; ``fused``: a fused kernel ran (on the CPU: a fused operator)
    and the unfused ``math`` backend did not."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = proc.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        proc._step(StopOnSignal())
        synchronize(proc.device)
    events = [e for e in prof.events() if ATTENTION.search(e.name)]
    ops = sorted({e.name for e in events if e.device_type == DeviceType.CPU})
    kernels = sorted({e.name[:300] for e in events if e.device_type == DeviceType.CUDA})
    fused = any(FUSED.search(n) for n in (kernels if cuda else ops)) and not any("math" in n for n in ops)
    return {"operators": ops, "kernels": kernels, "fused": fused}


def bench_preset(preset: str, size: dict[str, Any], matmul_tflops: float) -> dict[str, Any]:
    """Both modes at the batch that fills the card; halved (at most twice) if it does not fit
    after all, which the result says (``batch.halved_after_out_of_memory``)."""
    device = torch.device(size["device"])
    fill = choose_batch(preset, size)
    for halvings in range(3):
        try:
            return _bench_at(preset, size, matmul_tflops, fill)
        except torch.cuda.OutOfMemoryError:
            if halvings == 2:
                raise
        free_memory(device)  # here, once the traceback no longer holds the failed step's tensors
        fill = {**fill, "batch_size": max(8, fill["batch_size"] // 16 * 8), "halved_after_out_of_memory":
                halvings + 1}
    raise AssertionError("unreachable")


def _bench_at(preset: str, size: dict[str, Any], matmul_tflops: float, fill: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(size["device"])
    batch = fill["batch_size"]
    images = _images(preset, 4 * batch)
    result: dict[str, Any] = {"batch": fill, "modes": {}}
    for mode, masked in (("unmasked", False), ("masked90", True)):
        free_memory(device)
        proc = TrainProcess(_job(preset, batch, masked, size["device"], images), rank=0, world_size=1, local_rank=0)
        step_s = time_steps(proc, size["warmup"], size["steps"])
        flops = uvit_flops(proc.model, proc.visible_per_image)
        img_s = batch / step_s
        tflops = flops.training * img_s / 1e12
        load_s = loading_time(proc, proc.images)
        entry = {"masked": masked, "mask": _mask(preset).model_dump() if masked else None,
                 "visible_tokens": proc.visible_per_image, "tokens": proc.tokens_per_image,
                 "steps": size["steps"], "step_s": step_s, "img_per_s": img_s,
                 "flops_per_image": flops.as_dict(), "tflops": tflops, "mfu": tflops / matmul_tflops,
                 "images_on_gpu": isinstance(proc.images, torch.Tensor),
                 "loading_s_per_batch": load_s, "loading_fraction": load_s / step_s,
                 "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                 else None}
        if device.type == "cuda" and not masked:  # what keeping the split on the GPU saves
            entry["loading_from_host_s_per_batch"] = loading_time(proc, images)
        entry["attention"] = attention_kernels(proc)
        result["modes"][mode] = entry
        del proc
    result["masked90_speedup"] = result["modes"]["unmasked"]["step_s"] / result["modes"]["masked90"]["step_s"]
    return result


def compiled(preset: str, backend: str, size: dict[str, Any], eager: dict[str, Any],
             matmul_tflops: float) -> dict[str, Any]:
    """``torch.compile`` of the loop's model (the wrap ``trainer.compile`` makes), unmasked."""
    device = torch.device(size["device"])
    batch = eager["batch"]["batch_size"]
    free_memory(device)
    proc = TrainProcess(_job(preset, batch, False, size["device"], _images(preset, 4 * batch)), rank=0,
                        world_size=1, local_rank=0)
    proc.train_model = torch.compile(proc.train_model, backend=backend)
    start = time.perf_counter()
    proc._step(StopOnSignal())  # compiles forward and backward
    synchronize(device)
    compile_s = time.perf_counter() - start
    step_s = time_steps(proc, size["warmup"], size["steps"])
    img_s = batch / step_s
    tflops = uvit_flops(proc.model).training * img_s / 1e12
    return {"preset": preset, "mode": "unmasked", "backend": backend, "batch_size": batch, "compile_s": compile_s,
            "step_s": step_s, "img_per_s": img_s, "tflops": tflops, "mfu": tflops / matmul_tflops,
            "speedup_vs_eager": eager["modes"]["unmasked"]["step_s"] / step_s}
