"""The run lock (runlock.py) and the temporaries' writers (atomic.py): who holds, who is gone, who
shares. Holders of other processes are real processes; holders of "another machine" are records
with another host name, their lease set through the record's mtime (the lock reads the time on
the filesystem's clock, the mtime of the guard file it has just created, so this is what a stale
or a fresh renewal looks like to it)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from maskdm_pipeline import runlock
from maskdm_pipeline.atomic import atomic_write, host_name, remove_stale_temporaries, temporary_prefix
from maskdm_pipeline.runlock import LEASE_S, Holder, RunLock, RunLockHeld

HOLD = """
import sys
from pathlib import Path
from maskdm_pipeline.runlock import RunLock
RunLock.acquire(Path(sys.argv[1]), job=sys.argv[2] or None)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock_folder(tmp_path: Path):
    folder = tmp_path / "data" / ".run-lock"
    yield folder
    held = runlock.current()
    if held is not None:
        held.release()


def _holder_process(folder: Path, job: str = "") -> subprocess.Popen[str]:
    """Another process of this machine that holds the lock until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), job], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   sys.path)})
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def _foreign(folder: Path, age: float, job: str | None = None, host: str = "node-7.cluster") -> Holder:
    """A record of a holder on another machine, last renewed ``age`` seconds ago."""
    holder = Holder(host=host, boot="another-boot", pid=4242, start="1", command="kedro run --pipelines pretrain",
                    job=job, started="2026-12-04 10:00:00 UTC")
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{holder.name}.json"
    record.write_text(json.dumps(asdict(holder)))
    index = folder / "holders.json"
    names = json.loads(index.read_text())["holders"] if index.exists() else []
    index.write_text(json.dumps({"format": runlock.FORMAT, "holders": [*names, holder.name]}))
    then = time.time() - age
    os.utime(record, (then, then))
    return holder


def _index(folder: Path) -> list[str]:
    path = folder / "holders.json"
    return json.loads(path.read_text())["holders"] if path.exists() else []


def test_a_run_holds_the_lock_with_its_record_and_gives_it_back(lock_folder: Path) -> None:
    lock = RunLock.acquire(lock_folder)
    record = json.loads(lock.record.read_text())
    assert record["pid"] == os.getpid() and record["host"] == host_name() and record["job"] is None
    assert record["command"] and record["start"] and _index(lock_folder) == [lock.me.name]
    assert runlock.current() is lock
    lock.release()
    assert runlock.current() is None and sorted(p.name for p in lock_folder.iterdir()) == []


def test_a_live_holder_refuses_a_second_run_in_one_line_and_a_dead_one_is_taken_over(
        lock_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second run while another process of this machine holds the lock: refused, naming the
    holder's command, pid and machine, and nothing in the lock changes; once that process is
    killed (kill -9: no release), the next run takes the lock over at once, with one warning."""
    other = _holder_process(lock_folder)
    try:
        before = {p.name: p.read_bytes() for p in lock_folder.iterdir()}
        with pytest.raises(RunLockHeld) as refused:
            RunLock.acquire(lock_folder)
        message = str(refused.value)
        assert "\n" not in message and f"(pid {other.pid} on this machine" in message
        assert "holds the run lock" in message and "nothing was run" in message and "python" in message
        assert {p.name: p.read_bytes() for p in lock_folder.iterdir()} == before
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    with caplog.at_level(logging.WARNING, logger="maskdm_pipeline.runlock"):
        lock = RunLock.acquire(lock_folder)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"pid {other.pid} on this machine" in warnings[0]
    assert warnings[0].endswith("that process is gone.")
    assert _index(lock_folder) == [lock.me.name] and not (lock_folder / f"{other.pid}@{host_name()}.json").exists()


def test_a_record_of_this_machine_whose_pid_now_belongs_to_another_process_is_gone(lock_folder: Path) -> None:
    """pid reuse: the recorded start time differs from the process that has the pid now."""
    lock = RunLock.acquire(lock_folder)
    lock.release()
    reused = replace(lock.me, pid=os.getppid(), start="1")  # a live pid, started at another time
    lock_folder.mkdir(parents=True, exist_ok=True)
    (lock_folder / f"{reused.name}.json").write_text(json.dumps(asdict(reused)))
    (lock_folder / "holders.json").write_text(json.dumps({"holders": [reused.name]}))
    assert runlock._gone(reused, 0.0) == "that process is gone (its pid now belongs to another process)"
    RunLock.acquire(lock_folder).release()


def test_another_machines_holder_is_judged_by_its_lease(lock_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pid cannot be checked off its machine: a record renewed within the lease holds (the
    refusal says when the lock is free if that run is gone), one not renewed for longer is taken
    over with one warning. The same host name with another boot id is another machine."""
    live = _foreign(lock_folder, age=LEASE_S - 20)
    with pytest.raises(RunLockHeld) as refused:
        RunLock.acquire(lock_folder)
    message = str(refused.value)
    assert f"(pid 4242 on another machine, {live.host}, since {live.started})" in message
    assert re.search(r"its lease was renewed (39|40|41) s ago: if that run is gone, the lock is free (19|20|21) s "
                     r"from now", message), message
    (lock_folder / f"{live.name}.json").unlink()
    (lock_folder / "holders.json").unlink()
    expired = _foreign(lock_folder, age=LEASE_S + 15, host=host_name())  # another boot of this host's name
    with caplog.at_level(logging.WARNING, logger="maskdm_pipeline.runlock"):
        lock = RunLock.acquire(lock_folder)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.search(r"its lease ran out \(last renewed (74|75|76) s ago, lease 60 s\)\.$",
                                            warnings[0]), warnings
    assert _index(lock_folder) == [lock.me.name] and not (lock_folder / f"{expired.name}.json").exists()


def test_the_nodes_of_one_job_share_the_lock_and_other_runs_are_refused(lock_folder: Path) -> None:
    """A holder of the same job key (a node of the same multi-node job) does not block; a run of
    another job, or of none, is refused while any node holds it."""
    node = _foreign(lock_folder, age=5, job="job-A")
    with pytest.raises(RunLockHeld):
        RunLock.acquire(lock_folder, job="job-B")
    with pytest.raises(RunLockHeld):
        RunLock.acquire(lock_folder)
    lock = RunLock.acquire(lock_folder, job="job-A")
    assert _index(lock_folder) == [node.name, lock.me.name]
    lock.release()
    assert _index(lock_folder) == [node.name] and (lock_folder / f"{node.name}.json").is_file()


def test_the_holder_renews_its_lease_and_says_so_when_it_was_taken_over(
        lock_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = RunLock.acquire(lock_folder)
    old = time.time() - 50
    os.utime(lock.record, (old, old))
    deadline = time.monotonic() + 10
    while lock.record.stat().st_mtime < time.time() - 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.record.stat().st_mtime > time.time() - 10, "the heartbeat did not renew the record"
    with caplog.at_level(logging.ERROR, logger="maskdm_pipeline.runlock"):
        lock.record.unlink()  # what a run that judged this one gone does
        lock._beat.join(timeout=10)
    assert any("was taken over by another run" in r.getMessage() for r in caplog.records)
    lock.release()


def test_a_killed_guard_holder_on_this_machine_does_not_block(lock_folder: Path) -> None:
    """The guard of a run killed in the milliseconds it holds it is reclaimed at once (filelock
    checks the pid of a marker of this machine)."""
    code = ("import os, sys, filelock; g = filelock.SoftFileLease(sys.argv[1], "
            f"lease_duration={runlock.GUARD_LEASE_S!r}); g.acquire(); os._exit(9)")
    lock_folder.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", code, str(lock_folder / runlock.GUARD)], check=False)
    assert (lock_folder / runlock.GUARD).exists()
    started = time.monotonic()
    RunLock.acquire(lock_folder).release()
    assert time.monotonic() - started < 5



def test_a_lock_that_cannot_be_written_is_an_error_naming_it(tmp_path: Path) -> None:
    """data/ is a file, or the index cannot be replaced: RunLockError (the session's one line),
    never a traceback, and no guard is left behind."""
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(runlock.RunLockError, match=r"cannot write the run lock .*\.run-lock"):
        RunLock.acquire(tmp_path / "data" / ".run-lock")
    folder = tmp_path / "other" / ".run-lock"
    (folder / "holders.json").mkdir(parents=True)  # a folder where the index goes
    with pytest.raises(runlock.RunLockError, match="cannot"):
        RunLock.acquire(folder)
    assert not (folder / runlock.GUARD).exists() and runlock.current() is None

# ---------------------------------------------------------------------------- temporaries
def _temporary(folder: Path, name: str, pid: int, host: str | None = None, age: float = 0.0) -> Path:
    path = folder / (f".{name}.{pid}@{host}-r4nd0m.tmp" if host else f".{name}.{pid}-r4nd0m.tmp")
    path.write_text("half")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_temporaries_name_their_writer_and_only_those_of_gone_writers_are_removed(tmp_path: Path) -> None:
    """A live writer's temporary is never removed, by the next write to the same path or by a
    run's sweep (two nodes of a job on a shared folder write the same file); a gone writer's
    is; another machine's is kept unless the caller judges its writer gone."""
    assert temporary_prefix("pretrained.pt") == f".pretrained.pt.{os.getpid()}@{host_name()}-"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live = _temporary(tmp_path, "pretrained.pt", sleeper.pid, host_name())
        gone = _temporary(tmp_path, "pretrained.pt", dead.pid, host_name())
        older_name = _temporary(tmp_path, "pretrained.pt", dead.pid)  # before hosts were recorded
        with atomic_write(tmp_path / "pretrained.pt") as target:
            target.write_text("whole")
        assert live.exists() and not gone.exists() and not older_name.exists()
        assert (tmp_path / "pretrained.pt").read_text() == "whole"
        elsewhere = _temporary(tmp_path, "metrics.json", 1, "node-7.cluster", age=2 * LEASE_S)
        fresh = _temporary(tmp_path, "metrics.json", 1, "node-8", age=5)
        killed = _temporary(tmp_path, "baseline.pt", dead.pid, host_name())
        assert remove_stale_temporaries(tmp_path) == [killed]
        assert live.exists() and elsewhere.exists() and fresh.exists()
        judged = remove_stale_temporaries(tmp_path, lambda host, mtime: time.time() - mtime > LEASE_S)
        assert judged == [elsewhere] and fresh.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(tmp_path) == [live]


def test_another_machines_temporary_is_kept_while_that_machine_holds_a_live_lease(lock_folder: Path,
                                                                                   tmp_path: Path) -> None:
    node = _foreign(lock_folder, age=5, job="job-A")
    lock = RunLock.acquire(lock_folder, job="job-A")
    judge = lock.foreign_writer_gone()
    old = time.time() - 2 * LEASE_S
    assert not judge(node.host, old), "a node of the job holds a live lease on that machine"
    assert judge("node-9", old) and not judge("node-9", time.time() - 5)


# ---------------------------------------------------------------------------- the session
def test_the_nodes_of_one_job_compute_one_key_and_other_runs_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job key: None on one node; for several, the same from the same endpoint, node count,
    environment, selection and SLURM job whatever the other parameters; another for each of
    those that differs."""
    from maskdm_pipeline.caching.session import run_job

    def params(**trainer: object) -> dict[str, object]:
        return {"trainer": {"nnodes": 2, "rdzv_endpoint": "node0:29400", **trainer}, "pretrain": {"lr": 0.002}}

    pretrain = {"pipeline_names": ["pretrain"]}
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert run_job(params(nnodes=1), "smoke", pretrain) is None
    assert run_job(params(rdzv_endpoint=None), "smoke", pretrain) is None
    key = run_job(params(), "smoke", pretrain)
    assert key is not None and run_job({**params(), "pretrain": {"lr": 0.001}}, "smoke", pretrain) == key
    others = [run_job(params(rdzv_endpoint="node0:29500"), "smoke", pretrain),
              run_job(params(nnodes=3), "smoke", pretrain), run_job(params(), "local", pretrain),
              run_job(params(), "smoke", {"pipeline_names": ["report"]})]
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    others.append(run_job(params(), "smoke", pretrain))
    assert len({key, *others}) == 6

