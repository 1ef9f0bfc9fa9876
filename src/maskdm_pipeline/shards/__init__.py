"""Memory-mapped image shards: the on-disk form of every image set a stage reads (DESIGN.md "Data
at scale"). Neutral file I/O (numpy and the standard library), imported by ``datasets/`` (which
writes and loads them for the catalog) and by ``training/`` (whose workers open them).

A shard folder (written whole by :func:`maskdm_pipeline.atomic.atomic_write`)::

    index.json                      counts, item shape, shard files, content checksums, metadata
    images-00000.npy ...            uint8 (n_i, C, H, W); np.load(path, mmap_mode="r") opens each
    labels.npy                      int64 (n,) class labels (absent when unlabelled)
    digests.npy                     uint8 (n, 16): BLAKE2b-128 of each image's bytes
    reference_images-00000.npy ...  an optional second group ("reference_"), same layout

Why not one ``.npz`` (the old format): an ``.npz`` is a zip archive, which numpy cannot memory-map,
so every reader held the whole split in memory, and every DDP worker got its own pickled copy.
Why ``.npy`` shards of at most ``SHARD_BYTES`` rather than one file per split: files of a size
that copy tools, object stores and partial re-copies handle well; a reader sees one array
either way (:class:`ShardArray`).

The **content checksum** of a group is SHA-256 over the item shape, the per-image digests in row
order and the labels: it changes exactly when what training reads changes (any pixel, the order
or a label), does not depend on how the rows are cut into shards, and needs no pass over the
pixels once the digests exist (the conversion computes them as it goes). The folder's checksum
combines its groups'; the caching of later stages chains from it.
"""

from maskdm_pipeline.shards.format import (
    CHUNK_BYTES,
    DIGEST_BYTES,
    FORMAT,
    GROUPS,
    INDEX,
    RERUN,
    SHARD_BYTES,
    ShardError,
    combine_checksums,
    content_checksum,
    folder_checksum,
    row_digests,
)
from maskdm_pipeline.shards.read import RowView, ShardArray, open_shards, take_rows
from maskdm_pipeline.shards.write import ShardWriter, iter_chunks, write_index

__all__ = [
    "CHUNK_BYTES", "DIGEST_BYTES", "FORMAT", "GROUPS", "INDEX", "RERUN", "SHARD_BYTES", "RowView",
    "ShardArray", "ShardError", "ShardWriter", "combine_checksums", "content_checksum",
    "folder_checksum", "iter_chunks", "open_shards", "row_digests", "take_rows", "write_index",
]
