"""IDX files (MNIST's format) as a catalog input: every variant the public sets ship in reads
back to the array written, and every kind of bad file ends in one line naming the file. The
files are written here, small; nothing depends on an installed data set."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from image_factory import idx_bytes

from maskdm_pipeline.conversion import convert_images
from maskdm_pipeline.datasets import IdxDataset
from maskdm_pipeline.datasets.errors import UnreadableFileError
from maskdm_pipeline.datasets.idx import read_idx
from maskdm_pipeline.params import PreprocessParams
from maskdm_pipeline.pipelines.preprocess.nodes import split_images


def write(path: Path, data: bytes, zipped: bool) -> Path:
    path.write_bytes(gzip.compress(data) if zipped else data)
    return path


def images_and_labels(n: int = 12, side: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("zipped", [False, True])
def test_images_and_labels_read_back_as_written(tmp_path, zipped):
    images, labels = images_and_labels()
    write(tmp_path / "img", idx_bytes(images), zipped)
    write(tmp_path / "lab", idx_bytes(labels), zipped)
    data = IdxDataset(path=str(tmp_path), images="img", labels="lab").load()
    assert data["images"].dtype == np.uint8 and data["images"].shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(data["images"][:, 0], images)
    assert data["labels"].dtype == np.int64
    np.testing.assert_array_equal(data["labels"], labels)


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_every_idx_type_reads_big_endian_values(tmp_path, dtype):
    values = np.array([[-3, 1, 2], [7, -100, 120]], dtype=np.dtype(dtype).newbyteorder("="))
    got = read_idx(write(tmp_path / "x", idx_bytes(values, dtype), zipped=False))
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, values)


def test_several_files_concatenate_in_order_and_channels_and_transpose(tmp_path):
    a, la = images_and_labels(5, 6, seed=1)
    b, lb = images_and_labels(3, 6, seed=2)
    for name, array in (("a", a), ("la", la), ("b", b), ("lb", lb)):
        write(tmp_path / name, idx_bytes(array), zipped=name.startswith("l"))
    data = IdxDataset(path=str(tmp_path), images=["a", "b"], labels=["la", "lb"], transpose=True).load()
    np.testing.assert_array_equal(data["images"][:, 0], np.concatenate([a, b]).swapaxes(1, 2))  # EMNIST's layout
    np.testing.assert_array_equal(data["labels"], np.concatenate([la, lb]))
    rgb = np.random.default_rng(3).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    write(tmp_path / "rgb", idx_bytes(rgb), zipped=False)
    got = IdxDataset(path=str(tmp_path), images="rgb").load()
    assert got["labels"] is None
    np.testing.assert_array_equal(got["images"], rgb.transpose(0, 3, 1, 2))


def _error(tmp_path: Path, images: bytes, labels: bytes | None = None) -> str:
    """The message of loading an image file of these bytes (and a label file), checked to be one line."""
    write(tmp_path / "img.gz", images, zipped=False)
    if labels is not None:
        write(tmp_path / "lab", labels, zipped=False)
    dataset = IdxDataset(path=str(tmp_path), images="img.gz", labels="lab" if labels is not None else None)
    with pytest.raises(UnreadableFileError) as caught:
        dataset.load()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_files_end_in_one_line_naming_the_file(tmp_path):
    images, labels = images_and_labels()
    good = idx_bytes(images)
    cases = {  # the exact bytes on disk -> what the message says
        "truncated": good[:-5],
        "longer than its header says": good + b"\0",
        "not an IDX file (magic number 89504e47": b"\x89PNG\r\n\x1a\n" + good,
        "not an IDX file (magic number missing": b"",
        "cannot be read as IDX": gzip.compress(good)[:-20],  # a cut download
        "not images": idx_bytes(images.astype(np.float32), ">f4"),
    }
    for why, data in cases.items():
        message = _error(tmp_path, data)
        assert message.startswith(f"{tmp_path / 'img.gz'}: ") and why in message, (why, message)
    message = _error(tmp_path, good, idx_bytes(labels[:-1]))
    assert message.startswith(f"{tmp_path / 'lab'}: 11 labels for the 12 images of img.gz"), message
    assert "not labels" in _error(tmp_path, good, idx_bytes(images))
    with pytest.raises(UnreadableFileError, match=rf"^{tmp_path / 'nowhere'}: no such file"):
        IdxDataset(path=str(tmp_path), images="nowhere").load()


def test_the_cache_identity_follows_content_not_place(tmp_path):
    images, labels = images_and_labels()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "img", idx_bytes(images), zipped=True)
    one = IdxDataset(path=str(tmp_path / "a"), images="img").content_identity()
    assert one == IdxDataset(path=str(tmp_path / "b"), images="img").content_identity()
    write(tmp_path / "b" / "img", idx_bytes(255 - images), zipped=True)
    assert one != IdxDataset(path=str(tmp_path / "b"), images="img").content_identity()


def test_idx_images_go_through_preprocessing_with_their_labels(tmp_path):
    images, labels = images_and_labels(40, 28)
    write(tmp_path / "img", idx_bytes(images), zipped=True)
    write(tmp_path / "lab", idx_bytes(labels), zipped=True)
    params = PreprocessParams(resolution=16, channels=1, crop="none", heldout_fraction=0.25, subset=None,
                              min_size=0, alpha_background=0, labels="none", seed=0)
    converted = convert_images(IdxDataset(path=str(tmp_path), images="img", labels="lab").load(), params)
    train, heldout, card = split_images(converted, params)
    assert card["found"] == card["used"] == 40 and card["labels"] is True
    assert card["train"] + card["heldout"] == 40 and train["images"][0].shape == (1, 16, 16)
    assert sorted(np.concatenate([train["labels"], heldout["labels"]])) == sorted(labels.astype(np.int64))


@pytest.mark.slow
def test_kedro_run_on_a_damaged_idx_file_ends_in_one_line_naming_it(tmp_path):
    """The conf/fashion catalog entry, pointed at a truncated file: `kedro run` ends with one
    ``Error:`` line that names the file, exit status non-zero, and no traceback."""
    from kedro_project import kedro, make_project

    root = make_project(tmp_path / "project")
    images, labels = images_and_labels(20)
    write(root / "img.gz", idx_bytes(images)[:-7], zipped=True)
    write(root / "lab.gz", idx_bytes(labels), zipped=True)
    catalog = (root / "conf" / "fashion" / "catalog.yml").read_text()
    catalog = catalog.replace("/usr/share/datasets/fashion-mnist", ".").replace(
        "train-images-idx3-ubyte.gz", "img.gz").replace("train-labels-idx1-ubyte.gz", "lab.gz")
    (root / "conf" / "fashion" / "catalog.yml").write_text(catalog)
    result = kedro(root, "run", "--env", "fashion", "--pipelines", "preprocess", timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"{root / 'img.gz'}: truncated" in errors[0], result.stderr[-2000:]
