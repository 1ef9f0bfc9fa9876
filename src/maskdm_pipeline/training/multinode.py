"""Training across nodes: what the same ``kedro run`` on every node must agree on, and how every
node ends with global rank 0's state (docs/scaling-out.md "What each node writes").

torchrun's model, with torch's own parts: each node's launcher joins a c10d rendezvous at
``trainer.rdzv_endpoint`` (torch's elastic agent, training/distributed.py); the rendezvous gives
each node its rank; the workers form one DDP job of ``nnodes * nproc`` processes. What this
module adds:

- **The rendezvous id** (:func:`rendezvous_id`): the stage name, plus ``SLURM_JOB_ID`` under
  SLURM. Every node computes the same id from what it already shares (the command, the job),
  so nobody types one. It names the stage so that the stages of one ``kedro run`` (pretrain,
  then finetune) never meet in the same rendezvous, even on a store that outlives the first;
  it does NOT hold a digest of the parameters, so that nodes started with different
  parameters still meet and are told which parameter differs (:meth:`NodeGroup.agree`)
  instead of each waiting alone until the timeout.
- **The endpoint checked before anything starts** (:func:`check_endpoint`): a host that does
  not resolve, or a port on this machine held by another program (torch's store client would
  wait forever on such a port), is refused in one line.
- **Rank 0's state on every node** (:class:`NodeGroup`): the tensors are the same on every rank
  by construction (DDP), but the evaluations and timings are rank 0's, so rank 0's state is
  sent whole, as ``torch.save`` bytes, to one process per node (a gloo group of the local
  rank 0 processes, which works beside NCCL and keeps the bytes off the GPUs), at every
  periodic checkpoint and at the end. Each node writes it atomically to its own path, so
  node-local disks and a shared filesystem both work.
- **Resume agreement**: a node keeps its previous periodic checkpoint (``<slot>.prev.pt``)
  until every node has written the next one (a barrier), so whenever one node has dropped
  step ``s``, every node holds the step after it. After the rendezvous the nodes exchange the
  steps they hold and all resume from the latest step every node holds.
- **One writer per folder**: nodes whose checkpoint folder is one folder (a shared filesystem)
  find each other at the first periodic checkpoint (:meth:`NodeGroup.writes`), and only the
  first of them writes the resume file and keeps its previous one there, so their renames never
  collide.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import multiprocessing
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from maskdm_pipeline.atomic import temporary_prefix
from maskdm_pipeline.fileio import from_bytes, save_checkpoint, to_bytes
from maskdm_pipeline.training.job import NodesError

__all__ = ["NodeGroup", "check_endpoint", "is_loopback", "previous_path", "rendezvous_id", "saved_steps"]

logger = logging.getLogger(__name__)

PROBE_SECONDS = 5.0  # how long a store that holds the port may take to answer (it answers in ms)


def rendezvous_id(name: str) -> str:
    """The c10d rendezvous id of stage ``name``: the same on every node without being typed
    (the module docstring says why it is made of these parts)."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"maskdm-{name}" + (f"-slurm{job}" if job else "")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_this_machine(host: str) -> bool:
    if is_loopback(host) or host in (socket.gethostname(), socket.getfqdn()):
        return True
    try:
        here = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        there = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(here & there)


def check_endpoint(endpoint: str, name: str) -> None:
    """Refuse, before any process starts, an endpoint that cannot work from this node.

    Raises:
        NodesError: the host does not resolve here, or the port on this machine is held by a
            program that is not a rendezvous store (another node's store on the same machine,
            as when several "nodes" share one host, is fine).
    """
    host, port = split_endpoint(endpoint)
    where = f"trainer.rdzv_endpoint={endpoint}"
    try:
        socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise NodesError(
            f"{name}: {where}: the host {host!r} cannot be resolved on this node ({exc.strerror or exc}); "
            "use the first node's hostname or IP address as the other nodes see it, the same on every "
            "node; nothing was run.") from None
    if not _is_this_machine(host):
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host if is_loopback(host) else "", port))
            return  # free: this node's launcher will host the store
        except OSError:
            pass
    if not _usable_by_rendezvous(host, port):
        raise NodesError(
            f"{name}: {where}: port {port} on this machine is in use by another program; pick a free "
            f"port (e.g. another one above 1024) and give the same trainer.rdzv_endpoint to every node; "
            "nothing was run.")


def _usable_by_rendezvous(host: str, port: int) -> bool:
    """Whether the rendezvous can use the held port ``host:port`` of this machine: a torch
    TCPStore answers there (another node's launcher hosts the store), or nothing listens any
    more (the port was held only for a moment, e.g. by another node's launcher checking it too).

    Torch's store client waits forever (in C++, where no timeout reaches it) on a port that
    another program holds, so it is tried in a forked process given :data:`PROBE_SECONDS`.
    """
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError:
        return True  # nobody listens: free again
    probe = multiprocessing.get_context("fork").Process(target=_probe_store, args=(host, port), daemon=True)
    probe.start()
    probe.join(PROBE_SECONDS)
    if probe.is_alive():
        probe.kill()
        probe.join()
    return probe.exitcode == 0


def _probe_store(host: str, port: int) -> None:
    store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=PROBE_SECONDS))
    store.check(["maskdm-probe"])


# ---------------------------------------------------------------------------- resume files
def previous_path(path: Path) -> Path:
    """Where a node keeps its previous periodic checkpoint until every node has the next one."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def saved_steps(path: Path) -> dict[int, Path]:
    """``{step: file}`` of the periodic checkpoints this node holds (the current and the
    previous one); read through a memory map, so only the small part that holds the step is
    read from disk. A damaged file is left out (and kept): it cannot be resumed from."""
    held: dict[int, Path] = {}
    for candidate in (previous_path(path), path):
        if candidate.is_file():
            try:
                state = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
                held[int(state["step"])] = candidate
            except Exception as exc:  # noqa: BLE001 - reported, and the file is not used
                logger.warning("%s cannot be read (%s); it is not used for resuming", candidate, exc)
    return held


# ---------------------------------------------------------------------------- in the workers
class NodeGroup:
    """The nodes of one DDP job, seen from one worker (rank ``rank``, local rank ``local_rank``).

    Built by every worker right after ``init_process_group`` (it creates a process group, a
    collective call). Only the local rank 0 process of each node (its *leader*) writes files.
    """

    def __init__(self, name: str, local_rank: int) -> None:
        self.name = name
        self.leader = local_rank == 0
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, (dist.get_rank(), local_rank))
        self.leaders = sorted(rank for rank, local in ranks if local == 0)
        # gloo beside NCCL: the state travels host to host, never through GPU memory.
        self.group = dist.new_group(self.leaders, backend="gloo")
        self._last: tuple[int, bytes] | None = None
        self._writes: dict[Path, bool] = {}  # checkpoint folder -> whether this node writes there

    @property
    def nnodes(self) -> int:
        return len(self.leaders)

    def agree(self, settings: Mapping[str, Any]) -> None:
        """Refuse to train when the nodes were started with different parameters.

        Raises:
            NodesError: naming each parameter that differs and its value on each node rank.
        """
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, dict(settings))
        nodes = [gathered[rank] for rank in self.leaders]
        names = sorted(set().union(*nodes))
        differing = [key for key in names if len({repr(node.get(key)) for node in nodes}) > 1]
        if differing:
            shown = "; ".join(f"{key}: " + ", ".join(f"node {i} {node.get(key)!r}" for i, node in enumerate(nodes))
                              for key in differing)
            raise NodesError(
                f"{self.name}: the {self.nnodes} nodes were started with different parameters ({shown}); "
                "give every node the same configuration and --params, then start the command again on "
                "every node; nothing was trained.")

    def agreed_resume(self, held: Mapping[int, Path]) -> tuple[int, Path | None]:
        """The latest step every node holds a periodic checkpoint of (``held``: this node's
        ``{step: file}``, :func:`saved_steps` less what the run may not go on from), and this
        node's file of it (step 0, None: no step is held everywhere, the stage starts afresh)."""
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(held))
        common = set.intersection(*(set(steps) for steps in gathered))
        if not common:
            if held:
                logger.warning("%s: this node holds steps %s but not every node does; starting afresh",
                               self.name, sorted(held))
            return 0, None
        step = max(common)
        if self.leader:
            newer = f" (this node also holds step {max(held)})" if step != max(held) else ""
            logger.info("%s: every node resumes from step %d, the latest step all %d nodes hold%s",
                        self.name, step, self.nnodes, newer)
        return step, held[step]

    def share(self, state: Mapping[str, Any] | None, step: int) -> dict[str, Any] | None:
        """Rank 0's ``state`` on every leader (None elsewhere); pass None on other ranks."""
        if not self.leader:
            return None
        if self._last is None or self._last[0] != step:
            if dist.get_rank() == 0:
                assert state is not None
                data = torch.frombuffer(bytearray(to_bytes(dict(state))), dtype=torch.uint8)
                size = torch.tensor([data.numel()], dtype=torch.int64)
            else:
                size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, src=0, group=self.group)
            if dist.get_rank() != 0:
                data = torch.empty(int(size.item()), dtype=torch.uint8)
            dist.broadcast(data, src=0, group=self.group)
            self._last = (step, data.numpy().tobytes())
        return from_bytes(self._last[1])

    def save(self, state: Mapping[str, Any] | None, step: int, path: Path) -> None:
        """Write rank 0's state on every node: keep the current file as the previous one, write
        the new one atomically, wait until every node has, then drop the previous one. Nodes
        that share the folder leave it to one of them (:meth:`writes`)."""
        shared = self.share(state, step)
        if shared is None:
            return
        if not self.writes(path.parent):
            dist.barrier(group=self.group)
            return
        previous = previous_path(path)
        with contextlib.suppress(FileNotFoundError):  # none yet
            os.replace(path, previous)
        save_checkpoint(shared, path)
        dist.barrier(group=self.group)
        previous.unlink(missing_ok=True)

    def writes(self, folder: Path) -> bool:
        """Whether this node writes the checkpoints in ``folder``: not when a node of lower rank
        sees the same folder (one folder on a shared filesystem); a collective of the leaders.

        Each leader creates a probe file there (named as a temporary of this process, so one left
        by a kill is removed as such), the leaders exchange the names, and each looks the others'
        names up in its own folder. Looked up by name, not listed: on NFS a listing may be up to
        a minute old, while a name this machine has never asked for goes to the server.
        """
        if folder not in self._writes:
            folder.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(prefix=temporary_prefix("nodes"), suffix=".tmp", dir=folder)
            os.close(handle)
            names: list[Any] = [None] * self.nnodes
            dist.all_gather_object(names, Path(probe).name, group=self.group)
            sharing = [node for node, name in enumerate(names) if (folder / name).exists()]
            dist.barrier(group=self.group)  # every node has looked before any probe goes
            os.unlink(probe)
            node = dist.get_rank(group=self.group)
            self._writes[folder] = sharing[0] == node
            if len(sharing) > 1 and sharing[0] == node:
                logger.info("%s: nodes %s share the folder %s; node %d writes its checkpoints", self.name,
                            ", ".join(map(str, sharing)), folder, node)
        return self._writes[folder]

