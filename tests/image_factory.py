"""Writes folders of good and deliberately broken images, and IDX files, for the preprocessing tests."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_MODES = ("L", "RGB", "RGBA", "P", "CMYK", "I;16", "LA", "1")


def _pattern(size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def good_image(mode: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    rgb = Image.fromarray(_pattern(size, seed), "RGB")
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


def write_mixed_folder(root: Path) -> tuple[set[str], dict[str, str]]:
    """Returns (names of usable images, {name of broken file: expected reason prefix})."""
    root.mkdir(parents=True, exist_ok=True)
    good: set[str] = set()
    for i, mode in enumerate(GOOD_MODES):
        ext = "png" if mode not in ("CMYK",) else "jpg"
        name = f"class_{i % 2}/good_{mode.replace(';', '_')}.{ext}"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        good_image(mode, seed=i).save(path)
        good.add(name)
    # Small image: upsampled, still usable.
    good_image("RGB", size=(5, 5), seed=99).save(root / "class_0/tiny.webp")
    good.add("class_0/tiny.webp")
    # EXIF-rotated photo (orientation 6: rotate 90 degrees when displayed).
    photo = good_image("RGB", size=(40, 20), seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "class_1/rotated.jpg", exif=exif)
    good.add("class_1/rotated.jpg")
    good_image("RGB", seed=8).save(root / "class_1/bitmap.bmp")
    good.add("class_1/bitmap.bmp")

    broken: dict[str, str] = {}
    (root / "zero.png").write_bytes(b"")
    broken["zero.png"] = "not an image"
    buf = io.BytesIO()
    good_image("RGB", size=(64, 64), seed=3).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    broken["truncated.png"] = "corrupt"
    (root / "notes.txt").write_text("not an image at all")
    broken["notes.txt"] = "not an image"
    (root / "random.jpg").write_bytes(np.random.default_rng(5).bytes(500))
    broken["random.jpg"] = "not an image"
    return good, broken


# The IDX type byte of each dtype (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS").
IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    """The IDX encoding of ``array`` as ``dtype`` (big-endian): the tests' reference writer."""
    stored = np.asarray(array).astype(np.dtype(dtype).newbyteorder(">") if dtype != "u1" else "u1")
    header = bytes([0, 0, IDX_CODES[stored.dtype], stored.ndim]) + struct.pack(f">{stored.ndim}i", *stored.shape)
    return header + stored.tobytes()


def write_fashion_like(folder: Path, n: int = 80, seed: int = 0) -> Path:
    """``n`` random 28x28 images and labels 0..9 as Fashion-MNIST's two gzipped training files."""
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return folder
