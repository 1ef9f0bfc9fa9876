"""Custom Kedro datasets: embedded digit sets, image folders, IDX files (MNIST's format), image
shards, numpy archives, torch checkpoints, feature caches, a folder of PNGs replaced whole, and the
kedro-datasets file datasets with atomic saves.

Every dataset that writes, writes atomically (``atomic.atomic_write``). For the cache
(``maskdm_pipeline.caching``) a dataset may define ``content_identity() -> str | None``: a string
that changes whenever what it holds changes, or None when what it holds never changes what its
readers compute (a keyed cache, a resume slot); without it, a file is identified by its content
hash and a folder by its listing.

Imported lazily so that a catalog which only needs images does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EmbeddedDigitsDataset": ".embedded",
    "ImageFolder": ".folder",
    "IdxDataset": ".idx",
    "NpzDataset": ".arrays",
    "ShardDataset": ".shards",
    "TorchCheckpointDataset": ".checkpoint",
    "CheckpointSlotDataset": ".checkpoint",
    "TorchStateDataset": ".torch_state",
    "FeatureCacheDataset": ".feature_cache",
    "PngFolderDataset": ".image_folder",
    "JSONDataset": ".files",
    "CSVDataset": ".files",
    "TextDataset": ".files",
    "ImageDataset": ".files",
    "MatplotlibDataset": ".files",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
