"""Writes folders of good and deliberately broken images for the preprocessing tests."""

from __future__ import annotations

import io
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
