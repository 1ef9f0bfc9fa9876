"""Checkpoint files: atomic writes (atomic.py), weights_only loads, and clear refusals (fileio.py)."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import torch

from maskdm_pipeline.fileio import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from maskdm_pipeline.training import (
    DiffusionConfig,
    MaskConfig,
    ModelConfig,
    StageConfig,
    TrainerConfig,
    TrainJob,
    run_training,
)

TINY = ModelConfig(preset="tiny", img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def real_state() -> dict:
    """A genuine 2-step training state (model, EMA, AdamW, generators, history)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: oversubscribed OpenMP threads are 50x slower
    try:
        images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        return run_training(TrainJob(
            images=images, model=TINY, diffusion=DiffusionConfig(schedule="linear", prediction="eps"),
            stage=StageConfig(steps=2, batch_size=4, lr=1e-3, log_every=1),
            mask=MaskConfig(kind="patch", ratio=0.5), trainer=TrainerConfig(device="cpu"), progress=False))
    finally:
        torch.set_num_threads(threads)


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_round_trip_of_a_real_state_is_exact(real_state, tmp_path):
    path = save_checkpoint(real_state, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["step"] == 2
    _assert_same(real_state, loaded)
    # It really is loadable by the restricted unpickler, not just by our wrapper.
    torch.load(path, weights_only=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the loading side on a machine without a GPU")
def test_a_state_saved_from_cuda_tensors_loads_on_a_cpu_only_machine(real_state, tmp_path, monkeypatch):
    """A file as torch.save writes it for CUDA tensors (every storage tagged ``cuda:0``, the only
    place a file records a device): plain torch.load refuses it here, the project's loader maps
    it to the CPU. The GPU check saves a real one (tests/unit/test_gpu.py)."""
    import torch.serialization as serialization

    real_tag = serialization.location_tag
    monkeypatch.setattr(serialization, "location_tag", lambda storage: "cuda:0" if real_tag(storage) == "cpu"
                        else real_tag(storage))
    torch.save(real_state, tmp_path / "from_cuda.pt")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "from_cuda.pt", weights_only=True)
    loaded = load_checkpoint(tmp_path / "from_cuda.pt")
    assert all(v.device.type == "cpu" for v in loaded["model"].values())
    assert all(torch.equal(loaded["model"][k], v) for k, v in real_state["model"].items())


def test_crash_mid_write_keeps_the_old_file(real_state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(real_state, path)
    before = path.read_bytes()

    def half_then_crash(obj, target, *args, **kwargs):
        pathlib.Path(target).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    newer = {**real_state, "step": 99}
    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(newer, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "pretrained.pt"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_is_refused_with_its_name(real_state, tmp_path, damage):
    path = tmp_path / "damaged.pt"
    save_checkpoint(real_state, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x00not a pickle" * 50,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"weight": torch.zeros(2)}, "'format' tag is None"),
        ({"format": "someone-else/3", "model": {}}, "'format' tag is 'someone-else/3'"),
        ({"format": CHECKPOINT_FORMAT, "model": {}, "step": 1}, "missing keys"),
        (torch.zeros(3), "holds a Tensor"),
    ],
)
def test_non_checkpoint_files_are_refused(tmp_path, payload, reason):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a (complete )?maskdm checkpoint") as info:
        load_checkpoint(path)
    assert reason in str(info.value) and str(path) in str(info.value)


class _Payload:
    """Unpickling this calls pathlib.Path.touch(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": CHECKPOINT_FORMAT, "model": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # Control: the payload is live, an unrestricted load does run it (so the test can fail).
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as handle:
            pickle.load(handle)
    assert marker.exists()


def test_save_refuses_what_weights_only_could_not_load(real_state, tmp_path):
    bad = {**real_state, "evals": [{"step": 2, "fd_clf": np.float64(1.5)}]}
    with pytest.raises(CheckpointError, match=r"state\['evals'\]\[0\]\['fd_clf'\].*numpy"):
        save_checkpoint(bad, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a maskdm checkpoint"):
        save_checkpoint({"model": {}}, tmp_path / "y.pt")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- atomic_write
def _write_folder(target: pathlib.Path, files: dict[str, str]) -> None:
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)


def _listing(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_write_replaces_a_whole_folder(tmp_path, monkeypatch, exchange):
    """A folder is replaced whole (no file of the old version survives), with or without the
    one-step exchange, and nothing hidden is left beside it."""
    from maskdm_pipeline import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    grid = tmp_path / "maskdm_png"
    with atomic.atomic_write(grid) as target:
        _write_folder(target, {"0.png": "old", "1.png": "old"})
    with atomic.atomic_write(grid) as target:
        _write_folder(target, {"0.png": "new"})
    assert _listing(grid) == {"0.png": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["maskdm_png"]


def test_atomic_write_keeps_the_old_version_when_the_writer_fails(tmp_path):
    """An error (here a KeyboardInterrupt) inside the block: file and folder stay as they were,
    the hidden temporary is gone; a block that writes nothing is an error, not an empty file."""
    from maskdm_pipeline.atomic import atomic_write

    folder, file = tmp_path / "shards", tmp_path / "metrics.json"
    with atomic_write(folder) as target:
        _write_folder(target, {"a": "1"})
    file.write_text("old")
    for path in (folder, file):
        with pytest.raises(KeyboardInterrupt), atomic_write(path) as target:
            target.write_text("half") if path is file else _write_folder(target, {"b": "2"})
            raise KeyboardInterrupt
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_write(file):
        pass
    assert _listing(folder) == {"a": "1"} and file.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "shards"]


def test_atomic_write_after_kill9_old_version_intact_and_temp_cleaned(tmp_path):
    """A writer SIGKILLed in the middle of a folder write: the old folder is intact, the hidden
    temporary is recognisable (``.<name>.*.tmp``), and the next write removes it."""
    import os
    import signal

    from maskdm_pipeline.atomic import atomic_write

    folder = tmp_path / "maskdm_png"
    with atomic_write(folder) as target:
        _write_folder(target, {"0.png": "old"})
    pid = os.fork()
    if pid == 0:  # the child dies half-way through its write
        with atomic_write(folder) as target:
            _write_folder(target, {"0.png": "new", "1.png": "new"})
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert _listing(folder) == {"0.png": "old"}
    assert len(list(tmp_path.glob(".maskdm_png.*.tmp"))) == 1
    with atomic_write(folder) as target:
        _write_folder(target, {"0.png": "newer"})
    assert _listing(folder) == {"0.png": "newer"}
    assert [p.name for p in tmp_path.iterdir()] == ["maskdm_png"]


def test_atomic_write_keeps_the_name_so_writers_can_pick_the_format(tmp_path):
    """The yielded path ends in the real name: np.savez appends no second '.npz' and PIL picks
    PNG from the suffix."""
    from PIL import Image

    from maskdm_pipeline.atomic import atomic_write

    with atomic_write(tmp_path / "grid.png") as target:
        assert target.name == "grid.png"
        Image.new("L", (2, 2)).save(target)
    with atomic_write(tmp_path / "x.npz") as target:
        np.savez(target, a=np.arange(3))
    assert Image.open(tmp_path / "grid.png").format == "PNG"
    assert np.load(tmp_path / "x.npz")["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "x.npz"]


def _varied(state: dict, **changes) -> dict:
    """A deep copy of ``state`` (tensors cloned) with ``changes`` applied by dotted key."""
    import copy

    new = copy.deepcopy(state)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        target = new
        for key in path:
            target = target[key]
        target[last] = value(target[last]) if callable(value) else value
    return new


def test_a_checkpoint_is_identified_by_its_weights_config_and_step_not_its_timings(real_state, tmp_path):
    """What the cache keeps for a checkpoint (a retrained stage with bitwise the same weights
    changes nothing after it): not the bytes, which hold wall times, nor what only a resume reads."""
    from maskdm_pipeline.datasets import TorchCheckpointDataset
    from maskdm_pipeline.fileio import checkpoint_identity
    from maskdm_pipeline.fingerprint import file_digest

    identity = checkpoint_identity(real_state)
    assert identity.startswith("checkpoint:")
    history = [{**row, "elapsed_s": row.get("elapsed_s", 0) + 9.5, "img_per_s": 1.0} for row in real_state["history"]]
    retrained = _varied(real_state, history=history, stats=lambda s: {**s, "wall_time_s": 123.4},
                        rng=lambda r: {**r, "cursor": 99} if isinstance(r, dict) else r,
                        optimizer=lambda o: {**o, "param_groups": []}, evals=[{"step": 2, "elapsed_s": 7.0}])
    assert checkpoint_identity(retrained) == identity
    first, second = TorchCheckpointDataset(str(tmp_path / "a.pt")), TorchCheckpointDataset(str(tmp_path / "b.pt"))
    first.save(real_state)
    second.save(retrained)
    assert file_digest(tmp_path / "a.pt") != file_digest(tmp_path / "b.pt")
    assert first.content_identity() == second.content_identity() == identity
    # any weight, EMA weight, config value or the step changes it; a changed dtype too
    name = next(iter(real_state["model"]))
    one_ulp = _varied(real_state, **{f"model.{name}": lambda t: t.flatten().clone().index_put_(
        (torch.tensor([0]),), torch.nextafter(t.flatten()[0], torch.tensor(1e9))).reshape(t.shape)})
    for other in (one_ulp,
                  _varied(real_state, **{f"ema.model.{name}": lambda t: t + 1}),
                  _varied(real_state, **{f"model.{name}": lambda t: t.double()}),
                  _varied(real_state, step=real_state["step"] + 1),
                  _varied(real_state, **{"config.stage.lr": 0.5})):
        assert checkpoint_identity(other) != identity
    assert TorchCheckpointDataset(str(tmp_path / "missing.pt")).content_identity() == "missing"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert TorchCheckpointDataset(str(tmp_path / "bad.pt")).content_identity().startswith("unreadable:")
