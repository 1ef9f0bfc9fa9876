"""A whole image source decoded and converted in a process pool, streamed in source order (PIL,
numpy and the standard library; no Kedro, no torch).

Sources: a folder listing (:class:`~maskdm_pipeline.listing.FileListing`, what the lean
``ImageFolder`` catalog entry loads), a ``PartitionedDataset`` mapping of loaders (kept working for
catalogs that have one), or an embedded set ``{"images": uint8 (N, C, H, W), "labels", "source"}``.
Each image goes through :func:`maskdm_pipeline.imaging.convert` exactly as before; what is new is
where the work happens and where the result goes:

- **In parallel:** ``workers`` spawned processes convert consecutive chunks of the source; the
  parent takes the chunks back in source order, so the rows, their order, the conversion counts
  and the skipped files (with their reasons, in order) are the same for any worker count, and so
  is every byte written.
- **Streamed:** each chunk goes straight to a *sink* (``write(rows, digests)``): the shard writer of
  the catalog entry, or a list in memory for small sets (:func:`convert_images`). At most
  ``2 x workers`` chunks are in flight, so the memory of a conversion does not grow with the
  number of images.

The pool is the project's one kind of local worker pool (:mod:`maskdm_pipeline.pool`: spawned,
workers ignoring Ctrl-C, results in order); spawned workers import only this module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from maskdm_pipeline import imaging
from maskdm_pipeline.imaging import ConversionLog, NoUsableImagesError, SkipImage
from maskdm_pipeline.listing import FileListing
from maskdm_pipeline.pool import available_cores, in_order, spawn_pool
from maskdm_pipeline.shards import row_digests

__all__ = ["Conversion", "Sink", "convert_images", "default_workers", "image_source"]

logger = logging.getLogger(__name__)

CHUNK_IMAGES = 64  # images per task: enough to amortise the round trip, small enough to balance


class Sink(Protocol):
    def write(self, rows: np.ndarray, digests: np.ndarray) -> None: ...


def default_workers() -> int:
    """The cores this process may use (``preprocess.workers: null``)."""
    return available_cores()


# ---------------------------------------------------------------------------- sources
class _FolderSource:
    def __init__(self, listing: FileListing) -> None:
        self.listing, self.description = listing, "image folder"

    def __len__(self) -> int:
        return len(self.listing)

    def name(self, i: int) -> str:
        return self.listing[i]

    def image(self, i: int) -> Image.Image:
        path = self.listing.path(i)

        def load() -> Image.Image:
            with open(path, "rb") as handle:
                image = Image.open(handle)
                image.load()
                return image

        return imaging.decode(load)


class _PartitionSource:
    """A ``PartitionedDataset`` of ``pillow.ImageDataset``: ``{relative path: loader}``."""

    def __init__(self, partitions: Mapping[str, Callable[[], Any]]) -> None:
        self.names = sorted(partitions)
        self.loaders = [partitions[n] for n in self.names]
        self.description = "image folder"

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return self.names[i]

    def image(self, i: int) -> Image.Image:
        return imaging.decode(self.loaders[i])


class _ArraySource:
    def __init__(self, images: np.ndarray, labels: np.ndarray | None, description: str) -> None:
        self.images, self.labels, self.description = images, labels, description

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return f"{self.description}[{i}]"

    def image(self, i: int) -> Image.Image:
        item = self.images[i]
        return Image.fromarray(item[0] if item.shape[0] == 1 else item.transpose(1, 2, 0))


def image_source(raw: Any) -> _FolderSource | _PartitionSource | _ArraySource:
    """The catalog's ``raw_images`` (a folder listing, a ``PartitionedDataset`` mapping or an
    embedded set) as a source of images by position."""
    if isinstance(raw, FileListing):
        return _FolderSource(raw)
    if isinstance(raw, Mapping) and isinstance(raw.get("images"), np.ndarray):
        labels = raw.get("labels")
        return _ArraySource(raw["images"], None if labels is None else np.asarray(labels),
                            str(raw.get("source", "embedded")))
    return _PartitionSource(raw)


# ---------------------------------------------------------------------------- one chunk
@dataclass
class _Chunk:
    rows: np.ndarray  # uint8 (k, C, R, R)
    positions: list[int]  # source positions of the rows
    skipped: list[tuple[int, str]]  # (source position, reason)
    notes: dict[str, int]  # ConversionLog.converted of this chunk, first occurrence first
    digests: np.ndarray  # uint8 (k, 16)


_WORKER: dict[str, Any] = {}


def _init_worker(source: Any, kwargs: dict[str, Any], by_folder: bool) -> None:
    _WORKER.update(source=source, kwargs=kwargs, by_folder=by_folder)


def _convert_range(start: int, stop: int) -> _Chunk:
    source, kwargs, by_folder = _WORKER["source"], _WORKER["kwargs"], _WORKER["by_folder"]
    log = ConversionLog()
    rows, positions, skipped = [], [], []
    for i in range(start, stop):
        try:
            image = source.image(i)  # its own decoding problems first, as the reason given
            if by_folder:
                imaging.class_folder(source.name(i))  # a file outside a class folder has no label
            rows.append(imaging.convert(image, log=log, **kwargs))
            positions.append(i)
        except SkipImage as reason:
            skipped.append((i, str(reason)))
    shape = (kwargs["channels"], kwargs["resolution"], kwargs["resolution"])
    array = np.stack(rows) if rows else np.empty((0, *shape), dtype=np.uint8)
    return _Chunk(array, positions, skipped, dict(log.converted), row_digests(array))


# ---------------------------------------------------------------------------- the whole source
@dataclass
class Conversion:
    """A conversion to run: ``raw`` (a source, see :func:`image_source`) with the ``preprocess``
    block (a ``params.PreprocessParams``, read by attribute: see
    :func:`maskdm_pipeline.imaging.conversion_kwargs`). What the ``convert_images`` node returns:
    the catalog's shard dataset runs it while it writes (Kedro's lazy saving), so the images
    never exist in memory at once.

    ``label``: the catalog entry ``raw`` came from, for messages. After :meth:`run`: ``found``,
    ``log`` (counts and skipped files), ``labels`` (int64 per row, or None) and ``count`` (rows
    written).
    """

    raw: Any
    params: Any  # params.PreprocessParams: the schema is a floor above, so it is not imported here
    workers: int | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    label: str = "raw_images"
    found: int = 0
    count: int = 0
    labels: np.ndarray | None = None
    classes: dict[str, Any] | None = None
    log: ConversionLog = field(default_factory=ConversionLog)
    _description: str = field(default="", repr=False)

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return (self.params.channels, self.params.resolution, self.params.resolution)

    def run(self, sink: Sink) -> Conversion:
        """Convert every image of the source into ``sink`` in source order.

        Raises:
            NoUsableImagesError: not one image could be converted (the message counts the reasons).
        """
        source = image_source(self.raw)
        self.found, self.count, self.log, self.labels, self.classes = len(source), 0, ConversionLog(), None, None
        n = self.found
        kwargs = imaging.conversion_kwargs(self.params)
        # Embedded arrays need no decoding (~40 us an image): a pool's start-up would cost more.
        workers = 1 if isinstance(source, _ArraySource) else self.workers or default_workers()
        workers = max(1, min(workers, -(-n // CHUNK_IMAGES)))
        subfolder = self.params.labels == "subfolder" and not isinstance(source, _ArraySource)
        self._description = source.description
        classes: dict[str, int] = {}
        class_ids: list[np.ndarray] = []
        positions: list[np.ndarray] = []
        bar = tqdm(total=n, desc="converting", unit="img", disable=not self._show_bar(), dynamic_ncols=True)
        try:
            for chunk in _chunks(source, kwargs, n, workers, subfolder):
                for i, reason in chunk.skipped:
                    self.log.skip(source.name(i), reason)
                    logger.warning("Skipping %s: %s", source.name(i), reason)
                for what, count in chunk.notes.items():
                    self.log.converted[what] = self.log.converted.get(what, 0) + count
                if len(chunk.rows):
                    sink.write(chunk.rows, chunk.digests)
                    positions.append(np.asarray(chunk.positions, dtype=np.int64))
                    if subfolder:
                        class_ids.append(np.array([classes.setdefault(imaging.class_folder(source.name(i)),
                                                                      len(classes)) for i in chunk.positions],
                                                  dtype=np.int64))
                self.count += len(chunk.rows)
                bar.update(len(chunk.rows) + len(chunk.skipped))
        finally:
            bar.close()
        if self.count == 0:
            raise NoUsableImagesError(
                f"No usable image in the {self.label} input ({n} files found, all skipped: "
                f"{self.log.skipped_by_reason()}). Check the folder that `{self.label}.path` points to in "
                "conf/<env>/catalog.yml."
            )
        used = np.concatenate(positions)
        if isinstance(source, _ArraySource):
            self.labels = None if source.labels is None else source.labels[used].astype(np.int64)
        elif subfolder:
            rank = {name: r for r, name in enumerate(sorted(classes))}
            remap = np.array([rank[name] for name in classes], dtype=np.int64)
            self.labels = remap[np.concatenate(class_ids)]
            self.classes = _class_report(source, self.labels, sorted(classes))
        logger.info("Converted %d of %d images from %s", self.count, n, source.description)
        return self

    def _show_bar(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else self.progress

    def summary(self) -> dict[str, Any]:
        """Plain values for the shard index (and from there the dataset card)."""
        return {"source": self._description, "found": self.found, "used": self.count,
                "converted": dict(self.log.converted), "skipped": list(self.log.skipped),
                "classes": self.classes}


def _class_report(source: Any, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """:func:`maskdm_pipeline.imaging.class_report` of labels from class folders, with one
    warning when a class folder has no usable image or a class has a single one."""
    folders = set()
    for i in range(len(source)):
        try:
            folders.add(imaging.class_folder(source.name(i)))
        except SkipImage:
            pass
    report = imaging.class_report(sorted(folders), labels, classes)
    if report["empty_classes"] or report["single_image_classes"]:
        logger.warning("Class folders without a usable image: %s; classes with a single image: %s. Labels come "
                       "from sub-folders (preprocess.labels: subfolder); see data/08_reporting/dataset_card.json.",
                       ", ".join(report["empty_classes"]) or "none",
                       ", ".join(report["single_image_classes"]) or "none")
    return report


def _chunks(source: Any, kwargs: dict[str, Any], n: int, workers: int, by_folder: bool) -> Iterator[_Chunk]:
    """The source's chunks in order, converted here (one worker) or by a spawned pool;
    ``by_folder``: labels come from class folders, so a file outside one is skipped."""
    bounds = [(s, min(s + CHUNK_IMAGES, n)) for s in range(0, n, CHUNK_IMAGES)]
    if workers == 1:
        _init_worker(source, kwargs, by_folder)
        try:
            for start, stop in bounds:
                yield _convert_range(start, stop)
        finally:
            _WORKER.clear()
        return
    with spawn_pool(workers, _init_worker, (source, kwargs, by_folder)) as pool:
        yield from in_order(pool, _convert_range, bounds, window=2 * workers)


class _MemorySink:
    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.digests: list[np.ndarray] = []

    def write(self, rows: np.ndarray, digests: np.ndarray) -> None:
        self.rows.append(rows)
        self.digests.append(digests)


def convert_images(raw: Any, params: Any, workers: int | None = 1) -> dict[str, Any]:
    """Decode, convert and collect every usable image in memory (small sets and tests; the
    pipeline streams into shards instead, see :class:`Conversion`).

    ``raw``: an embedded set, a folder listing or a ``PartitionedDataset`` mapping of loaders;
    ``params``: the ``preprocess`` block (a ``params.PreprocessParams``).
    Returns ``{"images": uint8 (N, C, R, R), "labels": int64
    (N,) | None, "digests": uint8 (N, 16), "source", "found", "log", "meta"}`` (``meta``: what the
    shards' index records, :meth:`Conversion.summary`).

    Raises:
        NoUsableImagesError: not one image could be converted (the message counts the reasons).
    """
    sink = _MemorySink()
    done = Conversion(raw, params, workers=workers, progress=False).run(sink)
    return {"images": np.concatenate(sink.rows), "labels": done.labels, "digests": np.concatenate(sink.digests),
            "source": done.summary()["source"], "found": done.found, "log": done.log, "classes": done.classes,
            "meta": done.summary()}
