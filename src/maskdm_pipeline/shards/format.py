"""The shard format: names, limits, the error type and the content checksums (numpy and the
standard library)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = "maskdm-shards/1"
INDEX = "index.json"
SHARD_BYTES = 1 << 30  # at most 1 GiB of pixels per shard file
GROUPS = ("", "reference_")  # key prefixes: images/labels/digests and reference_images/...
DIGEST_BYTES = 16
CHUNK_BYTES = 64 << 20  # rows read or written per step when streaming (bounded memory)
RERUN = "rerun `kedro run --pipelines preprocess`"


class ShardError(Exception):
    """A shard folder is missing, incomplete or inconsistent; the message names the file and
    what to do."""


def row_digests(rows: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 of each row's bytes: uint8 ``(k, 16)`` for ``rows`` of shape ``(k, ...)``."""
    rows = np.ascontiguousarray(rows)
    out = np.empty((len(rows), DIGEST_BYTES), dtype=np.uint8)
    for i, row in enumerate(rows):
        out[i] = np.frombuffer(hashlib.blake2b(row.data, digest_size=DIGEST_BYTES).digest(), np.uint8)
    return out


def content_checksum(item_shape: tuple[int, ...], digests: np.ndarray, labels: np.ndarray | None) -> str:
    """SHA-256 (hex) of one group's content: item shape, per-row digests in order, labels."""
    digest = hashlib.sha256(f"{FORMAT}|uint8|{tuple(int(s) for s in item_shape)}|{len(digests)}|".encode())
    digest.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    digest.update(b"labels:" + (b"none" if labels is None else np.asarray(labels, dtype="<i8").tobytes()))
    return digest.hexdigest()


def combine_checksums(*checksums: str | None) -> str:
    """One SHA-256 over several checksums in order (None for an absent part)."""
    return hashlib.sha256("|".join(c or "none" for c in checksums).encode()).hexdigest()


def folder_checksum(data: Mapping[str, Any]) -> str:
    """The checksum :func:`write_index` gives a folder written from ``data`` (``{"images",
    "digests", "labels", ["reference_..."]}``), computed from the digests alone."""
    return combine_checksums(*(
        content_checksum(tuple(data[f"{p}images"].shape[1:]), data[f"{p}digests"], data.get(f"{p}labels"))
        if data.get(f"{p}images") is not None else None for p in GROUPS))


