"""Local worker processes: the one way the project runs work in a pool of processes on this
machine (the standard library only; no torch, no Kedro).

Used by the image conversion (:mod:`maskdm_pipeline.conversion`) and by sampling and feature
extraction sharded over ``trainer.nproc`` processes (:mod:`maskdm_pipeline.workers`).

- **spawn, not fork:** the parent may hold threads (MLflow, tqdm's monitor, a Kedro runner), and
  forking a threaded process can deadlock its children; a spawned worker imports only what its
  task needs.
- **Ctrl-C:** a terminal sends SIGINT to the whole process group. The workers ignore it, so only
  the parent sees ``KeyboardInterrupt`` (one traceback or one message, not one per worker); the
  parent then stops the workers at once (SIGTERM, which they do not handle: no traceback either)
  instead of waiting for the tasks they are running, and drops the results still to come.
- **A local rank per worker:** :func:`worker_rank` (0 .. workers - 1), so that each worker can
  take its own device (``cuda:<rank>``).
- **In order, bounded:** :func:`in_order` keeps at most ``window`` tasks in flight and yields the
  results in task order, so the result never depends on which worker ran what, and the memory
  in flight does not grow with the number of tasks.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from itertools import islice
from typing import Any

__all__ = ["available_cores", "in_order", "spawn_pool", "threads_per_worker", "worker_rank"]

_RANK: list[int] = []  # set once in each worker by _start


def available_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of ``workers`` local processes on the CPU: the available cores
    shared out (at least one), so the workers do not fight over cores. ``OMP_NUM_THREADS``, when
    set, is an upper bound: the user (or a launcher) decided how many threads a process may use,
    and ``torch.set_num_threads`` would otherwise override it. Oversubscribed cores cost far more
    than idle ones here: OpenMP threads spin while they wait (two "nodes" of two threads each on
    2 cores trained ~100x slower than one node of two workers)."""
    share = max(1, available_cores() // workers)
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(share, int(explicit)) if explicit.isdigit() and int(explicit) > 0 else share


def worker_rank() -> int:
    """This worker's local rank, 0 .. workers - 1 (0 outside a pool)."""
    return _RANK[0] if _RANK else 0


def _start(ranks: Any, initializer: Callable[..., None] | None, initargs: Sequence[Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone handles Ctrl-C
    _RANK[:] = [ranks.get()]
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def spawn_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: Sequence[Any] = ()
) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes, each running ``initializer(*initargs)`` once
    (after it has taken its rank) before its first task.

    On leaving the block normally the pool finishes its tasks and closes; on an exception
    (``KeyboardInterrupt`` included) the workers are terminated and the exception goes on.
    """
    context = multiprocessing.get_context("spawn")
    ranks = context.Queue()
    for rank in range(workers):
        ranks.put(rank)
    pool: ProcessPoolExecutor | None = None
    try:
        with _sigint_deferred():
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                                       initargs=(ranks, initializer, tuple(initargs)))
            for _ in range(workers):  # the pool starts a process for each task while none is idle
                pool.submit(os.getpid)
        yield pool
    except BaseException:
        if pool is not None:
            _terminate(pool)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        ranks.close()


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Start the workers with SIGINT blocked and a Ctrl-C held back until they all exist.

    A spawned worker inherits the signal mask, so a Ctrl-C while it still starts (seconds: it
    imports torch) stays pending there until :func:`_start` ignores it, instead of printing a
    KeyboardInterrupt traceback from each worker. In the parent the signal is recorded and
    re-raised afterwards through the handler that was installed (``KeyboardInterrupt`` by
    default), once every worker is known to the pool, so that all of them can be stopped.
    Signal handlers belong to the main thread: elsewhere (Kedro's ThreadRunner) only the mask.
    """
    main = threading.current_thread() is threading.main_thread()
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum)) if main else None
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if main:
            signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)
    elif received and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now. ``ProcessPoolExecutor`` has no public way before Python 3.14
    (``terminate_workers``), which does the same through the same ``_processes`` map."""
    pids = list(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def in_order(pool: ProcessPoolExecutor, fn: Callable[..., Any], tasks: Iterable[Sequence[Any]],
             window: int) -> Iterator[Any]:
    """``fn(*task)`` for each task, computed by ``pool``, yielded in task order with at most
    ``window`` tasks submitted and not yet yielded."""
    todo = iter(tasks)
    pending: deque[Future[Any]] = deque(pool.submit(fn, *task) for task in islice(todo, window))
    try:
        while pending:
            result = pending.popleft().result()
            task = next(todo, None)
            if task is not None:
                pending.append(pool.submit(fn, *task))
            yield result
    finally:
        for future in pending:
            future.cancel()
