"""Multi-process data-parallel training started from inside one (Kedro) process.

DESIGN.md decides that the training node starts its own workers with
``torch.distributed.launcher.api.elastic_launch`` and returns rank 0's state, so Kedro stays
one process and saves once (the official code needed ``accelerate launch`` around the whole
program, METHOD.md section 8). Each worker runs the same loop as a single process on its
slice of the global batch (training/streams.py); DDP averages the gradients, which equals
the single-process gradient of the global batch, so ``nproc`` changes speed, not results.

Backend: NCCL with one GPU per rank on CUDA, gloo on CPU (each worker then gets
``cores // nproc`` threads so the workers do not fight over cores).

Signals: SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) reach the launching process
first. Elastic's own handling kills the workers (its shutdown: the signal, then SIGKILL after
30 s, while they wait for it to read their results) and reports only "stopped by signal", with
a screen of elastic warnings. So the launcher handles these two itself (:class:`ForwardSignals`):
it passes the signal on to the workers, which finish their step, agree to stop (one collective),
save once (rank 0) and return normally, and the caller gets the usual ``TrainingInterrupted``
naming the step. A second signal stops them at once through elastic's shutdown.

Several nodes (``trainer.nnodes > 1``, docs/scaling-out.md): the same launch on every node,
with the c10d rendezvous at ``trainer.rdzv_endpoint`` (min = max = ``nnodes``, joined within
``trainer.rdzv_timeout``, ``trainer.max_restarts`` restarts of the worker group); what the
nodes agree on and how each ends with rank 0's state: training/multinode.py.

Failures: a worker that raises (other than the errors it reports by type, which a restart would
meet again), or whose peers on other nodes are gone (:data:`LOST_PEER_EXIT`), fails, so that the
elastic agent counts a failure and restarts the group while ``trainer.max_restarts`` allows,
rather than waiting at its exit barrier for a worker that is gone. Every attempt goes on from the
latest periodic checkpoint and the accounting counts the lost ones; a run that cannot go on ends
in one line naming the rank, how it died and the checkpoint, the same on one node and on several
(training/restarts.py).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from tqdm.auto import tqdm

from maskdm_pipeline.fileio import from_bytes, to_bytes
from maskdm_pipeline.pool import threads_per_worker
from maskdm_pipeline.training.job import (
    NodesError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainJob,
    WorkerFailed,
)
from maskdm_pipeline.training.loop import TrainProcess
from maskdm_pipeline.training.multinode import (
    NodeGroup,
    check_endpoint,
    is_loopback,
    rendezvous_id,
    split_endpoint,
)
from maskdm_pipeline.training.process import HandledSignals
from maskdm_pipeline.training.restarts import (
    LOST_PEER_EXIT,
    Attempts,
    failure_message,
    lost_peers,
    start_state,
    store_per_attempt,
    worker_traceback,
)

__all__ = ["NODE_RANK", "ForwardSignals", "free_port", "node_rank_of", "run_distributed", "worker_entry"]

logger = logging.getLogger(__name__)

# Which node of the job this process is (0: the node that holds global rank 0; the c10d
# rendezvous ranks the nodes as they join): the key of run_distributed's result, and the
# attribute of the errors that leave it once the nodes were ranked (node_rank_of).
NODE_RANK = "node_rank"

# Exceptions a worker reports by name so the parent can raise the same type with the same
# message; they come from the job itself (its settings, its numbers), so a restart would meet
# them again: they end the run rather than fail a worker.
_KNOWN_ERRORS: dict[str, type[Exception]] = {
    "NonFiniteLossError": NonFiniteLossError,
    "NodesError": NodesError,
    "ValueError": ValueError,
}


@contextlib.contextmanager
def _ranked(started: Any) -> Iterator[None]:
    """An error that leaves the block carries this node's rank (its :data:`NODE_RANK`
    attribute) once the rendezvous has given one (``started.value``, -1 before)."""
    try:
        yield
    except BaseException as exc:
        if started.value >= 0:
            setattr(exc, NODE_RANK, started.value)
        raise


def node_rank_of(error: BaseException) -> int | None:
    """The node rank of the multi-process training that ``error`` ended, or None when it ended
    before the nodes were ranked (or is not a training error). Found on ``error`` or on the
    error it was raised from or while handling (a stage's message raised ``from None`` still
    has it as ``__context__``), so that the MLflow hook knows on which node a failed
    multi-node job is tracked."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        rank = getattr(found, NODE_RANK, None)
        if isinstance(rank, int):
            return rank
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def free_port() -> int:
    """A TCP port that is free on localhost now (the rendezvous binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_entry(job: TrainJob, log_level: int, started: Any = None,
                 attempts: Attempts | None = None) -> dict[str, Any]:
    """Body of each worker process (top level, so that ``spawn`` can pickle it); every attempt of
    the worker group starts from the latest periodic checkpoint (training/restarts.py).

    Returns ``{"state": ...}`` (rank 0's state as ``torch.save`` bytes, None elsewhere) or
    ``{"error": ...}`` for the errors of :data:`_KNOWN_ERRORS`, so the parent can re-raise them
    with their own type. Any other exception fails the worker: elastic records its type and
    message (its ``record`` wrapper) and the agent restarts the group while restarts are left;
    a worker whose peers are gone returns ``{"lost": rank}`` (the cause is another worker of
    this node) or, with several nodes, exits with :data:`LOST_PEER_EXIT`.
    """
    if started is not None:  # workers start once the rendezvous is complete: say which node this is
        started.value = int(os.environ.get("GROUP_RANK", "0"))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    # A spawned process starts without the parent's logging set-up (or with Kedro's default one,
    # rich and 80 columns wide, when spawn re-imports the `kedro` script): one plain line per
    # record, marked with the rank, so that rank 0's progress lines read the same in a pipe.
    logging.basicConfig(level=log_level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
                        force=True)
    # tqdm's default lock is a multiprocessing RLock, a named semaphore that a worker killed by a
    # signal never unlinks, and Python's resource tracker then warns of it when the command ends;
    # one process's bar needs a thread lock only.
    tqdm.set_lock(threading.RLock())
    cuda = job.trainer.resolved_device() == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        endpoint = job.trainer.rdzv_endpoint
        if job.trainer.nnodes > 1 and endpoint and is_loopback(split_endpoint(endpoint)[0]):
            local *= job.trainer.nnodes  # every "node" is on this machine: they share its cores
        torch.set_num_threads(threads_per_worker(local))
    dist.init_process_group("nccl" if cuda else "gloo")
    nodes = None
    try:
        if job.trainer.nnodes > 1:
            nodes = NodeGroup(job.name, local_rank)
            nodes.agree(job.shared_settings or {f"{block}.{key}": value for block, values in job.config().items()
                                              for key, value in values.items()})
        job = start_state(job, nodes, attempts, rank)
        state = TrainProcess(job, rank=rank, world_size=world_size, local_rank=local_rank, nodes=nodes,
                             attempts=attempts if local_rank == 0 else None).train()
        return {"state": _to_bytes(state)}
    except TrainingInterrupted as exc:
        return {"interrupted": str(exc), "state": _to_bytes(exc.state)}
    except Exception as exc:
        if type(exc).__name__ in _KNOWN_ERRORS:
            return {"error": type(exc).__name__, "message": str(exc), "rank": rank}
        if lost_peers(exc):  # a consequence of another worker's end, not a cause
            logger.debug("rank %d lost its peers", rank, exc_info=True)
            if job.trainer.nnodes > 1:  # the cause may be on another node: this agent must see a failure
                raise SystemExit(LOST_PEER_EXIT) from None
            return {"lost": rank}  # the cause is a worker of this node: its failure, or its error above
        raise
    finally:
        dist.destroy_process_group()


class ForwardSignals(HandledSignals):
    """In the launching process, while the workers run: the first SIGINT/SIGTERM is passed on to
    every worker (which stops cleanly after its step); a second one raises elastic's
    ``SignalException``, whose shutdown stops them at once."""

    def __init__(self) -> None:
        super().__init__()
        self.received: signal.Signals | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        if self.received is not None:
            raise SignalException(f"a second {sig.name}: stopping the workers now", sigval=sig)
        self.received = sig
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    def __enter__(self) -> ForwardSignals:
        super().__enter__()
        return self


def _to_bytes(state: dict[str, Any] | None) -> bytes | None:
    """Rank 0's state as bytes (fileio.to_bytes: never through /dev/shm); None elsewhere."""
    return None if state is None else to_bytes(state)


def run_distributed(job: TrainJob) -> dict[str, Any]:
    """Run a ``TrainProcess`` on each of ``trainer.nproc`` local workers; return rank 0's state
    with this node's rank under :data:`NODE_RANK` (no part of the checkpoint: the caller takes
    it out). An error raised once the nodes were ranked carries the rank too (:func:`node_rank_of`)."""
    nproc = job.trainer.nproc
    try:
        pickle.dumps(job.eval_fn)
    except Exception as exc:  # noqa: BLE001 - pickle raises several types
        raise ValueError(
            f"eval_fn must be picklable to reach the {nproc} worker processes (trainer.nproc="
            f"{nproc}); use a top-level function or functools.partial, not a closure or "
            f"lambda ({type(exc).__name__}: {exc})"
        ) from exc
    config, endpoint = _launch_config(job)
    if job.trainer.nnodes > 1:  # each node resumes from the step all nodes hold (training/multinode.py)
        job = replace(job, resume_state=None)
    attempts = Attempts(job)  # before the launch: which checkpoint files were there already
    # This node's rank, set by its workers once the rendezvous has ranked the nodes (-1 before):
    # known even when the job fails afterwards, so the MLflow hook can still mark rank 0's run FAILED.
    started = multiprocessing.get_context("spawn").Value("i", -1)
    # elastic installs its own handlers (SIGHUP, SIGQUIT) and does not restore them afterwards.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGQUIT)}
    try:
        log_level = logging.getLogger("maskdm_pipeline.training").getEffectiveLevel()
        with ForwardSignals() as forwarded, _quiet_elastic(log_level), store_per_attempt(job.trainer.max_restarts):
            with _ranked(started):
                results = elastic_launch(config, worker_entry)(job, log_level, started, attempts)
    except (SignalException, RendezvousError, ChildFailedError) as exc:
        _raise_launch_error(exc, job, endpoint, started.value >= 0, forwarded.received, attempts)
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    with _ranked(started):
        return {**_rank0_result(results, job, attempts), NODE_RANK: started.value}


def _launch_config(job: TrainJob) -> tuple[LaunchConfig, str]:
    """Elastic's launch of this node's ``trainer.nproc`` workers, and the rendezvous endpoint.

    Raises (before any process starts):
        ValueError: ``trainer.nnodes > 1`` without ``trainer.rdzv_endpoint``.
        NodesError: the endpoint cannot be used from this node (training/multinode.py).
    """
    trainer = job.trainer
    trainer.check_nodes()
    if trainer.rdzv_endpoint is None:  # one node: a private port, an id of its own
        endpoint, run_id = f"127.0.0.1:{free_port()}", f"maskdm-{uuid.uuid4().hex[:8]}"
    else:
        check_endpoint(trainer.rdzv_endpoint, job.name)
        endpoint, run_id = trainer.rdzv_endpoint, rendezvous_id(job.name)
    config = LaunchConfig(
        min_nodes=trainer.nnodes, max_nodes=trainer.nnodes, nproc_per_node=trainer.nproc,
        rdzv_backend="c10d", rdzv_endpoint=endpoint, run_id=run_id,
        rdzv_configs={"join_timeout": trainer.rdzv_timeout, "read_timeout": trainer.rdzv_timeout},
        max_restarts=trainer.max_restarts, start_method="spawn",
        # The address the other nodes reach this one at: the FQDN lookup (None) across machines;
        # on a loopback endpoint 127.0.0.1, which also skips that lookup (it can stall when sandboxed).
        local_addr="127.0.0.1" if is_loopback(split_endpoint(endpoint)[0]) else None,
        signals_to_handle="SIGHUP,SIGQUIT",  # SIGINT and SIGTERM: ForwardSignals
    )
    return config, endpoint


def _raise_launch_error(exc: Exception, job: TrainJob, endpoint: str, started: bool,
                        signalled: signal.Signals | None, attempts: Attempts) -> NoReturn:
    """Raise, for a launch that failed with ``exc``, the error the caller acts on, in one line: a
    signal is ``TrainingInterrupted``; a rendezvous that failed, or another node lost, is
    ``NodesError``; a worker that died here (a signal, an exception, an exit status) once the
    restarts were used up is ``WorkerFailed`` (training/restarts.py ``failure_message``, one rule
    for one node and several). ``started``: the rendezvous had ranked the nodes (the job ran);
    ``signalled``: the signal :class:`ForwardSignals` passed on."""
    path, trainer = job.checkpoint_path, job.trainer
    if isinstance(exc, SignalException):
        # A second signal (or SIGHUP/SIGQUIT): the workers were stopped mid-step.
        where = (f"the last periodic checkpoint is in {path}; continue with "
                 f"resume_state=load_checkpoint({str(path)!r})") if path else \
            "the job has no checkpoint_path, so nothing was saved"
        raise TrainingInterrupted(
            f"{job.name}: distributed training stopped by {exc.sigval.name}; {where}",
            step=None, checkpoint_path=None if path is None else Path(path),
        ) from exc
    if isinstance(exc, RendezvousError):
        if started:  # the job ran, then the rendezvous (a node hosting its store) was lost
            raise NodesError(failure_message(job, None, attempts)[0]) from exc
        if not isinstance(exc, RendezvousTimeoutError):
            raise NodesError(
                f"{job.name}: cannot reach the rendezvous at trainer.rdzv_endpoint={endpoint} "
                f"({type(exc).__name__}); check that the host is the first node as the other nodes see it, "
                "that the port is open between the nodes and that the first node's command is running; "
                "nothing was trained.") from exc
        raise NodesError(
            f"{job.name}: not all trainer.nnodes={trainer.nnodes} nodes joined the rendezvous at "
            f"trainer.rdzv_endpoint={endpoint} within trainer.rdzv_timeout={trainer.rdzv_timeout} s; start "
            "the same command on every node (the same trainer.rdzv_endpoint and trainer.nnodes), or raise "
            "trainer.rdzv_timeout; nothing was trained.") from exc
    assert isinstance(exc, ChildFailedError)
    if signalled is None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("the failed workers' tracebacks:\n%s", worker_traceback(exc.failures))
        message, lost = failure_message(job, exc.failures, attempts)
        raise (NodesError if lost and trainer.nnodes > 1 else WorkerFailed)(message) from None
    # Signalled before a worker could install its handler (while it started up).
    raise TrainingInterrupted(
        f"{job.name}: stopped by {signalled.name} while the worker processes started; "
        + (f"any earlier checkpoint in {path} is untouched" if path else "nothing was saved"),
        step=None, checkpoint_path=None if path is None else Path(path),
    ) from exc


def _rank0_result(results: dict[int, Any], job: TrainJob, attempts: Attempts) -> dict[str, Any]:
    """Re-raise a worker's error with its own type, or return rank 0's state."""
    errors = sorted((r for r in results.values() if "error" in r), key=lambda r: r["rank"])
    if errors:  # the lowest rank's (every rank meets the same NaN, the same refusal)
        raise _KNOWN_ERRORS[errors[0]["error"]](errors[0]["message"])
    held = [rank for rank, r in results.items() if r.get("state") is not None]
    if not held:  # every worker lost its peers, and none failed: nothing left to name
        raise WorkerFailed(failure_message(job, None, attempts)[0])
    rank0 = results[min(held)]
    if "interrupted" in rank0:
        path = job.checkpoint_path
        state = from_bytes(rank0["state"])
        raise TrainingInterrupted(rank0["interrupted"], step=state["step"],
                                  checkpoint_path=None if path is None else Path(path), state=state)
    return from_bytes(rank0["state"])


@contextlib.contextmanager
def _quiet_elastic(log_level: int) -> Iterator[None]:
    """Elastic's own records off while it runs (unless our training logs are at DEBUG), and those
    of torch's process starter it uses ("Terminating process ... via signal SIGTERM" when it stops
    a worker group): the failures they report with tracebacks (a lost node, a worker that died, a
    rendezvous that timed out) reach the user as one line from :func:`run_distributed` instead."""
    if log_level <= logging.DEBUG:
        yield
        return
    prefixes = ("torch.distributed.elastic", "torch.multiprocessing")
    names = [name for name in list(logging.root.manager.loggerDict) if name.startswith(prefixes)]
    quieted = [logging.getLogger(name) for name in [*prefixes, *names]]
    levels = [quiet.level for quiet in quieted]
    for quiet in quieted:
        quiet.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for quiet, level in zip(quieted, levels, strict=True):
            quiet.setLevel(level)
