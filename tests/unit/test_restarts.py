"""training/restarts.py without processes: which checkpoint files a restarted worker group may go on
from, what the accounting counts over the attempts, and the one line of each way a worker dies
(the real multi-process runs: tests/reliability/test_rel_workers.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.multiprocessing.errors.error_handler import ErrorHandler

from maskdm_pipeline.fileio import save_torch_state
from maskdm_pipeline.training.config import DiffusionConfig, ModelConfig, StageConfig, TrainerConfig
from maskdm_pipeline.training.job import TrainJob
from maskdm_pipeline.training.multinode import previous_path
from maskdm_pipeline.training.restarts import LOST_PEER_EXIT, Attempts, failure_message, lost_peers

STATS = {"wall_time_s": 0.0, "eval_time_s": 0.0, "checkpoint_time_s": 0.0, "images_seen": 0, "tokens_seen": 0,
         "token_blocks_seen": 0, "restarts": 0, "steps_redone": 0, "restart_time_s": 0.0}


def _job(tmp_path: Path, *, resume: bool = True, nnodes: int = 1, restarts: int = 0) -> TrainJob:
    endpoint = "127.0.0.1:29400" if nnodes > 1 else None
    return TrainJob(images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                    model=ModelConfig(preset="tiny", img_size=8, patch_size=2),
                    diffusion=DiffusionConfig(),
                    stage=StageConfig(steps=600, batch_size=8, lr=1e-3, checkpoint_every=100),
                    trainer=TrainerConfig(device="cpu", nproc=2, nnodes=nnodes, rdzv_endpoint=endpoint,
                                          max_restarts=restarts),
                    checkpoint_path=tmp_path / "baseline.resume.pt", name="baseline", resume=resume)


def _checkpoint(path: Path, step: int) -> None:
    """A file ``saved_steps`` reads the step of, written atomically as the loop writes them."""
    save_torch_state({"step": step}, path)


# ------------------------------------------------------------------ what an attempt goes on from
def test_a_file_left_before_the_command_is_never_adopted_unless_it_resumes(tmp_path):
    job = _job(tmp_path, resume=False)
    _checkpoint(job.checkpoint_path, 400)  # another run's, at a later step than this one will reach soon
    _checkpoint(previous_path(job.checkpoint_path), 300)
    attempts = Attempts(job)
    assert attempts.held(job.checkpoint_path) == {}
    _checkpoint(job.checkpoint_path, 100)  # this command's first periodic checkpoint replaces it
    assert attempts.held(job.checkpoint_path) == {100: job.checkpoint_path}
    resumed = Attempts(_job(tmp_path, resume=True))  # resume=true: what is on disk is what it resumes
    assert resumed.held(job.checkpoint_path) == {100: job.checkpoint_path,
                                                  300: previous_path(job.checkpoint_path)}


def test_a_restart_counts_the_lost_attempts_steps_and_the_restart(tmp_path):
    """The counters of the lost attempt (its steps past the checkpoint included) carry on; the
    restart adds itself, the steps trained again and the seconds between."""
    attempts = Attempts(_job(tmp_path))
    assert attempts.restarted == 0 and attempts.last_step is None
    first = attempts.begin(0, dict(STATS))
    assert first == STATS and attempts.last_step == 0
    lost = {**STATS, "wall_time_s": 34.5, "eval_time_s": 1.5, "images_seen": 345 * 8, "tokens_seen": 345 * 64}
    attempts.record(345, lost)  # the last step the first attempt finished before it died
    at_checkpoint = {**STATS, "wall_time_s": 30.0, "images_seen": 300 * 8, "tokens_seen": 300 * 64}
    second = attempts.begin(300, at_checkpoint)
    assert attempts.restarted == 2 and attempts.last_step == 300
    assert second["images_seen"] == 345 * 8 and second["tokens_seen"] == 345 * 64
    assert second["wall_time_s"] == 34.5 and second["eval_time_s"] == 1.5
    assert second["restarts"] == 1 and second["steps_redone"] == 45 and 0 < second["restart_time_s"] < 60
    assert isinstance(second["images_seen"], int) and isinstance(second["wall_time_s"], float)
    # A third attempt that starts from the same checkpoint before the second one trained a step.
    third = attempts.begin(300, at_checkpoint)
    assert third["restarts"] == 2 and third["steps_redone"] == 45 and third["images_seen"] == 345 * 8


# ------------------------------------------------------------------ how a worker died
def _failure(tmp_path: Path, rank: int, exitcode: int, exception: BaseException | None = None) -> ProcessFailure:
    """What elastic reports for a worker: with an exception, the error file its ``record``
    wrapper writes (through torch's own ErrorHandler)."""
    error_file = tmp_path / f"error-{rank}.json"
    if exception is not None:
        os.environ["TORCHELASTIC_ERROR_FILE"] = str(error_file)
        try:
            raise exception
        except BaseException as exc:  # noqa: BLE001 - recorded as elastic records it
            ErrorHandler().record_exception(exc)
        finally:
            del os.environ["TORCHELASTIC_ERROR_FILE"]
        assert json.loads(error_file.read_text())["message"]["message"].startswith(type(exception).__name__)
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


@pytest.mark.parametrize("died, how", [
    (lambda p: _failure(p, 1, -signal.SIGKILL), "was killed by SIGKILL, the out-of-memory killer's signal"),
    (lambda p: _failure(p, 1, 1, MemoryError("cannot allocate 2.00 GiB\nsecond line")),
     "raised MemoryError: cannot allocate 2.00 GiB ("),
    (lambda p: _failure(p, 1, 3), "exited with status 3"),
])
def test_each_way_a_worker_dies_is_one_line_naming_the_rank_the_cause_and_the_checkpoint(tmp_path, died, how):
    job = _job(tmp_path, restarts=1)
    attempts = Attempts(job)
    attempts.begin(300, dict(STATS))
    attempts.record(345, dict(STATS))
    _checkpoint(job.checkpoint_path, 300)
    # rank 0 only lost its peer: rank 1 is named
    message, lost = failure_message(job, {0: _failure(tmp_path, 0, LOST_PEER_EXIT), 1: died(tmp_path)}, attempts)
    assert not lost and "\n" not in message
    assert message.startswith(f"baseline: worker rank 1 of 2 {how}")
    assert "(after step 345/600; trainer.max_restarts=1 used up); the last periodic checkpoint is " \
           f"{job.checkpoint_path} (step 300). Rerun the same command to resume from it" in message
    sigkill = "SIGKILL" in how
    assert ("lower baseline.batch_size" in message) == sigkill
    assert ("raise trainer.max_restarts" in message) == ("raised" not in how)


def test_no_checkpoint_a_fresh_start_and_a_lost_node_are_said_so(tmp_path):
    job = _job(tmp_path)
    message, _ = failure_message(job, {1: _failure(tmp_path, 1, -signal.SIGKILL)}, Attempts(job))
    assert "no periodic checkpoint had been written (baseline.checkpoint_every=100). Rerun the same command to " \
           "start again" in message and "after step" not in message
    _checkpoint(job.checkpoint_path, 200)
    fresh = _job(tmp_path, resume=False)
    message, _ = failure_message(fresh, {1: _failure(tmp_path, 1, -signal.SIGKILL)}, Attempts(fresh))
    assert "Rerun the same command with baseline.resume=true to resume from it (baseline.resume=false starts " \
           "afresh)" in message
    nodes = _job(tmp_path, nnodes=2)
    for failures in (None, {0: _failure(tmp_path, 0, LOST_PEER_EXIT)}):
        message, lost = failure_message(nodes, failures, Attempts(nodes))
        assert lost and message.startswith("baseline: lost contact with another node of the job (trainer.max_restarts"
                                           "=0 used up); the last periodic checkpoint on this node is ")
        assert "(step 200). Rerun the same command on every node: they resume from the latest periodic step " \
               "every node holds" in message


def test_only_communication_errors_count_as_a_lost_peer():
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed "
                        "by peer [127.0.0.1]:14251")
    assert lost_peers(gloo) and lost_peers(dist.DistNetworkError("store gone"))
    assert not lost_peers(RuntimeError("CUDA out of memory. [see above]")) and not lost_peers(MemoryError())
