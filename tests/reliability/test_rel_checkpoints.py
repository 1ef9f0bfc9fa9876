"""Checkpoints survive a killed writer, and a damaged or hostile file is refused by name.

The kill test is the real thing: a process that keeps overwriting a large checkpoint is
SIGKILLed at random moments, and after every kill the file at the path loads and is one
complete version, old or new, never a mix and never a partial file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import squash, subprocess_env
from kedro.io import DatasetError

from maskdm_pipeline.datasets.checkpoint import CheckpointSlot, TorchCheckpointDataset
from maskdm_pipeline.fileio import CheckpointError, load_checkpoint, save_checkpoint

# A writer that forks one child per round; the child overwrites the checkpoint with versions
# v, v+1, ... until the test SIGKILLs it. Forking keeps the torch import to once per test.
_WRITER = textwrap.dedent("""
    import os, sys, torch
    from maskdm_pipeline.fileio import save_checkpoint

    path, numel = sys.argv[1], int(sys.argv[2])

    def say(line):  # one write(2) per line: parent and child share the pipe
        os.write(1, (line + "\\n").encode())

    def state(version):
        return {"format": "maskdm-checkpoint/1", "model": {"w": torch.full((numel,), float(version))},
                "ema": {}, "optimizer": {}, "scaler": None, "step": version, "rng": {}, "config": {},
                "history": [], "stats": {"version": version}}

    for command in sys.stdin:
        version = int(command)
        pid = os.fork()
        if pid == 0:
            while True:
                say(f"saving {version}")
                save_checkpoint(state(version), path)
                say(f"saved {version}")
                version += 1
        say(f"child {pid}")
        os.waitpid(pid, 0)
        say("reaped")
""")


def _version_of(path: Path) -> int:
    state = load_checkpoint(path)
    weights = state["model"]["w"]
    version = state["step"]
    assert state["stats"]["version"] == version
    assert bool((weights == float(version)).all()), "a checkpoint mixing two versions was loaded"
    return version


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_partial_checkpoint(tmp_path):
    """Eight SIGKILLs at random moments (seeded) of a process overwriting a 32 MB checkpoint in a
    loop: after each, the file loads (weights_only) and holds exactly one version that was
    either completely written before or is the one being written; at least one kill provably
    landed mid-write (its temp file was left behind)."""
    path = tmp_path / "pretrained.pt"
    numel = 8_000_000
    save_checkpoint({"format": "maskdm-checkpoint/1", "model": {"w": torch.zeros(numel)}, "ema": {},
                     "optimizer": {}, "scaler": None, "step": 0, "rng": {}, "config": {}, "history": [],
                     "stats": {"version": 0}}, path)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(numel)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=subprocess_env())
    rng = random.Random(7)
    mid_write_kills, previous = 0, 0
    try:
        assert writer.stdin is not None and writer.stdout is not None
        for round_ in range(8):
            first = (round_ + 1) * 1000
            writer.stdin.write(f"{first}\n")
            writer.stdin.flush()
            child = 0
            started: list[int] = []
            saved: list[int] = []
            wanted = rng.randint(1, 3)  # kill during the 1st to 3rd save of this round
            while not child or len(started) < wanted:
                word, number = writer.stdout.readline().split()
                if word == "child":
                    child = int(number)
                else:
                    (started if word == "saving" else saved).append(int(number))
            time.sleep(rng.uniform(0.0, 0.08))
            os.kill(child, signal.SIGKILL)
            for line in iter(writer.stdout.readline, ""):
                if line.strip() == "reaped":
                    break
                word, number = line.split()
                (started if word == "saving" else saved).append(int(number))
            version = _version_of(path)
            allowed = {previous, *saved, *started}
            assert version in allowed, (version, allowed)
            leftovers = list(tmp_path.glob(".pretrained.pt.*.tmp"))
            if leftovers:
                mid_write_kills += 1
                for leftover in leftovers:  # the hidden folder atomic_write writes into
                    shutil.rmtree(leftover)
            previous = version
    finally:
        writer.kill()
        writer.wait()
    assert mid_write_kills >= 1, "no kill landed during a write; the test proved nothing"


def _real_file(tmp_path: Path, state: dict[str, Any]) -> Path:
    path = tmp_path / "finetuned.pt"
    save_checkpoint(state, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped byte", "flipped header"])
def test_damaged_checkpoint_is_refused_naming_the_file(tiny_state, tmp_path, damage):
    """Truncated, empty, garbage, and bit-flipped files (a flipped byte in the weights used to load
    silently as a different model) are refused by the catalog dataset and by the resume slot,
    with the file's path in the message."""
    path = _real_file(tmp_path, tiny_state)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(os.urandom(4096))
    elif damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    else:
        data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as info:
        TorchCheckpointDataset(str(path)).load()
    assert str(path) in str(info.value)
    assert "corrupted" in str(info.value)
    with pytest.raises(CheckpointError, match="corrupted") as info:
        CheckpointSlot(path).load()
    assert str(path) in str(info.value)


def test_resume_from_a_damaged_slot_is_refused_with_the_way_out(tiny_state, tmp_path, tiny_images):
    """A damaged resume checkpoint stops the training node before any step, naming the file and
    both ways out (delete it, or resume=false); it is never silently replaced by a fresh start."""
    from maskdm_pipeline.params import PretrainParams
    from maskdm_pipeline.train_stage import train_stage
    from maskdm_pipeline.training import DiffusionConfig, ModelParams, TrainerConfig

    slot = CheckpointSlot(tmp_path / "pretrained.resume.pt")
    save_checkpoint(tiny_state, slot.path)
    slot.path.write_bytes(slot.path.read_bytes()[:-100])
    stage = PretrainParams(steps=5, batch_size=8, lr=1e-3, resume=True)
    with pytest.raises(CheckpointError) as info:
        train_stage("pretrain", {"images": tiny_images.numpy()}, stage, ModelParams(preset="tiny", patch_size=2,
                    embed_dim=16, depth=2, num_heads=2), DiffusionConfig(schedule="linear", prediction="x0"),
                    TrainerConfig(device="cpu"), slot)
    message = str(info.value)
    assert str(slot.path) in message and "pretrain.resume=false" in message and "delete" in message


def test_a_resume_file_of_another_configuration_is_refused_and_kept(tmp_path, tiny_images, one_thread, caplog):
    """fail-03 at the node: a finished pretrain's resume file (seed 0, mask ratio 0.75) met by a
    run that asks for seed 7 and ratio 0.5 is refused before any step, in one line naming each
    difference by its --params name and both ways out (exit status 2); the file stays byte for
    byte. Extending `steps`, or a divergence remedy (lr) with steps left, resumes; resume=false
    starts afresh."""
    import logging

    from click import ClickException

    from maskdm_pipeline.params import PretrainParams
    from maskdm_pipeline.train_stage import train_stage
    from maskdm_pipeline.training import DiffusionConfig, ModelParams, TrainerConfig

    slot = CheckpointSlot(tmp_path / "pretrained.resume.pt")
    base = {"steps": 4, "batch_size": 8, "lr": 1e-3, "log_every": 2, "mask": {"kind": "patch", "ratio": 0.75}}

    def run(**changes: Any) -> dict[str, Any]:
        stage = PretrainParams(**{**base, **changes})
        return train_stage("pretrain", {"images": tiny_images.numpy()}, stage,
                           ModelParams(preset="tiny", patch_size=2, embed_dim=16, depth=2, num_heads=2),
                           DiffusionConfig(schedule="linear", prediction="x0"), TrainerConfig(device="cpu"), slot,
                           mask=stage.mask)[0]

    run()
    finished = slot.path.read_bytes()
    with pytest.raises(ClickException) as info:
        run(seed=7, mask={"kind": "patch", "ratio": 0.5})
    message = info.value.format_message()
    assert info.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"pretrain: refused to resume from {slot.path} (step 4/4): it was trained with other "
                              "settings (saved -> asked: pretrain.mask.ratio 0.75 -> 0.5; pretrain.seed 0 -> 7)")
    assert "rerun with the settings it was trained with" in message and "--params pretrain.resume=false" in message
    with pytest.raises(ClickException, match=r"pretrain.steps 4 -> 3"):
        run(steps=3)  # the state went past the asked length
    with pytest.raises(ClickException, match=r"pretrain.lr 0.001 -> 0.002"):
        run(lr=2e-3)  # nothing left to train with a remedy
    assert slot.path.read_bytes() == finished

    with caplog.at_level(logging.WARNING):
        extended = run(steps=6, lr=2e-3)
    assert extended["step"] == 6 and "resuming with changed lr 0.001 -> 0.002" in caplog.text
    afresh = run(steps=2, seed=7, resume=False)
    assert afresh["step"] == 2 and afresh["config"]["stage"]["seed"] == 7


class _Payload:
    """Unpickling this runs ``os.system`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_checkpoint_is_refused_without_running(tmp_path, writer):
    """A checkpoint whose pickle would run a shell command is refused by the catalog dataset and
    the resume slot (and the training node that uses it); the command never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "pretrained.pt"
    payload = {"format": "maskdm-checkpoint/1", "model": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DatasetError) as info:
        TorchCheckpointDataset(str(path)).load()
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        CheckpointSlot(path).load()
    assert not marker.exists(), "the payload ran"
    # Control: the payload does run when unpickled without restrictions.
    if writer == "raw pickle":
        pickle.loads(path.read_bytes())
        assert marker.exists()


def _stage_pipeline_run(final: Path, resume: Path, state: dict[str, Any]) -> BaseException | None:
    """A node that loads a resume slot and returns a finished state, run by Kedro's SequentialRunner
    with the project's CheckpointSlotHook; errors are passed to the hook as the session does."""
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline, node
    from kedro.runner import SequentialRunner

    from maskdm_pipeline.datasets.checkpoint import CheckpointSlotDataset
    from maskdm_pipeline.hooks import CheckpointSlotHook

    hooks = _create_hook_manager()
    hooks.register(CheckpointSlotHook())
    catalog = DataCatalog({"pretrain_resume": CheckpointSlotDataset(str(resume)),
                           "pretrained": TorchCheckpointDataset(str(final))})
    pipeline = Pipeline([node(lambda slot: state, "pretrain_resume", "pretrained", name="pretrain")])
    try:
        SequentialRunner().run(pipeline, catalog, hooks)
    except Exception as exc:  # noqa: BLE001 - returned to the test
        hooks.hook.on_pipeline_error(error=exc, run_params={}, pipeline=pipeline, catalog=catalog)
        return exc
    return None


def test_resume_slot_is_cleared_once_the_final_checkpoint_is_saved(tiny_state, tmp_path):
    """The slot's file (the finished state, written by the engine) goes once the final checkpoint
    is on disk, so the next run of the stage starts afresh."""
    final, resume = tmp_path / "pretrained.pt", tmp_path / "pretrained.resume.pt"
    save_checkpoint(tiny_state, resume)
    assert _stage_pipeline_run(final, resume, tiny_state) is None
    assert load_checkpoint(final)["step"] == tiny_state["step"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained.pt"]


def test_disk_full_during_save_keeps_the_old_file_and_the_resume_state(tiny_state, tmp_path, monkeypatch):
    """ENOSPC at the final rename: the previous checkpoint is untouched, no temp file is left, the
    finished training state stays in the resume file, and the message says how to recover."""
    import errno

    import maskdm_pipeline.atomic as atomic_module

    final, resume = tmp_path / "pretrained.pt", tmp_path / "pretrained.resume.pt"
    old = {**tiny_state, "step": 1}
    save_checkpoint(old, final)
    save_checkpoint(tiny_state, resume)
    before = final.read_bytes()

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(atomic_module.os, "replace", disk_full)
    error = _stage_pipeline_run(final, resume, tiny_state)
    assert isinstance(error, DatasetError)
    message = "\n".join([str(error), *getattr(error, "__notes__", [])])
    assert "No space left on device" in message and str(final) in message and str(resume) in message
    assert "rerun the same command" in message
    monkeypatch.undo()
    assert final.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pretrained.pt", "pretrained.resume.pt"]
    assert load_checkpoint(resume)["step"] == tiny_state["step"]


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_the_temporaries_of_writers_that_are_gone_are_removed(tmp_path, tiny_state):
    """What a kill -9 during atomic_write leaves (a hidden folder holding a complete-looking
    pretrained.pt) is removed; the temporary of a writer still running, an older name without a
    process id and other hidden files are left alone."""
    from maskdm_pipeline.atomic import remove_stale_temporaries

    killed = tmp_path / f".pretrained.pt.{_dead_pid()}-k1ll3d.tmp"
    killed.mkdir()
    save_checkpoint(tiny_state, killed / "pretrained.pt")
    killed_file = tmp_path / f".metrics.json.{_dead_pid()}-x.tmp"
    killed_file.write_text("{")
    running = tmp_path / f".baseline.pt.{os.getpid()}-busy.tmp"
    running.mkdir()
    for name in (".finetuned.pt.abc.tmp", ".hidden.tmp", "notes.tmp"):
        (tmp_path / name).write_text("kept")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([killed, killed_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, ".finetuned.pt.abc.tmp", ".hidden.tmp", "notes.tmp"])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_cli_refuses_a_corrupted_checkpoint_in_one_line_and_removes_killed_writes(make_project, tiny_state):
    """`kedro run --pipelines finetune` with one flipped byte in data/06_models/pretrained.pt and,
    beside it, what a kill -9 during an earlier save left (a hidden folder holding an intact
    pretrained.pt): exit 1 with one `Error:` line naming the entry, the file, the CRC failure and
    the way out, no traceback, no node run; the killed write's folder is removed (and never read
    instead of the damaged file), a running writer's is kept, nothing else changes."""
    project = make_project()
    models = project.data / "06_models"
    path = models / "pretrained.pt"
    save_checkpoint(tiny_state, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    killed = models / f".pretrained.pt.{_dead_pid()}-k1ll3d.tmp"
    killed.mkdir()
    save_checkpoint(tiny_state, killed / "pretrained.pt")
    running = models / f".finetuned.pt.{os.getpid()}-busy.tmp"
    running.mkdir()
    # The other inputs of finetune exist (a missing one is refused before any load, caching/fit.py);
    # their content is never read: the damaged checkpoint is loaded, and refused, first.
    for other in ("feature_classifier.pt", "fd_clf_reference.pt"):
        (project.data / "04_feature" / other).write_bytes(b"never read")
    before = {name: value for name, value in project.snapshot().items() if killed.name not in name}

    code, output = project.run("--pipelines", "finetune")
    assert code == 1, output[-3000:]
    assert "Traceback" not in output and "╭" not in output, output[-3000:]
    assert "Running node" not in squash(output)
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and output.rstrip().endswith(errors[0]), output[-3000:]
    assert re.fullmatch(rf"Error: pretrained: checkpoint {re.escape(str(path))} is corrupted: its entry '\S+' fails "
                        r"its CRC-32 check.* Delete it and rerun the stage that writes it, or restore an intact copy\.",
                        errors[0]), errors[0]
    assert f"Removed {killed}" in squash(output)
    assert not killed.exists() and running.is_dir()
    assert project.snapshot() == before
