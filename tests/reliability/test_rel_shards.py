"""Shards that are missing, truncated, inconsistent or cannot be written: one line naming the file
and the command that fixes it, and the previous shards stay usable (issue 13, "Bad input and
faults")."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import squash
from kedro.io import DatasetError

from maskdm_pipeline.conversion import Conversion
from maskdm_pipeline.datasets import ShardDataset
from maskdm_pipeline.params import PreprocessParams
from maskdm_pipeline.shards import ShardWriter

RERUN = "kedro run --pipelines preprocess"


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Three shards of 10, 10 and 5 rows."""
    path = tmp_path / "train"
    ShardDataset(str(path), max_shard_bytes=160).save({"images": _images(25), "labels": np.arange(25) % 2})
    return path


def _refused(path: Path, *expected: str) -> str:
    with pytest.raises(DatasetError) as info:
        ShardDataset(str(path)).load()
    message = str(info.value)
    assert "\n" not in message and RERUN in message, message
    for text in expected:
        assert text in message, message
    return message


def test_missing_shard(shards):
    (shards / "images-00001.npy").unlink()
    _refused(shards, "images-00001.npy", "missing")


def test_truncated_shard(shards):
    path = shards / "images-00002.npy"
    path.write_bytes(path.read_bytes()[:-7])
    _refused(shards, "images-00002.npy", "truncated")


def test_index_that_disagrees_with_the_shards(shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    index["groups"]["images"]["shards"][0]["rows"] = 11
    index["groups"]["images"]["count"] = 26
    (shards / "index.json").write_text(json.dumps(index))
    _refused(shards, "images-00000.npy", "disagrees")
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    index["groups"]["images"]["shape"] = [3, 4, 4]
    (other / "index.json").write_text(json.dumps(index))
    _refused(other, "disagrees")
    (other / "index.json").write_text("{not json")
    _refused(other, "index.json", "unreadable")
    (other / "index.json").unlink()
    _refused(other, "index.json", "missing")


def test_labels_that_disagree_with_the_index(shards):
    np.save(shards / "labels.npy", np.arange(24))
    _refused(shards, "labels.npy", "24 rows", "25 images")
    np.save(shards / "labels.npy", np.arange(25) % 3)  # as many, but not the ones indexed
    _refused(shards, "index.json", "content checksum", "disagrees")


def test_old_single_archive_project_is_told_to_rerun_preprocess(tmp_path):
    np.savez(tmp_path / "train.npz", images=_images(3))
    message = _refused(tmp_path / "train", "train.npz", "old single-archive format")
    assert message.endswith(f"`{RERUN}` to write it.")


def _full_disk_from_second_shard(monkeypatch) -> None:
    """Opening the second shard file raises ENOSPC, as a full disk does mid-way."""
    real = ShardWriter._open

    def _open(self):
        real(self)
        if len(self.shards) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "_open", _open)


@pytest.mark.parametrize("streamed", [False, True], ids=["from arrays", "from a conversion"])
def test_full_disk_while_writing_keeps_the_previous_shards(shards, monkeypatch, streamed):
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    _full_disk_from_second_shard(monkeypatch)
    images = _images(300, seed=1)
    data = (Conversion({"images": images, "labels": None, "source": "test"},
                       PreprocessParams(resolution=4, channels=1, crop="none", heldout_fraction=0.25, subset=None,
                                        min_size=0, alpha_background=0, labels="none", seed=0), workers=1)
            if streamed else {"images": images})
    with pytest.raises(DatasetError) as info:
        ShardDataset(str(shards), max_shard_bytes=160).save(data)
    message = str(info.value)
    assert "\n" not in message
    for text in (str(shards), "images-00001.npy", "No space left on device", "previous shards there are untouched",
                 RERUN):
        assert text in message, message
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before
    assert not list(shards.parent.glob(".train.*.tmp")), "the aside folder was left behind"
    assert np.array_equal(np.asarray(ShardDataset(str(shards)).load()["images"]), _images(25))


def test_interrupted_write_keeps_the_previous_shards(shards, monkeypatch):
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    real = ShardWriter.write

    def write(self, rows, digests=None):
        real(self, rows, digests)
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", write)
    with pytest.raises(KeyboardInterrupt):
        ShardDataset(str(shards)).save({"images": _images(30, seed=2)})
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


@pytest.mark.parametrize("fault", ["old npz", "truncated shard"])
def test_a_shard_fault_ends_kedro_run_in_one_line(make_project, fault):
    """Through the CLI: the stage that reads the primary data stops with one ``Error:`` line (the
    form of a file the catalog cannot read, issue 16) naming the entry, the file and the command,
    no traceback, no node run."""
    project = make_project(with_primary=fault != "old npz")
    if fault == "old npz":
        np.savez(project.data / "03_primary" / "train.npz", images=_images(3))
        expected = "train.npz is the old single-archive format"
    else:
        shard = project.data / "03_primary" / "train" / "images-00000.npy"
        shard.write_bytes(shard.read_bytes()[:-5])
        expected = f"shard {shard} is truncated"
    for other in ("feature_classifier.pt", "fd_clf_reference.pt"):  # the other inputs exist (never read)
        (project.data / "04_feature" / other).write_bytes(b"never read")
    code, output = project.run("--pipelines", "baseline", timeout=120)
    assert code == 1, output[-3000:]
    assert "Traceback" not in output and "Running node" not in squash(output), output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and output.rstrip().endswith(errors[0]), output[-3000:]
    assert errors[0].startswith("Error: primary_train: ") and expected in errors[0] and RERUN in errors[0], errors[0]


def test_shard_faults_are_errors_written_for_the_user(shards, monkeypatch):
    """The same in process: the load and save errors are click exceptions (what
    ``console.one_line_user_errors`` looks for, also under Kedro's wrapping) and still Kedro's
    DatasetError for Python callers."""
    from click import ClickException

    from maskdm_pipeline.console import user_error_in

    (shards / "images-00001.npy").unlink()
    with pytest.raises(DatasetError) as info:
        ShardDataset(str(shards)).load()
    assert isinstance(info.value, ClickException)
    wrapped = DatasetError(f"primary_train: {info.value}")
    wrapped.__cause__ = info.value
    assert user_error_in(wrapped)
    _full_disk_from_second_shard(monkeypatch)
    with pytest.raises(DatasetError) as info:
        ShardDataset(str(shards.parent / "other"), max_shard_bytes=160).save({"images": _images(300)})
    assert isinstance(info.value, ClickException) and "No space left on device" in str(info.value)
