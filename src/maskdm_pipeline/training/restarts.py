"""The attempts of one multi-process run: where a restarted worker group goes on from, what the
lost attempts cost, and the one line a run whose workers died ends with.

torch's elastic agent (training/distributed.py) restarts the whole worker group of a node when a
worker fails, up to ``trainer.max_restarts`` times, with the same arguments; torch's "Train
script" page of its elastic documentation leaves it to the training script to load its latest
checkpoint when it starts, or the restarted workers lose everything since the start. Our workers
receive the job the command began with, so without this module they went back to that state and
their first checkpoints overwrote newer ones. What this module adds:

- **Where an attempt starts** (:func:`start_state`): the newest of the state the command began
  with and the periodic checkpoints on disk (several nodes: the latest step every node holds,
  training/multinode.py). The same rule runs on every attempt, the first one included, so no
  worker needs to know whether it was restarted (elastic's ``TORCHELASTIC_RESTART_COUNT`` counts
  only this node's failures, not a restart another node caused). A checkpoint file that was
  already on disk when the command began counts only when the command resumes
  (``<stage>.resume``): a file left by an earlier run is never adopted by ``resume=false``.
- **What the attempts cost** (:class:`Attempts`): shared memory between the launching process and
  every attempt of its workers on this node. The node's first worker records its step and its
  counters after every step; a restarted attempt takes over the counters of the lost one, so the
  stage's accounting (wall time, images, tokens and token-blocks seen, evaluation and checkpoint
  time) counts the steps the lost attempt trained after its last checkpoint, and adds
  ``restarts``, ``steps_redone`` and ``restart_time_s`` (from the lost attempt's last step to the
  restarted one's start: noticing the failure, stopping and starting the workers, loading).
- **A store per attempt** (:func:`store_per_attempt`), so that restarted workers do not meet
  the lost attempt's addresses.
- **The one line** (:func:`failure_message`): which rank died and how (a signal, an exception,
  an exit status), the last periodic checkpoint, what to do; the same rule on one node and on
  several.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.listing import shown
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.multinode import NodeGroup, previous_path, saved_steps

__all__ = ["LOST_PEER_EXIT", "Attempts", "failure_message", "lost_peers", "start_state", "store_per_attempt"]

logger = logging.getLogger(__name__)

LOST_PEER_EXIT = 75  # a worker whose peers are gone (EX_TEMPFAIL: rerunning may work)

# The shared record: [attempts started, step, time.time() of the record, number of counters, counters...]
_ATTEMPTS, _STEP, _TIME, _COUNT, _VALUES = 0, 1, 2, 3, 4
_CAPACITY = 16  # counters a record holds (TrainProcess.stats has 9)


def _identity(path: Path) -> tuple[int, ...] | None:
    """What tells a file apart from the one that lay at ``path`` before: an atomic write makes a
    new inode, and a rewrite in place changes the size or the modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Attempts:
    """What the launching process shares with every attempt of its worker group on this node.

    Built in the launching process before the launch (it pickles into spawned workers only: the
    record is shared memory of the ``spawn`` context, which outlives each attempt's workers).
    Only the node's first worker (local rank 0) writes the record.
    """

    def __init__(self, job: TrainJob) -> None:
        self._record = multiprocessing.get_context("spawn").RawArray("d", _VALUES + _CAPACITY)
        self._record[_STEP] = -1.0
        # The checkpoint files on disk now, unless the command resumes: never adopted (see the
        # module docstring); a file this command writes has another identity.
        path = None if job.checkpoint_path is None else Path(job.checkpoint_path)
        self._stale = {} if job.resume or path is None else {
            str(file): _identity(file) for file in (path, previous_path(path)) if file.exists()}

    @property
    def restarted(self) -> int:
        """How many attempts of the worker group began on this node before the one that asks."""
        return int(self._record[_ATTEMPTS])

    @property
    def last_step(self) -> int | None:
        """The last step a worker of this node finished, over all attempts (None: none yet)."""
        step = int(self._record[_STEP])
        return None if step < 0 else step

    def held(self, path: Path) -> dict[int, Path]:
        """``{step: file}`` of the periodic checkpoints at ``path`` (and the previous one kept
        across nodes) that this command may go on from."""
        return {step: file for step, file in saved_steps(path).items()
                if str(file) not in self._stale or _identity(file) != self._stale[str(file)]}

    def begin(self, step: int, stats: Mapping[str, Any]) -> dict[str, Any]:
        """The counters an attempt that starts at ``step`` with the checkpoint's ``stats`` goes
        on with (local rank 0 only): after a restart, the lost attempt's counters (they count its
        steps past the checkpoint) plus the restart in ``restarts``, ``steps_redone`` and
        ``restart_time_s``, which ``stats`` must hold; recorded at once."""
        counted = dict(stats)
        if self.restarted:
            lost = dict(zip(counted, self._record[_VALUES:_VALUES + int(self._record[_COUNT])], strict=False))
            counted = {key: type(value)(lost.get(key, value)) for key, value in counted.items()}
            counted["restarts"] += 1
            counted["steps_redone"] += max(0, int(self._record[_STEP]) - step)
            counted["restart_time_s"] += max(0.0, time.time() - self._record[_TIME])
        self._record[_ATTEMPTS] += 1
        self.record(step, counted)
        return counted

    def record(self, step: int, stats: Mapping[str, Any]) -> None:
        """After each step (local rank 0): the step and the counters, in ``stats``' order."""
        values = [float(value) for value in stats.values()][:_CAPACITY]
        self._record[_VALUES:_VALUES + len(values)] = values
        self._record[_COUNT], self._record[_TIME], self._record[_STEP] = len(values), time.time(), step


def start_state(job: TrainJob, nodes: NodeGroup | None, attempts: Attempts | None, rank: int) -> TrainJob:
    """The job with the state this attempt of the worker group starts from (module docstring):
    the newest of the job's own ``resume_state`` and the periodic checkpoints this command may go
    on from; with ``nodes``, the latest step every node holds (a collective: every rank calls it).
    Each rank loads the file itself: no rank writes a checkpoint before every rank has taken
    the steps after it, so they all read the same one."""
    if job.checkpoint_path is None or attempts is None:
        return job
    path = Path(job.checkpoint_path)
    held = attempts.held(path)
    if nodes is not None:
        step, file = nodes.agreed_resume(held)
        return replace(job, resume_state=None if file is None else load_checkpoint(file))
    begun = -1 if job.resume_state is None else int(job.resume_state["step"])
    newest = max(held, default=-1)
    restarted = attempts.restarted
    if newest <= begun:
        if restarted and rank == 0:
            logger.info("%s: the workers restarted after a failure (restart %d); no newer periodic checkpoint, so "
                        "they start again from %s", job.name, restarted,
                        "step 0" if begun < 0 else f"the state the command resumed (step {begun})")
        return job
    if rank == 0:
        logger.info("%s: %s from %s at step %d, the latest periodic checkpoint", job.name,
                    f"the workers restarted after a failure (restart {restarted}); they go on"
                    if restarted else "going on", shown(held[newest]), newest)
    return replace(job, resume_state=load_checkpoint(held[newest]))


@contextlib.contextmanager
def store_per_attempt(max_restarts: int) -> Iterator[None]:
    """With restarts, each attempt of the worker group gets a store of its own (torch's opt-out
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``: the first worker hosts it on a free port). The agent's
    shared store, torch's default, keeps the keys of the lost attempt's process group, and the
    restarted workers read the dead rank 0's address from it (gloo: "connectFullMesh failed ...
    Connection refused", measured with torch 2.14); without restarts there is one attempt."""
    key = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
    before = os.environ.get(key)
    if max_restarts:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before



# ---------------------------------------------------------------------------- how workers die
def lost_peers(exc: BaseException) -> bool:
    """Whether a worker's exception only says that another worker is gone: torch's distributed
    errors (NCCL, the store, the network) and gloo's transport errors, which are plain
    RuntimeErrors whose message starts with the gloo source file (``[.../gloo/transport/tcp/
    pair.cc:561] Connection closed by peer ...``)."""
    head = str(exc).split("]", 1)[0]
    return isinstance(exc, dist.DistError) or (str(exc).startswith("[") and "gloo" in head)


def _order(item: tuple[int, ProcessFailure]) -> tuple[int, float, int]:
    """Root causes first: a signal, then an exception or an exit status, then a lost peer (which
    follows another worker's death); the earliest, then the lowest rank, among equals."""
    rank, failure = item
    kind = 0 if failure.exitcode < 0 else 2 if failure.exitcode == LOST_PEER_EXIT else 1
    return kind, failure.timestamp, rank


def _how(failure: ProcessFailure) -> str:
    if failure.exitcode < 0:
        name = failure.signal_name()
        hint = ", the out-of-memory killer's signal" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    message = (failure.error_file_data or {}).get("message")
    if isinstance(message, dict):  # elastic's record of an exception: "Type: message"
        message = message.get("message")
    else:  # no record (torch puts a placeholder): the worker exited without an exception
        message = None
    if isinstance(message, str) and message.strip():
        first = message.strip().splitlines()[0]
        return f"raised {first[:300]}{'...' if len(first) > 300 else ''}"
    return f"exited with status {failure.exitcode}"


def failure_message(job: TrainJob, failures: Mapping[int, ProcessFailure] | None,
                    attempts: Attempts | None) -> tuple[str, bool]:
    """One line for a run whose workers died and could not restart any more, and whether it was
    only a peer that was lost (another node: ``failures`` None when the rendezvous itself went
    away). Names the rank (global) and how it died, the step it had reached, the last periodic
    checkpoint on this node and what to do."""
    name, trainer = job.name, job.trainer
    several = trainer.nnodes > 1
    rank, failure = min((failures or {}).items(), key=_order, default=(None, None))
    lost = failure is None or failure.exitcode == LOST_PEER_EXIT
    how = "" if lost else _how(failure)
    if lost:
        what = "lost contact with another node of the job" if several else "lost contact with another worker process"
    else:
        what = f"worker rank {rank} of {trainer.world_size} {how}"
    reached = None if attempts is None else attempts.last_step
    at = "" if reached is None else f"after step {reached}/{job.stage.steps}; "
    here = " on this node" if several else ""
    held = saved_steps(Path(job.checkpoint_path)) if job.checkpoint_path else {}
    if held:
        step = max(held)
        kept = f"the last periodic checkpoint{here} is {shown(held[step])} (step {step})"
    else:
        kept = f"no periodic checkpoint had been written{here} ({name}.checkpoint_every={job.stage.checkpoint_every})"
    rerun = "Rerun the same command on every node" if several else "Rerun the same command"
    if not held:
        todo = f"{rerun} to start again"
    elif several and job.resume:
        todo = f"{rerun}: they resume from the latest periodic step every node holds"
    elif job.resume:
        todo = f"{rerun} to resume from it"
    else:
        todo = f"{rerun} with {name}.resume=true to resume from it ({name}.resume=false starts afresh)"
    # An exception is the program's (its traceback says where); a signal or an exit status may pass.
    advice = ["the worker's traceback is in the log at DEBUG level" if how.startswith("raised") else
              "raise trainer.max_restarts to let the workers restart on their own from their last periodic checkpoint"]
    if how.startswith("was killed by SIGKILL"):
        advice.append(f"if memory ran out, lower {name}.batch_size")
    return (f"{name}: {what} ({at}trainer.max_restarts={trainer.max_restarts} used up); {kept}. {todo}; "
            + "; ".join(advice) + ".", lost)


def worker_traceback(failures: Mapping[int, ProcessFailure]) -> str:
    """The tracebacks elastic recorded for the workers that raised (for the DEBUG log)."""
    parts = []
    for rank, failure in sorted(failures.items()):
        message = (failure.error_file_data or {}).get("message")
        if isinstance(message, dict):
            parts.append(f"rank {rank}: {message.get('extraInfo', {}).get('py_callstack', '')}")
    return "\n".join(parts)
