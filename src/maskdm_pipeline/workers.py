"""Sampling and feature extraction sharded over ``trainer.nproc`` local worker processes (torch
and the project's pool; no Kedro).

Why a spawned process pool (:mod:`maskdm_pipeline.pool`, the same as the image conversion's) and
not torch's elastic launcher, which training uses (``training/distributed.py``): sampling and
feature extraction need no collective communication. Each task is a contiguous range of sample
indices (or one batch of images) that a worker computes alone and returns; there is no gradient
to average, so no process group, rendezvous or port is needed, and a pool also balances the
tasks over the workers as they finish and streams the results back in order.

Each worker holds one object built once by ``build(device, *args)`` (the model, or a feature
extractor) on its own device: ``cuda:<local rank>`` on CUDA (one GPU per worker, as in
training), and on the CPU ``available cores // nproc`` intra-op threads, so that ``nproc``
workers do not oversubscribe the cores. Objects reach the workers as ``torch.save`` bytes, never
as tensors: torch's multiprocessing pickler would put every tensor in /dev/shm (64 MB in a
default Docker container).

Results cross back through the pool's pipe one task at a time, at most ``2 x nproc`` tasks in
flight: for sampling, one range of at most ``sample.batch_size`` uint8 images (10,000 256x256
RGB samples at batch 256: 39 pieces of 50 MB, 2 GB in all, copied once, seconds against the
hours of sampling), for features one batch's ``(b, D)`` float64 features. The parent places them
in order, so the result does not depend on which worker computed what.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from maskdm_pipeline.devices import resolve_device
from maskdm_pipeline.metrics.classifier import iter_batches
from maskdm_pipeline.pool import in_order, spawn_pool, threads_per_worker, worker_rank

__all__ = ["ShardedFeatures", "construct", "features_on", "run_sharded", "worker_device"]

_HELD: dict[str, Any] = {}  # in each worker: the object built by `build`, and its device


def worker_device(device: str | torch.device, rank: int, nproc: int) -> torch.device:
    """The device of local worker ``rank`` of ``nproc``: ``cuda:<rank>`` on CUDA; on the CPU the
    CPU, after limiting torch to ``available cores // nproc`` threads (at least one)."""
    resolved = resolve_device(device, index=rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    else:
        torch.set_num_threads(threads_per_worker(nproc))
    return resolved


def _setup(build: Callable[..., Any], args: Sequence[Any], device: str, nproc: int) -> None:
    here = worker_device(device, worker_rank(), nproc)
    _HELD.update(obj=build(here, *args), device=here)


def _call(work: Callable[..., Any], *task: Any) -> Any:
    return work(_HELD["obj"], _HELD["device"], *task)


def run_sharded(
    build: Callable[..., Any],
    args: Sequence[Any],
    work: Callable[..., Any],
    tasks: Iterable[Sequence[Any]],
    *,
    nproc: int,
    device: str | torch.device,
) -> Iterator[Any]:
    """``work(obj, device, *task)`` for each task on ``nproc`` spawned workers, yielded in task
    order; ``obj = build(device, *args)`` once per worker. ``build`` and ``work`` must be
    top-level functions (spawn pickles them by name); ``args`` should hold bytes, not tensors
    (:func:`maskdm_pipeline.fileio.to_bytes`)."""
    with spawn_pool(nproc, _setup, (build, tuple(args), str(device), nproc)) as pool:
        yield from in_order(pool, _call, ((work, *task) for task in tasks), window=2 * nproc)


def _batch_features(extractor: Any, device: torch.device, batch: np.ndarray) -> NDArray[np.float64]:
    return np.concatenate(list(extractor.batches(batch)))


class ShardedFeatures:
    """A feature extractor (``InceptionFeatures``, ``ClassifierFeatures``) run on ``nproc``
    workers, with the same interface: ``batches(images)``, ``__call__(images)``, ``dims``.

    The parent cuts the images into the same consecutive batches of ``batch_size`` as the
    extractor does alone and sends one batch a task; the worker's extractor computes it as one
    batch. Equal batches through the same network on the same kind of device give bitwise
    equal features, so the features, and the statistics accumulated from them in order, equal
    the one-process result (``tests/unit/test_workers.py``).

    ``build(device, *args)`` makes the extractor in each worker (a top-level function).
    """

    def __init__(self, build: Callable[..., Any], args: Sequence[Any], *, dims: int, batch_size: int,
                 nproc: int, device: str | torch.device) -> None:
        self.build, self.args = build, tuple(args)
        self.dims, self.batch_size, self.nproc, self.device = dims, batch_size, nproc, device

    def batches(self, images: Any) -> Iterator[NDArray[np.float64]]:
        """Features ``(b, dims)`` float64 batch by batch, in order (shards are read a batch at a
        time). A single batch is computed here: a pool would only add its start-up."""
        workers = min(self.nproc, -(-len(images) // self.batch_size))
        if workers <= 1:
            yield from self.build(resolve_device(self.device), *self.args).batches(images)
            return
        tasks = ((batch.numpy(),) for batch in iter_batches(images, self.batch_size))
        yield from run_sharded(self.build, self.args, _batch_features, tasks, nproc=workers, device=self.device)

    def __call__(self, images: Any) -> NDArray[np.float64]:
        """Features of all ``images`` ``(N, C, H, W)``: ``(N, dims)`` float64."""
        parts = list(self.batches(images))
        return np.concatenate(parts) if parts else np.empty((0, self.dims), dtype=np.float64)


def construct(device: torch.device, cls: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``cls(device=device, **kwargs)``: a ``build`` for extractors made from plain arguments."""
    return cls(device=device, **kwargs)


def features_on(build: Callable[..., Any], args: Sequence[Any], *, dims: int, batch_size: int, nproc: int,
                device: str | torch.device) -> Any:
    """The extractor ``build(device, *args)`` in this process (``nproc`` 1), or the same on
    ``nproc`` workers (:class:`ShardedFeatures`): the one place where ``trainer.nproc`` decides."""
    if nproc > 1:
        return ShardedFeatures(build, args, dims=dims, batch_size=batch_size, nproc=nproc, device=device)
    return build(resolve_device(device), *args)
