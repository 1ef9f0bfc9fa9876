"""The benchmark suite's ``data`` and ``memory`` sections (issue 13): the data path, side by side.

- ``preprocess``: conversion img/s of a generated folder of JPEGs with 1 and 2 worker processes
  (timed blocks interleaved; the pool's start-up is included, as a user pays it);
- ``mmap_vs_ram``: training img/s of the same images read from memory-mapped shards and from an
  array in RAM (the same :class:`TrainJob` otherwise);
- ``loop_vs_bare``: the pipeline's training loop (``run_training``: draws, batch gather, EMA,
  clipping, bookkeeping) against the bare forward / backward / AdamW step of the same model and
  batch (``benchmarks/train_step.py``'s step), on the quick-start model;
- ``memory`` (``memory_run``): peak anonymous memory of ``kedro run --pipelines preprocess`` and
  of ``pretrain`` (20 steps, ``trainer.nproc`` 1 and 2) on generated 64x64 RGB images: RssAnon
  summed over the process tree every 0.2 s, with RssFile (mapped shard pages, shared with the
  page cache) and RssShmem beside it, and what ``/dev/shm`` held during the run.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from devkit import PROJECT_ROOT, kedro_command, make_project_copy
from maskdm_pipeline.conversion import Conversion
from maskdm_pipeline.datasets import ShardDataset
from maskdm_pipeline.listing import scan_folder
from maskdm_pipeline.params import PreprocessParams

__all__ = ["bench_loop_vs_bare", "bench_mmap_vs_ram", "bench_preprocess", "generate_jpegs",
           "memory_run", "sample_tree"]


# --------------------------------------------------------------------------- inputs
def generate_jpegs(root: Path, n: int, size: tuple[int, int] = (64, 64), seed: int = 0,
                   per_folder: int = 10_000) -> Path:
    """``n`` RGB JPEGs of ``size`` = (width, height) px: smooth colour gradients with a random
    box and some noise, so that decoding costs about what a photo of that size costs;
    ``per_folder`` to a sub-folder."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    for i in range(n):
        folder = root / f"{i // per_folder:03d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, (3, 3)).astype(np.float32)
        pixels = a + (b - a) * ys * xs + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        pixels[top:top + height // 4, left:left + width // 4] = c
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:07d}.jpg", quality=90)
    return root


# conf/celeba64's conversion: the aligned CelebA size, the U-ViT crop box, resized to 64.
CELEBA_SIZE = (178, 218)
PREPROCESS = PreprocessParams(resolution=64, channels=3, crop=[57, 25, 128, 128], heldout_fraction=0.1, subset=None,
                              min_size=0, alpha_background=0, labels="none", seed=0)


# --------------------------------------------------------------------------- preprocessing speed
def bench_preprocess(n: int = 5000, repeats: int = 3, workers: tuple[int, ...] = (1, 2),
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Conversion into shards, img/s per worker count, on ``n`` generated JPEGs of CelebA's size
    (178x218) with conf/celeba64's crop and resize to 64x64."""
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-pre-") as tmp:
        log(f"data.preprocess: generating {n} JPEGs ...")
        root = generate_jpegs(Path(tmp) / "raw", n, CELEBA_SIZE)
        listing = scan_folder(root)
        seconds: dict[int, list[float]] = {w: [] for w in workers}
        cpu: dict[int, list[float]] = {w: [] for w in workers}
        digests: dict[int, str] = {}
        for _ in range(repeats):
            for w in workers:
                out = Path(tmp) / f"shards-{w}"
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                ShardDataset(str(out)).save(Conversion(listing, PREPROCESS, workers=w, progress=False))
                seconds[w].append(time.perf_counter() - start)
                cpu[w].append(_cpu_seconds() - cpu_start)
                digests[w] = (out / "index.json").read_text()
    results = {str(w): {"seconds_median": statistics.median(s), "seconds_all": s,
                        "img_per_s": n / statistics.median(s),
                        "cpu_ms_per_image": 1000 * statistics.median(cpu[w]) / n} for w, s in seconds.items()}
    base = results[str(workers[0])]["img_per_s"]
    for r in results.values():
        r["speedup_vs_1"] = r["img_per_s"] / base
    return {"num_images": n, "source_size": list(CELEBA_SIZE), "resolution": 64, "crop": PREPROCESS.crop,
            "workers": list(workers), "results": results,
            "identical_output": len(set(digests.values())) == 1,
            "method": "ShardDataset.save(Conversion(listing, workers=w)) into a fresh folder; median of "
                      "interleaved repeats; includes the worker pool's start-up; cpu_ms_per_image: user + "
                      "system time of this process and its workers (what free cores would divide)"}


def _cpu_seconds() -> float:
    """User + system seconds of this process and of its finished children (the pool's workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- training: data path
def _job(images: Any, steps: int, batch: int, **stage: Any) -> Any:
    from maskdm_pipeline.training import (
        DiffusionConfig,
        ModelConfig,
        StageConfig,
        TrainerConfig,
        TrainJob,
    )

    shape = images.shape
    return TrainJob(
        images=images, model=ModelConfig(preset="tiny", img_size=int(shape[-1]), in_chans=int(shape[1])),
        diffusion=DiffusionConfig(schedule="linear", prediction="x0"),
        stage=StageConfig(steps=steps, batch_size=batch, log_every=max(steps, 1), **stage),
        trainer=TrainerConfig(device="cpu"), progress=False)


def _loop_img_per_s(job: Any) -> tuple[float, float]:
    """(img/s of wall time, as the loop accounts it; img per CPU second of this process)."""
    from maskdm_pipeline.training import run_training

    cpu = time.process_time()
    state = run_training(job)
    cpu = time.process_time() - cpu  # includes building the model: ~1% of these runs
    images = state["stats"]["images_seen"]
    return images / state["stats"]["wall_time_s"], images / cpu


def _pair(values: dict[str, list[tuple[float, float]]], a: str, b: str) -> dict[str, Any]:
    """Medians of wall and CPU rates of ``a`` and ``b``, and the median of their per-repeat ratios."""
    out: dict[str, Any] = {}
    for i, kind in enumerate(("wall", "cpu")):
        rates = {k: [v[i] for v in vs] for k, vs in values.items()}
        out[f"img_per_{kind}_s"] = {k: statistics.median(v) for k, v in rates.items()}
        out[f"img_per_{kind}_s_all"] = rates
        out[f"ratio_{kind}"] = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
    return out


CPU_NOTE = ("wall-time rates swing by tens of percent between consecutive runs when other jobs share the "
            "cores, so the target is judged on img per CPU second of the benchmark process (the same on "
            "an idle machine for this one-thread, page-cached loop); both are reported")


def bench_mmap_vs_ram(n: int = 20_000, size: int = 32, steps: int = 40, batch: int = 64,
                      repeats: int = 4) -> dict[str, Any]:
    """Training img/s from memory-mapped shards vs the same images in RAM (page-cached shards)."""
    images = np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-mmap-") as tmp:
        ShardDataset(str(Path(tmp) / "s")).save({"images": images})
        shards = ShardDataset(str(Path(tmp) / "s")).load()["images"]
        rates: dict[str, list[tuple[float, float]]] = {"mmap": [], "ram": []}
        gather: dict[str, list[float]] = {"mmap": [], "ram": []}
        idx = np.random.default_rng(1).integers(0, n, (200, batch))
        for source in (shards, images):  # warm-up (and page cache)
            _loop_img_per_s(_job(source, min(3, steps), batch, lr=1e-3))
        for repeat in range(repeats):  # ABBA order: neither side always runs first (runs swing by ~4%)
            pairs = (("mmap", shards), ("ram", images))
            for name, source in pairs if repeat % 2 == 0 else pairs[::-1]:
                rates[name].append(_loop_img_per_s(_job(source, steps, batch, lr=1e-3)))
                start = time.perf_counter()
                for rows in idx:
                    source[rows]
                gather[name].append(idx.size / (time.perf_counter() - start))
    pair = _pair(rates, "mmap", "ram")
    return {"num_images": n, "image": [3, size, size], "model": "tiny", "batch_size": batch, "steps": steps,
            **pair, "ratio_mmap_vs_ram": pair["ratio_cpu"], "note": CPU_NOTE,
            "batch_gather_rows_per_s": {k: statistics.median(v) for k, v in gather.items()}}


def _bare_img_per_s(images: np.ndarray, steps: int, batch: int) -> tuple[float, float]:
    """The bare step of the same model on one batch: benchmarks/train_step.py's step."""
    from benchmarks.train_step import train_step
    from maskdm_pipeline.diffusion import DenoisingLoss, MaskedDenoisingLoss, make_schedule
    from maskdm_pipeline.training import ModelConfig

    torch.manual_seed(1)
    model = ModelConfig(preset="tiny", img_size=int(images.shape[-1]), in_chans=int(images.shape[1])).build()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=0.03)
    schedule = make_schedule("linear")
    losses = (DenoisingLoss(schedule, "x0"), MaskedDenoisingLoss(schedule, "x0"))
    x0 = torch.from_numpy(images[:batch]).float().div_(127.5).sub_(1.0)
    run = (model, optimizer, x0, losses, "patch", 0.0, 1, None)
    train_step(*run)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step(*run)
    return steps * batch / (time.perf_counter() - start), steps * batch / (time.process_time() - cpu)


def quickstart_images() -> np.ndarray:
    """The quick start's training images: 4,500 embedded digits at 16x16 (conf/base preprocess)."""
    from maskdm_pipeline.conversion import convert_images
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset

    params = PreprocessParams(resolution=16, channels=1, crop="none", heldout_fraction=0.1, subset=None, min_size=0,
                              alpha_background=0, labels="none", seed=0)
    return convert_images(EmbeddedDigitsDataset().load(), params)["images"][:4500]


def bench_loop_vs_bare(steps: int = 200, batch: int = 64, repeats: int = 3,
                       images: np.ndarray | None = None) -> dict[str, Any]:
    """The pipeline's loop (fine-tuning recipe of conf/base: warm-up, clipping 1.0, EMA; no
    evaluation or checkpoint, as the target excludes them) against the bare step, interleaved.
    ``images``: default the quick start's (:func:`quickstart_images`)."""
    images = quickstart_images() if images is None else images
    recipe = {"lr": 2e-3, "betas": (0.9, 0.999), "weight_decay": 0.03, "warmup_steps": 100,
              "grad_clip": 1.0, "ema_decay": 0.999, "ema_update_after_step": 100, "seed": 1}
    with tempfile.TemporaryDirectory(prefix="maskdm-bench-loop-") as tmp:
        ShardDataset(str(Path(tmp) / "s")).save({"images": images})
        shards = ShardDataset(str(Path(tmp) / "s")).load()["images"]
        _loop_img_per_s(_job(shards, min(10, steps), batch, **recipe))  # warm-up
        rates: dict[str, list[tuple[float, float]]] = {"loop": [], "bare": []}
        for _ in range(repeats):
            rates["loop"].append(_loop_img_per_s(_job(shards, steps, batch, **recipe)))
            rates["bare"].append(_bare_img_per_s(images, steps, batch))
    pair = _pair(rates, "loop", "bare")
    return {"model": "tiny (quick start: 16x16, 1 channel, x0)", "batch_size": batch, "steps": steps,
            **pair, "ratio_loop_vs_bare": pair["ratio_cpu"], "note": CPU_NOTE}


# --------------------------------------------------------------------------- memory of kedro runs
def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def sample_tree(root: int) -> dict[str, float]:
    """RssAnon, RssFile and RssShmem (MiB) summed over ``root`` and its descendants."""
    total = {"RssAnon": 0.0, "RssFile": 0.0, "RssShmem": 0.0}
    for pid in _tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in total:
                    total[key] += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _dev_shm_mib() -> float:
    usage = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    return 0.0 if usage is None else usage.used / 2**20


def measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, period: float = 0.2) -> dict[str, Any]:
    """Run ``cmd``, sampling its process tree every ``period`` s: peaks of RssAnon / RssFile /
    RssShmem (summed over the tree) and of ``/dev/shm`` usage above its level at the start."""
    shm_start = _dev_shm_mib()
    peaks = {"RssAnon": 0.0, "RssFile": 0.0, "RssShmem": 0.0, "dev_shm": 0.0}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                for key, value in sample_tree(proc.pid).items():
                    peaks[key] = max(peaks[key], value)
                peaks["dev_shm"] = max(peaks["dev_shm"], _dev_shm_mib() - shm_start)
                done.wait(period)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = proc.wait()
        done.set()
        watcher.join()
    return {"wall_s": time.perf_counter() - start, "returncode": code,
            "peak_rss_anon_mib": peaks["RssAnon"], "peak_rss_file_mib": peaks["RssFile"],
            "peak_rss_shmem_mib": peaks["RssShmem"], "dev_shm_peak_increase_mib": peaks["dev_shm"]}


def memory_run(n: int, nprocs: tuple[int, ...] = (1, 2), steps: int = 20,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """``kedro run --pipelines preprocess`` then ``pretrain`` (``steps`` steps) per ``nproc`` on
    ``n`` generated 64x64 RGB JPEGs, in a throw-away project copy; each measured by :func:`measured`."""
    base_cmd = kedro_command()
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    params = ("preprocess.resolution=64,preprocess.channels=3,trainer.device=cpu,"
              f"pretrain.steps={steps},pretrain.log_every=10,pretrain.checkpoint_every=0")
    out: dict[str, Any] = {"num_images": n, "image": [3, 64, 64], "steps": steps, "runs": {}}
    with tempfile.TemporaryDirectory(prefix=f"maskdm-bench-mem{n}-") as tmp:
        log(f"memory: generating {n} JPEGs ...")
        raw = generate_jpegs(Path(tmp) / "raw", n)
        root = make_project_copy(Path(tmp) / "project", PROJECT_ROOT)
        (root / "conf" / "local" / "catalog.yml").write_text(
            f"raw_images:\n  type: maskdm_pipeline.datasets.ImageFolder\n  path: {raw}\n")
        runs = [("preprocess", ["--pipelines", "preprocess"])]
        runs += [(f"pretrain_nproc{p}", ["--pipelines", "pretrain", "--params",
                                          f"{params},trainer.nproc={p},pretrain.resume=false"]) for p in nprocs]
        for name, args in runs:
            if name == "preprocess":
                args = [*args, "--params", params]
            log(f"memory: {n} images, {name} ...")
            result = measured([*base_cmd, "run", *args], root, env, Path(tmp) / f"{name}.log")
            if result["returncode"] != 0:
                result["log_tail"] = (Path(tmp) / f"{name}.log").read_text(errors="replace")[-3000:]
            out["runs"][name] = result
        out["data_mib"] = sum(p.stat().st_size for p in (root / "data" / "03_primary").rglob("*.npy")) / 2**20
    return out
