"""The run lock: while one ``kedro run`` writes a project's ``data/``, no other run of the project
starts there (the nodes of one multi-node job are one run and share it). docs/reliability.md
"Two runs in one project" is the user's side of it.

Why a lock: a second run would adopt the first one's unfinished resume checkpoint, overwrite its
outputs, and its writes would race the first one's (a run's outputs, resume file and fingerprint
records are one consistent set only if one run writes them). So every ``kedro run`` takes the
lock before its catalog is made, and a second one stops at once, naming the holder.

The lock is a folder (``data/.run-lock/``, :data:`FOLDER`):

- ``<pid>@<host>.json``, one *record* per holder: its host, the machine's boot id, its pid and
  process start time, the command, its job (below) and when it started. The record's mtime is
  its lease: the holder renews it (``os.utime``) every :data:`HEARTBEAT_S` seconds from a thread.
- ``holders.json``, the index: the names of the records. Read by name, never by listing the
  folder: on NFS a listing may be up to a minute old (directory attribute caching), while opening
  a known name revalidates it (close-to-open consistency).
- ``guard.lock``, a ``filelock.SoftFileLease``: held for the milliseconds in which a run reads the
  index, judges the holders and writes itself in (or out), so two runs never both see a free lock.

When a holder counts as gone (its record is then removed, with one warning):

- on this machine (the same host name and boot id): at once, when its process is gone (its pid no
  longer exists, or is another process's: the start time differs); a pid means nothing elsewhere;
- on another machine: when its lease ran out, i.e. its record was not renewed for :data:`LEASE_S`
  seconds, measured on the filesystem's clock (the mtime of the guard file this run has just
  created, against the record's), so the machines' clocks need not agree. A holder killed with
  ``kill -9`` on another machine blocks for at most :data:`LEASE_S` seconds after its last renewal.

The nodes of one job share the lock: a run gives a *job* key (the caller derives it from what the
nodes share: ``trainer.rdzv_endpoint``, the pipelines run, the SLURM job), and holders of the same
non-null key do not block each other. A run without a key (one node) shares with nobody.

Why not a library's lock alone: ``fcntl``/``flock`` locks do not reach across machines on many
cluster filesystems (Lustre without ``-o flock``, BeeGFS by default), and a lock file alone cannot
be shared by the nodes of a job, name its holder's command, or be judged at once by the next run;
``filelock``'s lease does the part it fits, the short critical section, where its contenders watch
a silent marker for its lease period (:data:`GUARD_LEASE_S`) before breaking it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import filelock

from maskdm_pipeline.atomic import ForeignWriterGone, atomic_write, host_name, process_alive
from maskdm_pipeline.listing import shown

__all__ = ["FOLDER", "HEARTBEAT_S", "LEASE_S", "Holder", "RunLock", "RunLockError", "RunLockHeld", "current"]

logger = logging.getLogger(__name__)

FOLDER = Path("data") / ".run-lock"  # relative to the project root
FORMAT = "maskdm-run-lock/1"
LEASE_S = 60.0  # a holder on another machine whose record was not renewed for this long is gone
HEARTBEAT_S = 10.0  # how often a holder renews its record: several renewals fit in one lease
GUARD_LEASE_S = 10.0  # the guard's lease: how long a guard left by a killed run blocks (filelock)
GUARD_TIMEOUT_S = 3 * GUARD_LEASE_S
INDEX, GUARD = "holders.json", "guard.lock"


class RunLockError(Exception):
    """The lock could not be read or written (its folder is not writable, the guard stayed held)."""


class RunLockHeld(RunLockError):
    """Another run holds the lock; the message names it."""

    def __init__(self, holder: Holder, age: float, folder: Path) -> None:
        self.holder = holder
        lease = "" if holder.here() else (
            f"; its lease was renewed {age:.0f} s ago: if that run is gone, the lock is free "
            f"{max(0.0, LEASE_S - age):.0f} s from now")
        super().__init__(
            f"another run is writing this project: {holder.describe()} holds the run lock {shown(folder)}{lease}. "
            "Two runs in one project would adopt, overwrite or delete each other's files, so nothing was run: "
            "wait until it ends (or stop it), or run in a copy of the project.")


@dataclass(frozen=True)
class Holder:
    """One holder's record (``<pid>@<host>.json``)."""

    host: str
    boot: str  # the machine's boot id ("" where unknown): the same host name after a restart is another machine
    pid: int
    start: str | None  # the process's start time (Linux: clock ticks since boot), against pid reuse
    command: str
    job: str | None
    started: str  # local time with its zone, for the user

    @property
    def name(self) -> str:
        return f"{self.pid}@{self.host}"

    def here(self) -> bool:
        """Whether it runs on this machine, where its pid can be checked."""
        return self.host == host_name() and self.boot == _boot_id()

    def describe(self) -> str:
        where = "this machine" if self.here() else "another machine"
        return f"`{self.command}` (pid {self.pid} on {where}, {self.host}, since {self.started})"

    @classmethod
    def of_this_process(cls, job: str | None) -> Holder:
        head = sys.argv[0] if sys.argv else ""
        program = [Path(sys.executable).name, "-c", "…"] if head == "-c" else [Path(head).name or "python"]
        command = shlex.join([*program, *sys.argv[1:]])
        return cls(host=host_name(), boot=_boot_id(), pid=os.getpid(), start=_start_token(os.getpid()),
                   command=command if len(command) <= 400 else command[:399] + "…", job=job,
                   started=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_token(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc/<pid>/stat`` field 22), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # the command name may hold spaces and parentheses


def _gone(holder: Holder, age: float) -> str | None:
    """Why ``holder`` no longer holds the lock (``age``: seconds since its last renewal, on the
    filesystem's clock), or None while it does."""
    if holder.here():
        if not process_alive(holder.pid):
            return "that process is gone"
        now = _start_token(holder.pid)
        if holder.start is not None and now is not None and now != holder.start:
            return "that process is gone (its pid now belongs to another process)"
        return None
    if age > LEASE_S:
        return f"its lease ran out (last renewed {age:.0f} s ago, lease {LEASE_S:.0f} s)"
    return None


class RunLock:
    """The run lock as held by this process; :meth:`acquire` takes it, :meth:`release` gives it back."""

    def __init__(self, folder: Path, me: Holder, clock_offset: float) -> None:
        self.folder, self.me = folder, me
        self._offset = clock_offset  # the filesystem's clock minus this machine's
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._renew, name="run-lock-heartbeat", daemon=True)

    @property
    def record(self) -> Path:
        return self.folder / f"{self.me.name}.json"

    @classmethod
    def acquire(cls, folder: Path, job: str | None = None) -> RunLock:
        """Take the lock in ``folder`` (created if missing), or join the holders of the same ``job``;
        holders found gone are removed, with one warning each.

        Raises:
            RunLockHeld: a live holder of another job (or any live holder, for ``job=None``).
            RunLockError: the folder cannot be written, or its guard stayed held for
                :data:`GUARD_TIMEOUT_S` seconds.
        """
        global _CURRENT
        me = Holder.of_this_process(job)
        lock = cls(folder, me, 0.0)
        with lock._guarded() as now:
            lock._offset = now - time.time()
            kept, stale = [], []
            for name in dict.fromkeys(_read_index(folder)):
                # A record under this process's own name is an earlier process's with the same pid
                # (gone: its start time differs) or this process's own (held: refused below).
                holder, age = _read_record(folder / f"{name}.json", now)
                why = "its record is missing" if holder is None else _gone(holder, age)
                if why is not None:
                    stale.append((name, holder, why))
                elif holder is not None and (job is None or holder.job != job):
                    raise RunLockHeld(holder, age, folder)
                else:
                    kept.append(name)
            for name, holder, why in stale:
                (folder / f"{name}.json").unlink(missing_ok=True)
                logger.warning("Took over the run lock %s from %s: %s.", shown(folder),
                               holder.describe() if holder else f"the run {name}", why)
            _write_json(lock.record, asdict(me))
            _write_json(folder / INDEX, {"format": FORMAT, "holders": list(dict.fromkeys([*kept, me.name]))})
        lock._beat.start()
        _CURRENT = lock
        return lock

    def release(self) -> None:
        """Give the lock back (remove this holder's record and its name in the index)."""
        global _CURRENT
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()
        if _CURRENT is self:
            _CURRENT = None
        try:
            with self._guarded():
                names = [name for name in _read_index(self.folder) if name != self.me.name]
                if names:
                    _write_json(self.folder / INDEX, {"format": FORMAT, "holders": names})
                else:
                    (self.folder / INDEX).unlink(missing_ok=True)
                self.record.unlink(missing_ok=True)
        except RunLockError as exc:  # the next run finds the record gone and removes the name
            self.record.unlink(missing_ok=True)
            logger.warning("The run lock %s could not be updated (%s); its record was removed.", self.folder, exc)

    def foreign_writer_gone(self) -> ForeignWriterGone:
        """A judge for another machine's temporaries (``atomic.remove_stale_temporaries``): its
        writer is gone when no live holder of the lock runs on that machine now and the temporary
        has not changed for :data:`LEASE_S` seconds (on the filesystem's clock)."""
        now = time.time() + self._offset
        live = {self.me.host}
        for name in _read_index(self.folder):
            holder, age = _read_record(self.folder / f"{name}.json", now)
            if holder is not None and _gone(holder, age) is None:
                live.add(holder.host)
        return lambda host, mtime: host not in live and now - mtime > LEASE_S

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[float]:
        """Hold the guard; yields the filesystem's time now (the new guard file's mtime)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            guard = filelock.SoftFileLease(self.folder / GUARD, lease_duration=GUARD_LEASE_S)
            guard.acquire(timeout=GUARD_TIMEOUT_S)
        except filelock.Timeout:
            raise RunLockError(f"the guard {shown(self.folder / GUARD)} of the run lock stayed held for "
                               f"{GUARD_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise RunLockError(f"cannot write the run lock {shown(self.folder)}: {exc.strerror or exc}") from exc
        try:
            try:
                now = (self.folder / GUARD).stat().st_mtime
            except OSError:
                now = time.time()
            yield now
        except OSError as exc:  # writing a record or the index (a full disk, a read-only folder)
            raise RunLockError(f"cannot write the run lock {shown(self.folder)}: {exc.strerror or exc}") from exc
        finally:
            guard.release()

    def _renew(self) -> None:
        """The heartbeat: renew the record's lease until released."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.record)
            except FileNotFoundError:
                logger.error("The run lock %s was taken over by another run: this run's record was not renewed "
                             "for %.0f s (a machine or filesystem that stalled). Both runs may now write the same "
                             "files.", self.folder, LEASE_S)
                return
            except OSError as exc:  # a passing filesystem error: the next renewal may work
                logger.warning("Could not renew the run lock %s (%s); retrying in %.0f s.", self.folder, exc,
                               HEARTBEAT_S)


_CURRENT: RunLock | None = None


def current() -> RunLock | None:
    """The run lock this process holds, if any."""
    return _CURRENT


def _read_index(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / INDEX).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RunLockError(f"the run lock's index {folder / INDEX} cannot be read ({exc}); delete it if no "
                           "other run is writing this project") from None
    return [str(name) for name in data.get("holders", [])] if isinstance(data, dict) else []


def _read_record(path: Path, now: float) -> tuple[Holder | None, float]:
    """A holder's record and its age (seconds since its last renewal, on the filesystem's clock);
    (None, 0) when it is missing or unreadable."""
    try:
        with path.open() as file:  # opened, not stat-ed: NFS revalidates the attributes on open
            age = now - os.fstat(file.fileno()).st_mtime
            data = json.load(file)
        return Holder(**{field.name: data[field.name] for field in fields(Holder)}), age
    except (OSError, ValueError, TypeError, KeyError):
        return None, 0.0


def _write_json(path: Path, data: object) -> None:
    with atomic_write(path) as target:
        target.write_text(json.dumps(data, indent=1) + "\n")
