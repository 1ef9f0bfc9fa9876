"""Worker processes that die (`trainer.nproc=2`, gloo on the CPU, torch's elastic agent): a restarted
worker group goes on from the latest periodic checkpoint, and a run that cannot go on ends in one
line (training/restarts.py).

What is proved: with `trainer.max_restarts=1`, a worker killed with SIGKILL (what the out-of-memory
killer sends) after step 25 makes the group restart from the checkpoint of step 20, never go back
a step on disk, retrace steps 21-25 bit for bit (the EMA weights after each step) and end within
1e-5 of a one-process run, with the accounting counting the lost attempt's five steps; a worker
that raises, one that exits with a status and one killed by SIGKILL each end the run in one line
naming the rank, how it died and the last periodic checkpoint, without a traceback: the first
two in the engine (a fault at a chosen step, through the job's ``eval_fn``), the last through the
real `kedro run` with the worker killed from outside.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import DIFFUSION, TINY_MODEL, squash
from worker_faults import die_once

from maskdm_pipeline.fileio import load_checkpoint
from maskdm_pipeline.training import DiffusionConfig, ModelConfig, StageConfig, TrainerConfig, TrainJob, run_training
from maskdm_pipeline.training.job import WorkerFailed

STEPS, EVERY, DIE_AT, BATCH = 30, 10, 25, 8


def _job(images: torch.Tensor, folder: Path, how: str, *, at: int = DIE_AT, nproc: int = 2,
         restarts: int = 0) -> TrainJob:
    return TrainJob(
        images=images, model=ModelConfig(**TINY_MODEL), diffusion=DiffusionConfig(**DIFFUSION),
        stage=StageConfig(steps=STEPS, batch_size=BATCH, lr=1e-3, warmup_steps=3, log_every=1,
                          checkpoint_every=EVERY, eval_every=1),
        trainer=TrainerConfig(device="cpu", nproc=nproc, max_restarts=restarts),
        checkpoint_path=folder / "pretrained.resume.pt", eval_fn=functools.partial(die_once, str(folder), how, at),
        progress=False, name="pretrain", resume=True)


class _Watch(threading.Thread):
    """Every step the resume file on disk held while the run went on, in order."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.steps, self.done = path, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                step = int(torch.load(self.path, weights_only=True, map_location="cpu", mmap=True)["step"])
            except Exception:  # noqa: BLE001 - not written yet, or being replaced
                step = None
            if step is not None and (not self.steps or self.steps[-1] != step):
                self.steps.append(step)
            time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_worker_restarts_the_group_from_the_latest_checkpoint(tiny_images, one_thread, tmp_path):
    job = _job(tiny_images, tmp_path, "kill", restarts=1)
    watch = _Watch(Path(job.checkpoint_path))
    watch.start()
    try:
        state = run_training(job)
    finally:
        watch.done.set()
        watch.join()
    assert state["step"] == STEPS
    assert watch.steps == sorted(watch.steps) and watch.steps[-1] == STEPS, f"the resume file went back: {watch.steps}"
    # The restarted attempt retraced steps 21-25 bit for bit: the same EMA weights after each.
    trace = [line.split() for line in (tmp_path / "ema.txt").read_text().splitlines()]
    first = {int(step): digest for attempt, step, digest in trace if attempt == "0"}
    second = {int(step): digest for attempt, step, digest in trace if attempt == "1"}
    assert sorted(first) == list(range(1, DIE_AT + 1)) and sorted(second) == list(range(21, STEPS + 1))
    assert all(first[step] == second[step] for step in range(21, DIE_AT + 1))
    # ... and ends where one process ends with the same global batch (DDP's rounding only).
    single = run_training(replace(job, trainer=TrainerConfig(device="cpu"), checkpoint_path=None, eval_fn=None))
    for part in ("model", "ema"):
        ours, theirs = (state[part], single[part]) if part == "model" else (state[part]["model"], single[part]["model"])
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=0, msg=f"{part}.{key}")
    # The accounting counts both attempts: the lost steps 21-25 too, their images, tokens and time.
    stats, lost = state["stats"], DIE_AT - 20
    assert stats["restarts"] == 1 and stats["steps_redone"] == lost and stats["restart_time_s"] > 0
    assert stats["images_seen"] == (STEPS + lost) * BATCH == single["stats"]["images_seen"] + lost * BATCH
    assert stats["tokens_seen"] == single["stats"]["tokens_seen"] + lost * BATCH * 16
    elapsed = {h["step"]: h["elapsed_s"] for h in state["history"]}
    steps = [elapsed[s] - elapsed[s - 1] for s in range(2, STEPS + 1) if s != 21]
    assert elapsed[21] - elapsed[20] > 2.5 * statistics.median(steps), "the lost steps' time is missing"
    assert stats["wall_time_s"] >= elapsed[STEPS]


@pytest.mark.slow
@pytest.mark.parametrize("how, said", [("raise", r"raised MemoryError: cannot allocate the batch of step 15"),
                                       ("exit", "exited with status 3")])
def test_a_worker_that_raises_or_exits_ends_the_run_in_one_line(tiny_images, one_thread, tmp_path, capfd, how, said):
    """No restart left: the error names rank 0 (the one ``eval_fn`` runs on), how it died, the
    step and the checkpoint; neither the workers nor elastic print a traceback."""
    job = _job(tiny_images, tmp_path, how, at=15)
    with pytest.raises(WorkerFailed) as failed:
        run_training(job)
    message = str(failed.value)
    assert "\n" not in message
    assert re.fullmatch(rf"pretrain: worker rank 0 of 2 {said} \(after step 15/{STEPS}; trainer\.max_restarts=0 "
                        rf"used up\); the last periodic checkpoint is {re.escape(str(job.checkpoint_path))} \(step 10\)"
                        r"\. Rerun the same command to resume from it; .*\.", message), message
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]


def _workers(pid: int) -> list[int]:
    """The spawned worker processes of the process ``pid`` (its children that multiprocessing's
    spawn started, not its resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_text()
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            found.append(int(entry))
    return sorted(found)


def test_a_worker_killed_by_sigkill_ends_kedro_run_in_one_error_line(make_project):
    """The OOM killer's way, from outside, through the real CLI: exit status 1 and one `Error:`
    line naming the rank, SIGKILL and the resume file with its step; no traceback, no elastic
    chatter."""
    project = make_project("killed")
    params = {"trainer.nproc": 2, "pretrain.steps": 3000, "pretrain.checkpoint_every": 20, "pretrain.log_every": 5}
    run = project.start("--pipelines", "pretrain", params=params)
    run.wait_for(r"pretrain step (\d+)/3000: periodic checkpoint saved", timeout=240,
                 accept=lambda m: int(m.group(1)) >= 20)
    workers = _workers(run.proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    code, output = run.finish()
    text = squash(output)
    assert code == 1 and text.count("Error: ") == 1 and "Traceback" not in output, output[-3000:]
    held = load_checkpoint(project.data / "06_models" / "pretrained.resume.pt")["step"]
    assert re.search(rf"Error: pretrain: worker rank \d of 2 was killed by SIGKILL, the out-of-memory "
                     rf"killer's signal \(after step \d+/3000; trainer\.max_restarts=0 used up\); the last periodic "
                     rf"checkpoint is data/06_models/pretrained\.resume\.pt \(step {held}\)\. Rerun the same command "
                     r"to resume from it; raise trainer\.max_restarts .*; if memory ran out, lower "
                     r"pretrain\.batch_size\.", text), text[-2000:]
    for noise in ("torch/distributed/elastic", "ChildFailedError", "Terminating process", "leaked semaphore"):
        assert noise not in output, f"{noise!r} in the output:\n{output[-3000:]}"
