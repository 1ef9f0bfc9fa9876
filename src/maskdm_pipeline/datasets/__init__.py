"""Custom Kedro datasets: embedded digit sets, image folders, image shards, numpy archives, torch
checkpoints, feature caches.

Imported lazily so that a catalog which only needs images does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "EmbeddedDigitsDataset": ".embedded",
    "ImageFolder": ".folder",
    "NpzDataset": ".arrays",
    "ShardDataset": ".shards",
    "TorchCheckpointDataset": ".checkpoint",
    "CheckpointSlotDataset": ".checkpoint",
    "TorchStateDataset": ".torch_state",
    "FeatureCacheDataset": ".feature_cache",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
