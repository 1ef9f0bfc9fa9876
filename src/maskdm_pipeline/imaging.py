"""Decoding and conversion of one image (PIL + numpy, no Kedro); :mod:`maskdm_pipeline.conversion`
runs it over a whole source, in parallel.

Every input image is either converted to a uint8 ``(C, H, W)`` array or refused with a short,
human-readable reason; nothing here raises on a bad file. The callers count the reasons in the
dataset card so a user sees exactly what was skipped and why.
"""

from __future__ import annotations

import errno
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

CropSpec = str | Sequence[int]  # "none" | "center" | [top, left, height, width]

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class SkipImage(Exception):
    """Raised internally for an image that cannot be used; ``str(exc)`` is the reason."""


@dataclass
class ConversionLog:
    """What happened to the inputs: counts of conversions and the skipped files with reasons."""

    converted: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.converted[what] = self.converted.get(what, 0) + 1

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"file": name, "reason": reason})

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.skipped:
            key = item["reason"].split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


def decode(load: Callable[[], Image.Image]) -> Image.Image:
    """Run a lazy image loader and classify every way it can fail as a :class:`SkipImage`.

    Decompression-bomb *warnings* (more than ``Image.MAX_IMAGE_PIXELS``) are turned into skips
    too: a 100-megapixel file in a folder of faces is an accident, not data. PIL's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is held off while decoding, whoever set it: with it, a
    truncated file decodes to an image padded with grey and would enter the training set.
    """
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = load()
            image.load()
            return image
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason, none a crash
        raise SkipImage(_reason(exc)) from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _reason(exc: BaseException) -> str:
    """Classify a decoding failure. Loaders such as Kedro's wrap the real error (``DatasetError``
    with ``__cause__``), so the cause chain is walked down to the original exception first."""
    while exc.__cause__ is not None and not isinstance(exc, OSError | Image.DecompressionBombWarning):
        exc = exc.__cause__
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {exc}"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: PIL cannot identify the file (empty, a damaged header or not an image format)"
    if isinstance(exc, FileNotFoundError):
        if exc.filename and os.path.islink(exc.filename):
            return f"broken symlink: it points to {os.readlink(exc.filename)}, which does not exist"
        return "vanished: the file was removed while the folder was read"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "unreadable: symlink loop"
    if isinstance(exc, IsADirectoryError):
        # fsspec lists a symlink to a folder as a file and never descends into it, which is
        # also why a link to a parent folder cannot send the listing round in circles.
        return "not a file: a link to a folder (links to folders are not followed)"
    return f"corrupt: {type(exc).__name__}: {exc}"


def _sixteen_bit_to_eight(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit int) greyscale to 8 bits; PIL's convert("L") would clip instead."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if array.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def to_mode(image: Image.Image, channels: int, log: ConversionLog, background: int = 0) -> Image.Image:
    """Convert any PIL mode to ``L`` (channels=1) or ``RGB`` (channels=3).

    Transparency (RGBA, LA, palette with a transparent index) is composited over a flat
    ``background`` grey level, because dropping alpha would expose arbitrary hidden colours.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_eight(image)
        log.note("16-bit -> 8-bit")
    elif mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
        log.note("float -> 8-bit")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        log.note("palette -> RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (background, background, background, 255))
        image = Image.alpha_composite(flat, rgba).convert("RGB")
        log.note("alpha composited")
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        log.note(f"{image.mode} -> {target}")
        image = image.convert(target)
    return image


def crop(image: Image.Image, spec: CropSpec) -> Image.Image:
    """``none``; ``center`` (the largest central square); or a fixed ``[top, left, height, width]``
    box, e.g. the U-ViT CelebA 64 recipe ``[57, 25, 128, 128]`` (METHOD.md section 4, Data)."""
    if spec in (None, "none"):
        return image
    width, height = image.size
    if spec == "center":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))
    top, left, box_h, box_w = (int(v) for v in spec)
    if top + box_h > height or left + box_w > width:
        raise SkipImage(f"too small: {width}x{height} does not contain the crop box {list(spec)}")
    return image.crop((left, top, left + box_w, top + box_h))


def convert(
    image: Image.Image,
    *,
    resolution: int,
    channels: int,
    crop_spec: CropSpec,
    log: ConversionLog,
    min_size: int = 0,
    background: int = 0,
) -> np.ndarray:
    """Decoded image -> uint8 ``(C, resolution, resolution)``.

    Order: EXIF orientation, mode, crop, then an antialiased (bicubic with Pillow's reducing
    filter support) resize. Images smaller than ``resolution`` are upsampled and counted, or
    skipped when smaller than ``min_size``.
    """
    rotated = ImageOps.exif_transpose(image)
    if rotated is not None and rotated is not image and rotated.size != image.size:
        log.note("EXIF rotated")
    image = rotated if rotated is not None else image
    if min(image.size) < min_size:
        raise SkipImage(f"too small: {image.size[0]}x{image.size[1]} is below preprocess.min_size={min_size}")
    image = crop(to_mode(image, channels, log, background), crop_spec)
    if image.size != (resolution, resolution):
        if min(image.size) < resolution:
            log.note("upsampled")
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class NoUsableImagesError(ValueError):
    """The input held no image that could be converted."""


def conversion_kwargs(params: Any) -> dict[str, Any]:
    """The ``preprocess`` block (a ``params.PreprocessParams``, validated: its attributes are
    read as they are) -> :func:`convert`'s keyword arguments (all but ``log``); plain values,
    for the worker processes."""
    return {
        "resolution": params.resolution,
        "channels": params.channels,
        "crop_spec": params.crop,
        "min_size": params.min_size,
        "background": params.alpha_background,
    }


def class_folder(name: str) -> str:
    """The class of the image at ``name``, a path relative to the image folder, under the
    ImageFolder convention (``preprocess.labels: subfolder``): its first folder,
    ``<class>/<file>`` (deeper folders belong to their first folder's class).

    Raises:
        SkipImage: the path has no class folder (a file at the top of the image folder, which
            would otherwise become a class of its own, named after the file) or its first
            folder is hidden (``.ipynb_checkpoints/``, ``.cache/``: tools' copies, not a class).
    """
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if len(parts) < 2:
        raise SkipImage("outside a class sub-folder: with preprocess.labels: subfolder every image must be "
                        "in <folder>/<class>/, so this file has no class")
    if parts[0].startswith("."):
        raise SkipImage(f"in the hidden folder {parts[0]}/, which is not a class")
    return parts[0]


def class_report(folders: Sequence[str], labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Images per class, and the classes a labelled set should not have: class folders where
    no image could be used (``empty_classes``; a folder with no file at all is listed neither by
    ``ImageFolder`` nor by Kedro's PartitionedDataset, so it cannot be seen here) and classes of one image
    (``single_image_classes``: one example is all the fd_clf classifier, fd_clf.py, can learn from)."""
    counts = np.bincount(labels, minlength=len(classes))
    return {
        "images_per_class": {name: int(n) for name, n in zip(classes, counts, strict=True)},
        "empty_classes": sorted(set(folders) - set(classes)),
        "single_image_classes": [name for name, n in zip(classes, counts, strict=True) if n == 1],
    }


def _class_or_none(name: str) -> str | None:
    try:
        return class_folder(name)
    except SkipImage:
        return None
