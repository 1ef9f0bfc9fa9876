"""Memory-mapped shards, the lean folder listing and the parallel conversion that fills them."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import numpy as np
import pytest
from image_factory import write_mixed_folder
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from maskdm_pipeline.conversion import Conversion, convert_images
from maskdm_pipeline.datasets import ImageFolder, ShardDataset
from maskdm_pipeline.listing import scan_folder
from maskdm_pipeline.metrics import stats, stats_from_batches
from maskdm_pipeline.params import PreprocessParams
from maskdm_pipeline.shards import RowView, folder_checksum, open_shards, take_rows

PARAMS = PreprocessParams(resolution=8, channels=3, crop="center", heldout_fraction=0.25, subset=None,
                          min_size=0, alpha_background=0, labels="subfolder", seed=0)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


def _save(path: Path, data, max_shard_bytes: int = 1 << 30) -> dict:
    ShardDataset(str(path), max_shard_bytes=max_shard_bytes).save(data)
    return ShardDataset(str(path)).load()


def test_shards_round_trip_as_memory_maps_in_any_index_order(tmp_path):
    images, labels = _images(50), np.arange(50) % 3
    loaded = _save(tmp_path / "s", {"images": images, "labels": labels}, max_shard_bytes=48 * 7)
    shards = sorted((tmp_path / "s").glob("images-*.npy"))
    assert len(shards) == 8  # 7 rows of 48 bytes per shard
    for path in shards:  # every shard opens with numpy alone, as an (n, C, H, W) uint8 memmap
        array = np.load(path, mmap_mode="r")
        assert isinstance(array, np.memmap) and array.dtype == np.uint8 and array.shape[1:] == (3, 4, 4)
    arr = loaded["images"]
    assert arr.shape == (50, 3, 4, 4) and len(arr) == 50
    assert np.array_equal(np.asarray(arr), images) and np.array_equal(loaded["labels"], labels)
    idx = np.array([49, 0, 13, 13, 7, 28, -1])
    assert np.array_equal(arr[idx], images[idx]) and np.array_equal(arr[5:23], images[5:23])
    assert np.array_equal(arr[12], images[12])
    view = RowView(arr, np.array([3, 1, 40]))
    assert np.array_equal(take_rows(view, np.array([2, 0])), images[[40, 3]])
    with pytest.raises(IndexError):
        arr[np.array([50])]


def test_checksum_is_of_content_not_of_sharding(tmp_path):
    images, labels = _images(30), np.arange(30)
    one = _save(tmp_path / "one", {"images": images, "labels": labels})
    many = _save(tmp_path / "many", {"images": images, "labels": labels}, max_shard_bytes=100)
    assert one["checksum"] == many["checksum"] == folder_checksum({**one, "images": images})
    flipped = images.copy()
    flipped[17, 0, 0, 0] ^= 1
    assert _save(tmp_path / "flip", {"images": flipped, "labels": labels})["checksum"] != one["checksum"]
    relabelled = _save(tmp_path / "lab", {"images": images, "labels": labels[::-1].copy()})
    assert relabelled["checksum"] != one["checksum"]


def test_a_shard_array_pickles_as_file_names(tmp_path):
    """What a DDP worker receives: the file names, not the pixels; it maps the shards itself."""
    arr = _save(tmp_path / "s", {"images": _images(2000)})["images"]
    arr[np.arange(3)]  # opened here
    blob = pickle.dumps(arr)
    assert len(blob) < 2000 < arr.shape[0] * 48
    again = pickle.loads(blob)
    assert np.array_equal(again[[5, 1999]], arr[[5, 1999]])


def test_folder_listing_opens_no_file_and_is_lean(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    for i in range(300):
        sub = root / f"c{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img_{i:04d}.jpg").write_bytes(b"x" * (i + 1))
    (root / "notes.txt").write_text("not an image")
    (root / "c0" / "link_up").symlink_to("..")  # a folder link: listed, not followed

    def no_open(*args, **kwargs):
        raise AssertionError("listing opened a file")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr(Image, "open", no_open)
    listing = ImageFolder(str(root)).load()
    monkeypatch.undo()
    names = list(listing)
    assert names == sorted(names) and len(names) == 302
    assert "c0/link_up" in names and "notes.txt" in names and "c1/img_0001.jpg" in names
    kept = listing._blob.__sizeof__() + listing._offsets.nbytes + listing.sizes.nbytes + listing.mtimes_ns.nbytes
    assert kept / len(listing) < 60  # a few bytes per file (PartitionedDataset: ~1.5 KB)
    entries = {rel: (size, mtime) for rel, size, mtime in listing.entries()}
    assert entries["c1/img_0001.jpg"][0] == 2 and entries["c1/img_0001.jpg"][1] > 0
    assert len(ImageFolder(str(root), suffixes=[".JPG"]).load()) == 300


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_conversion_is_byte_identical_for_any_worker_count(tmp_path):
    """One and two spawned worker processes write the same bytes, skipped files and reasons included;
    the lean listing and a PartitionedDataset give the same images."""
    good, broken = write_mixed_folder(tmp_path / "raw")
    for i in range(150):  # enough images for several chunks per worker
        Image.fromarray(_images(1, seed=i)[0].transpose(1, 2, 0)).resize((12, 10)).save(
            tmp_path / "raw" / f"class_{i % 2}" / f"n{i:03d}.png")
    listing = scan_folder(tmp_path / "raw")
    folders = []
    for workers in (1, 2):
        folders.append(tmp_path / f"w{workers}")
        ShardDataset(str(folders[-1])).save(Conversion(listing, PARAMS, workers=workers))
    assert _bytes_of(folders[0]) == _bytes_of(folders[1])
    loaded = ShardDataset(str(folders[0])).load()
    assert len(loaded["images"]) == len(good) + 150
    assert {item["file"] for item in loaded["meta"]["skipped"]} == set(broken)
    partitions = PartitionedDataset(path=str(tmp_path / "raw"), dataset={"type": "pillow.ImageDataset"})
    legacy = convert_images(partitions.load(), PARAMS)
    assert np.array_equal(legacy["images"], np.asarray(loaded["images"]))
    assert np.array_equal(legacy["labels"], loaded["labels"])
    assert legacy["meta"]["skipped"] == loaded["meta"]["skipped"]


def test_stats_from_batches_is_stats_for_one_chunk_and_close_beyond():
    x = np.random.default_rng(0).normal(size=(3000, 16)) * 2 + 7
    batches = [x[i:i + 256] for i in range(0, len(x), 256)]
    mu, sigma = stats(x)
    exact = stats_from_batches(batches)
    assert np.array_equal(exact[0], mu) and np.array_equal(exact[1], sigma)
    merged = stats_from_batches(batches, chunk_bytes=10_000)
    assert np.allclose(merged[0], mu, rtol=1e-12, atol=0) and np.allclose(merged[1], sigma, rtol=1e-10, atol=1e-13)


def test_open_shards_reads_only_headers(tmp_path, monkeypatch):
    """Opening checks every shard against the index without mapping or reading pixels."""
    from maskdm_pipeline.shards import ShardArray

    _save(tmp_path / "s", {"images": _images(40)}, max_shard_bytes=480)

    def no_map(self):
        raise AssertionError("opening mapped the shards")

    monkeypatch.setattr(ShardArray, "_open", no_map)
    monkeypatch.setattr(ShardArray, "read", no_map)
    loaded = np.load

    def no_pixels(path, *args, **kwargs):
        assert "images-" not in str(path), f"opened {path}"
        return loaded(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", no_pixels)
    assert len(open_shards(tmp_path / "s")["images"]) == 40


def test_random_rows_read_only_their_pages_from_disk(tmp_path):
    """Rows by index come from maps advised MADV_RANDOM: out of the page cache, 16 random rows of
    a 48 MB shard read about their own pages, not the kernel's read-around of every fault."""
    import os

    if not Path("/proc/self/io").is_file() or not hasattr(os, "posix_fadvise"):
        pytest.skip("needs Linux's /proc/self/io and posix_fadvise")
    rows = np.random.default_rng(0).integers(0, 256, (4096, 3, 64, 64), dtype=np.uint8)
    arr = _save(tmp_path / "s", {"images": rows})["images"]
    shard = tmp_path / "s" / "images-00000.npy"
    fd = os.open(shard, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # written and fsynced: clean, so evicted
    os.close(fd)

    def read_bytes() -> int:
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                        if line.startswith("read_bytes")).split()[1])

    before, idx = read_bytes(), np.random.default_rng(1).integers(0, 4096, 16)
    assert np.array_equal(arr[idx], rows[idx])
    assert read_bytes() - before < 2 << 20, "random rows pulled in far more than their pages"
