"""Sampling and features sharded over local worker processes (``trainer.nproc > 1``) give what
one process gives: the samples bitwise (uint8, CPU, fp32) for any batch size, the Inception and
fd_clf features bitwise (the parent cuts the same batches the extractor would; each worker runs
one thread here, as the parent does under ``one_torch_thread``); and Ctrl-C stops the workers
with no traceback from them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from maskdm_pipeline import fd_clf, workers
from maskdm_pipeline.generation import generate
from maskdm_pipeline.metrics import InceptionFeatures, stats_from_batches
from maskdm_pipeline.metrics.classifier import (
    ClassifierConfig,
    SmallConvClassifier,
    classifier_state,
)
from maskdm_pipeline.models import build_uvit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLING = dict(num_samples=7, schedule="linear", prediction="x0", sampler="ddim", steps=10, eta=1.0, seed=3)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_uvit("tiny", embed_dim=32, depth=2, num_heads=2, patch_size=2, img_size=8).eval()


@pytest.mark.slow
def test_sharded_samples_equal_one_process_for_any_batch_size():
    """DDIM with eta 1 draws fresh noise at every step: each sample's own generator must follow it
    to whichever worker draws it. Batch 3: ranges of 3, 3, 1; batch 7: capped at ceil(7/2) = 4."""
    model = _model()
    whole = generate(model, batch_size=7, **SAMPLING)[0]
    for batch_size in (3, 7):
        sharded = generate(model, batch_size=batch_size, nproc=2, **SAMPLING)[0]
        assert sharded.dtype == np.uint8 and np.array_equal(sharded, whole), f"batch_size={batch_size}"


def test_generate_checks_the_sampling_settings_once_not_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One validate_sampling per generate call, however many batches; bad settings are still refused."""
    from maskdm_pipeline import generation
    from maskdm_pipeline.diffusion import samplers

    calls, check = [], samplers.validate_sampling

    def counted(*args: object) -> None:
        calls.append(args)
        check(*args)

    monkeypatch.setattr(samplers, "validate_sampling", counted)
    monkeypatch.setattr(generation, "validate_sampling", counted)
    generate(_model(), batch_size=3, **SAMPLING)  # three batches: 3, 3, 1
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"sample\.steps"):
        generate(_model(), batch_size=3, **{**SAMPLING, "steps": 0})


@pytest.mark.slow
def test_sharded_inception_and_fd_clf_features_equal_one_process(tmp_path):
    from benchmarks.standin_weights import random_fid_inception_state_dict

    weights = tmp_path / "inception.pth"
    torch.save(random_fid_inception_state_dict(seed=0), weights)
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    kwargs = {"dims": 64, "weights_path": weights, "batch_size": 2, "allow_download": False}
    one = workers.features_on(workers.construct, (InceptionFeatures, kwargs), dims=64, batch_size=2, nproc=1,
                               device="cpu")
    two = workers.features_on(workers.construct, (InceptionFeatures, kwargs), dims=64, batch_size=2, nproc=2,
                               device="cpu")
    assert isinstance(one, InceptionFeatures) and isinstance(two, workers.ShardedFeatures)
    expected = one(images)
    assert expected.shape == (5, 64) and np.array_equal(two(images), expected)
    # The statistics accumulate the same batches in the same order: bitwise too.
    for a, b in zip(stats_from_batches(one.batches(images)), stats_from_batches(two.batches(images)), strict=True):
        assert np.array_equal(a, b)

    torch.manual_seed(1)
    config = ClassifierConfig(in_chans=1, height=8, width=8, num_classes=3, channels=4, feature_dim=16)
    state = {"available": True, **classifier_state(SmallConvClassifier(config))}
    digits = np.random.default_rng(1).integers(0, 256, (9, 1, 8, 8), dtype=np.uint8)
    alone = fd_clf.classifier_features(state, batch_size=4)(digits)
    spread = fd_clf.classifier_features(state, nproc=2, batch_size=4)
    assert isinstance(spread, workers.ShardedFeatures)
    assert alone.shape == (9, 16) and np.array_equal(spread(digits), alone)


STOPPED = textwrap.dedent("""
    import sys
    import torch
    from maskdm_pipeline.generation import generate
    from maskdm_pipeline.models import build_uvit

    if __name__ == "__main__":
        model = build_uvit("tiny", embed_dim=32, depth=2, num_heads=2, patch_size=2, img_size=8).eval()
        print("sampling", flush=True)
        try:
            generate(model, num_samples=64, batch_size=4, schedule="linear", prediction="x0", sampler="ddpm",
                     steps=None, nproc=2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        print("finished", flush=True)
""")


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux: their parent id, field 4 of /proc/<pid>/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_during_sharded_sampling_stops_the_workers_without_their_tracebacks(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the parent alone raises
    KeyboardInterrupt; the workers, which ignore it, are stopped at once (not after their task)."""
    script = tmp_path / "stopped.py"
    script.write_text(STOPPED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Two workers (plus the pool's resource tracker) are up and sampling.
        while len(_children(run.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(run.pid)
        assert len(workers) >= 3, "the workers did not start"
        time.sleep(1)  # under load they may still be importing torch: a Ctrl-C then must be as clean
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, out + err
    assert "interrupted" in out and "finished" not in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    left = workers
    for _ in range(50):  # the resource tracker leaves when it sees the parent's pipe close
        left = [pid for pid in workers if _alive(pid)]
        if not left:
            break
        time.sleep(0.1)
    assert not left, "worker processes outlived the parent"


def test_threads_per_worker_shares_the_cores_and_respects_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cores shared out between local processes, with OMP_NUM_THREADS as an upper bound (a
    user's OMP_NUM_THREADS=1 was overridden by torch.set_num_threads before: two "nodes" on one
    2-core machine then ran two threads each and trained ~100x slower)."""
    from maskdm_pipeline import pool

    monkeypatch.setattr(pool, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [pool.threads_per_worker(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert pool.threads_per_worker(2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert pool.threads_per_worker(2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert pool.threads_per_worker(2) == 4
