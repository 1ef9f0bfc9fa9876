"""A user's image folder, however broken, never crashes preprocessing and never sneaks a broken
image in: every file is either converted (with the right pixels) or skipped with a reason, and
the dataset card's counts add up. Everything goes through the real catalog path, a
``PartitionedDataset`` of ``pillow.ImageDataset``, and the preprocess nodes."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from maskdm_pipeline import imaging
from maskdm_pipeline.conversion import convert_images
from maskdm_pipeline.imaging import NoUsableImagesError
from maskdm_pipeline.params import PreprocessParams
from maskdm_pipeline.pipelines.preprocess.nodes import split_images

PARAMS = PreprocessParams(resolution=8, channels=3, crop="center", heldout_fraction=0.25, subset=None,
                          min_size=0, alpha_background=0, labels="none", seed=0)
REASONS = ("not an image", "corrupt", "decompression bomb", "vanished", "unreadable", "broken symlink",
           "not a file", "too small")


def _folder(path: Path) -> PartitionedDataset:
    return PartitionedDataset(path=str(path), dataset={"type": "pillow.ImageDataset"})


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(size: int = 24, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _run(root: Path, params: PreprocessParams = PARAMS) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """(accepted file -> array, skipped file -> reason, card) and the accounting invariants."""
    partitions = _folder(root).load()
    converted = convert_images(partitions, params)
    skipped = {item["file"]: item["reason"] for item in converted["log"].skipped}
    accepted_names = [name for name in sorted(partitions) if name not in skipped]
    assert len(accepted_names) == len(converted["images"])
    _, _, card = split_images(converted, params)
    assert card["found"] == len(partitions) == card["used"] + card["skipped"]
    assert {f["file"] for f in card["skipped_files"]} == set(skipped)
    assert sum(card["skipped_by_reason"].values()) == len(skipped)
    for name, reason in skipped.items():
        assert reason.startswith(REASONS), f"{name}: unexpected reason {reason!r}"
    return dict(zip(accepted_names, converted["images"], strict=True)), skipped, card


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- bad files
def test_every_kind_of_bad_file_is_skipped_with_its_reason(tmp_path):
    """Zero bytes, text, random bytes, a PNG with a broken body, truncated PNG / JPEG / WebP / BMP,
    a decompression-bomb header, symlink loops, a dangling link and a link to a folder: each is
    skipped with a reason that says what is wrong; the one good image still gets through."""
    root = tmp_path / "raw"
    root.mkdir()
    good = _noise(seed=1)
    (root / "good.png").write_bytes(_encode(good, "PNG"))
    files = {
        "zero.png": b"",
        "notes.png": b"these are my notes, not an image\n",
        "random.jpg": np.random.default_rng(3).bytes(700),
        "bad_body.png": _encode(good, "PNG")[:33] + b"\x00" * 200,
        "truncated.png": _encode(good, "PNG")[:-40],
        "truncated.jpg": _encode(good, "JPEG")[:300],
        "truncated.webp": _encode(good, "WEBP")[:200],
        "truncated.bmp": _encode(good, "BMP")[:500],
        "bomb.png": _bomb_png(100_000, 100_000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.symlink("loop_b.png", root / "loop_a.png")
    os.symlink("loop_a.png", root / "loop_b.png")
    os.symlink("nothing_here.png", root / "dangling.png")
    (root / "sub").mkdir()
    os.symlink("..", root / "sub" / "parent")  # a folder loop: raw/sub/parent -> raw

    accepted, skipped, card = _run(root)
    assert list(accepted) == ["good.png"]
    expected = {
        "zero.png": "not an image", "notes.png": "not an image", "random.jpg": "not an image",
        "bad_body.png": "not an image", "truncated.png": "corrupt", "truncated.jpg": "corrupt",
        "truncated.webp": "corrupt", "truncated.bmp": "corrupt", "bomb.png": "decompression bomb",
        "loop_a.png": "unreadable: symlink loop", "loop_b.png": "unreadable: symlink loop",
        "dangling.png": "broken symlink: it points to nothing_here.png",
        "sub/parent": "not a file: a link to a folder",
    }
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    assert card["skipped_by_reason"]["corrupt"] == 4


def test_a_folder_of_only_bad_files_names_the_problem(tmp_path):
    """No usable image at all: one clear error with the counts by reason, not a stack of skips."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.png").write_bytes(b"")
    (tmp_path / "raw" / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(NoUsableImagesError, match=r"2 files found, all skipped: \{'not an image': 2\}"):
        convert_images(_folder(tmp_path / "raw").load(), PARAMS)


def test_truncated_files_stay_refused_even_when_pil_is_told_to_accept_them(tmp_path, monkeypatch):
    """Some library or notebook set PIL's global ImageFile.LOAD_TRUNCATED_IMAGES = True: a truncated
    PNG / JPEG / BMP would then decode to an image padded with grey. Preprocessing still skips
    them, and leaves the global as it found it."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    (tmp_path / "raw").mkdir()
    good = _noise(seed=2)
    (tmp_path / "raw" / "cut.png").write_bytes(_encode(good, "PNG")[:-200])
    (tmp_path / "raw" / "cut.jpg").write_bytes(_encode(good, "JPEG")[:-200])
    (tmp_path / "raw" / "cut.bmp").write_bytes(_encode(good, "BMP")[:-200])
    (tmp_path / "raw" / "whole.png").write_bytes(_encode(good, "PNG"))
    accepted, skipped, _ = _run(tmp_path / "raw")
    assert list(accepted) == ["whole.png"]
    assert all(reason.startswith("corrupt") for reason in skipped.values()) and len(skipped) == 3
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize(("limit", "side"), [(400, 21), (400, 40)])
def test_decompression_bomb_limit_applies_to_real_images(tmp_path, monkeypatch, limit, side):
    """With Image.MAX_IMAGE_PIXELS lowered, an image just over the limit (PIL's warning) and one
    over twice the limit (PIL's error) are both skipped as decompression bombs; the small one
    is kept."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    (tmp_path / "raw").mkdir()
    _noise(size=side).save(tmp_path / "raw" / "big.png")
    _noise(size=8).save(tmp_path / "raw" / "small.png")
    accepted, skipped, _ = _run(tmp_path / "raw")
    assert list(accepted) == ["small.png"]
    assert skipped["big.png"].startswith("decompression bomb")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files anyway; "
                    "test_permission_error_from_the_loader_is_a_skip simulates it")
def test_unreadable_file_is_skipped(tmp_path):
    """A file without read permission is skipped as unreadable."""
    (tmp_path / "raw").mkdir()
    _noise().save(tmp_path / "raw" / "good.png")
    _noise().save(tmp_path / "raw" / "secret.png")
    (tmp_path / "raw" / "secret.png").chmod(0)
    try:
        _, skipped, _ = _run(tmp_path / "raw")
    finally:
        (tmp_path / "raw" / "secret.png").chmod(0o644)
    assert skipped == {"secret.png": "unreadable: permission denied"}


def test_permission_error_from_the_loader_is_a_skip(tmp_path):
    """What a non-root user gets for a chmod-000 file, simulated at the loader (the tests run as
    root, which reads anything): the error Kedro wraps is unwrapped and named."""
    (tmp_path / "raw").mkdir()
    _noise().save(tmp_path / "raw" / "good.png")
    _noise().save(tmp_path / "raw" / "secret.png")
    partitions = dict(_folder(tmp_path / "raw").load())
    real = partitions["secret.png"]

    def denied() -> Image.Image:
        try:
            raise PermissionError(13, "Permission denied", str(tmp_path / "raw" / "secret.png"))
        except PermissionError as exc:  # how Kedro presents it: a DatasetError caused by it
            from kedro.io.core import DatasetError

            raise DatasetError("Failed while loading data from dataset ImageDataset") from exc

    partitions["secret.png"] = denied
    converted = convert_images(partitions, PARAMS)
    assert converted["log"].skipped == [{"file": "secret.png", "reason": "unreadable: permission denied"}]
    assert len(converted["images"]) == 1
    assert real() is not None  # the simulation, not the file, was the problem


def test_file_deleted_between_listing_and_loading(tmp_path):
    """The folder changes while it is read: a file listed, then deleted before it is loaded, is
    skipped as vanished and the rest is converted."""
    (tmp_path / "raw").mkdir()
    for i in range(3):
        _noise(seed=i).save(tmp_path / "raw" / f"img{i}.png")
    partitions = _folder(tmp_path / "raw").load()  # listed now, loaded lazily later
    (tmp_path / "raw" / "img1.png").unlink()
    converted = convert_images(partitions, PARAMS)
    assert converted["log"].skipped == [{"file": "img1.png", "reason": "vanished: the file was removed "
                                         "while the folder was read"}]
    assert len(converted["images"]) == 2 and converted["found"] == 3


# ----------------------------------------------------------------------------- odd but usable files
def _solid(mode: str, size: tuple[int, int] = (12, 10)) -> tuple[Image.Image, tuple[int, int, int]]:
    """A one-colour image in ``mode`` and the RGB colour it should come out as."""
    rgb = (200, 120, 40)
    if mode == "RGBA":  # half transparent over the black background: halved
        return Image.new("RGBA", size, (*rgb, 128)), tuple(round(c * 128 / 255) for c in rgb)
    if mode == "P":
        return Image.new("RGB", size, rgb).quantize(4), rgb
    if mode == "CMYK":
        return Image.new("CMYK", size, (0, 100, 200, 55)), Image.new("CMYK", (1, 1), (0, 100, 200, 55)
                                                                      ).convert("RGB").getpixel((0, 0))
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], 50_000, dtype=np.uint16)), (round(50_000 / 257),) * 3
    if mode == "L":
        return Image.new("L", size, 77), (77, 77, 77)
    if mode == "LA":
        return Image.new("LA", size, (100, 0)), (0, 0, 0)  # fully transparent: the background
    return Image.new(mode, size, rgb), rgb


@pytest.mark.parametrize(("mode", "fmt"), [
    ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("I;16", "PNG"),
    ("L", "PNG"), ("L", "JPEG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF"),
])
def test_odd_modes_come_out_with_the_right_colour(tmp_path, mode, fmt):
    """Palette, RGBA, LA, CMYK, 16-bit and greyscale files are converted to RGB with the colour a
    viewer shows (transparency over the background, 16-bit scaled, not clipped)."""
    image, expected = _solid(mode)
    (tmp_path / "raw").mkdir()
    image.save(tmp_path / "raw" / f"img.{fmt.lower()}", format=fmt)
    accepted, skipped, _ = _run(tmp_path / "raw")
    assert not skipped
    array = accepted[f"img.{fmt.lower()}"]
    assert array.shape == (3, 8, 8) and array.dtype == np.uint8
    tolerance = 6 if fmt in ("JPEG", "WEBP") else 1
    assert np.abs(array.reshape(3, -1).mean(1) - np.array(expected)).max() <= tolerance, (
        array.reshape(3, -1).mean(1), expected)


def test_small_images_are_upsampled_or_refused_below_min_size(tmp_path):
    """A 3x3 image is upsampled (and counted as such); with preprocess.min_size=4 it is skipped."""
    (tmp_path / "raw").mkdir()
    _noise(size=3).save(tmp_path / "raw" / "tiny.png")
    _noise(size=24).save(tmp_path / "raw" / "fine.png")
    accepted, _, card = _run(tmp_path / "raw")
    assert set(accepted) == {"tiny.png", "fine.png"} and card["converted"]["upsampled"] == 1
    _, skipped, _ = _run(tmp_path / "raw", PARAMS.model_copy(update={"min_size": 4}))
    assert skipped == {"tiny.png": "too small: 3x3 is below preprocess.min_size=4"}


def test_exif_rotation_is_applied(tmp_path):
    """A photo stored sideways with EXIF orientation 6 comes out the way a viewer shows it: the
    stored left half (black) ends up on top."""
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, 20:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (tmp_path / "raw").mkdir()
    Image.fromarray(stored).save(tmp_path / "raw" / "photo.jpg", exif=exif, quality=95)
    accepted, _, card = _run(tmp_path / "raw", PARAMS.model_copy(update={"channels": 1}))
    image = accepted["photo.jpg"][0].astype(float)
    assert image[:3].mean() < 40 and image[-3:].mean() > 215, image
    assert card["converted"]["EXIF rotated"] == 1


# ----------------------------------------------------------------------------- fuzzing
_ORIGINAL = _noise(size=20, seed=7)
_VALID = {
    "png": _encode(_ORIGINAL, "PNG"),
    "jpg": _encode(_ORIGINAL, "JPEG", quality=90),
    "progressive.jpg": _encode(_ORIGINAL, "JPEG", progressive=True),
    "webp": _encode(_ORIGINAL, "WEBP", quality=80),
    "lossless.webp": _encode(_ORIGINAL, "WEBP", lossless=True),
    "bmp": _encode(_ORIGINAL, "BMP"),
    "gif": _encode(_ORIGINAL.quantize(32), "GIF"),
}


def _expected(data: bytes) -> np.ndarray:
    image = imaging.decode(lambda: Image.open(io.BytesIO(data)))
    return imaging.convert(image, resolution=8, channels=3, crop_spec="center", log=imaging.ConversionLog())


_REFERENCE = {kind: _expected(data) for kind, data in _VALID.items()}

_file = st.one_of(
    st.tuples(st.just("random"), st.binary(max_size=3000), st.just(0)),
    st.tuples(st.sampled_from(sorted(_VALID)), st.just(b""), st.integers(0, 4000)),  # truncation
    st.tuples(st.just("intact"), st.sampled_from(sorted(_VALID)), st.just(0)),
    st.tuples(st.just("flip"), st.sampled_from(sorted(_VALID)), st.integers(0, 10**6)),
)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(_file, min_size=1, max_size=6))
def test_fuzzed_folders_never_crash_and_never_accept_a_broken_image(tmp_path_factory, files):
    """Seeded fuzzing (Hypothesis, derandomised) over random bytes, truncations at any byte,
    single-byte corruptions and intact files of PNG / JPEG / progressive JPEG / WebP / BMP / GIF,
    through the real PartitionedDataset and preprocess nodes: no exception escapes but the one
    'no usable image' error; every file is accepted or skipped with a reason, the counts add up;
    a truncated file is accepted only if it decodes to exactly the intact image."""
    root = tmp_path_factory.mktemp("fuzz")
    truncated: dict[str, str] = {}
    for i, (kind, payload, number) in enumerate(files):
        if kind == "random":
            name, data = f"{i}.png", payload
        elif kind == "intact":
            name, data = f"{i}.{payload}", _VALID[payload]
        elif kind == "flip":
            original = _VALID[payload]
            position = number % len(original)
            name = f"{i}.{payload}"
            data = original[:position] + bytes([original[position] ^ 0xFF]) + original[position + 1:]
        else:
            original = _VALID[kind]
            name, data = f"{i}.{kind}", original[: number % len(original)]
            truncated[name] = kind
        (root / name).write_bytes(data)
    try:
        accepted, skipped, _ = _run(root)
    except NoUsableImagesError as exc:
        assert f"{len(files)} files found, all skipped" in str(exc)
        return
    assert len(accepted) + len(skipped) == len(files)
    for name, array in accepted.items():
        assert array.shape == (3, 8, 8) and array.dtype == np.uint8
        if name in truncated:
            assert np.array_equal(array, _REFERENCE[truncated[name]]), f"{name}: a truncated file was accepted"
