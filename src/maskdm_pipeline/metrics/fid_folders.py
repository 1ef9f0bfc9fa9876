"""FID of two image folders, as ``python -m pytorch_fid path_a path_b`` computes it: the file I/O
around :class:`~maskdm_pipeline.metrics.inception.InceptionFeatures` (listing folders, decoding
files, reading ``.npz`` statistics).

Images are decoded in this process: for FID-sized images decoding is a small fraction of the
network's cost, and DataLoader workers would only compete with it for the same cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from maskdm_pipeline.metrics.frechet import frechet_distance, stats
from maskdm_pipeline.metrics.inception import InceptionFeatures

__all__ = ["IMAGE_EXTENSIONS", "features_from_files", "fid_from_folders", "list_images"]

# pytorch-fid's own set (tests/unit/test_inception.py checks it).
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})


def list_images(path: str | os.PathLike[str]) -> list[Path]:
    """The files pytorch-fid reads from a folder: top level, its extensions (case-sensitive), sorted."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"not an image folder: {folder}")
    return sorted(file for ext in IMAGE_EXTENSIONS for file in folder.glob(f"*.{ext}"))


def features_from_files(
    extractor: InceptionFeatures, files: Sequence[str | os.PathLike[str]]
) -> NDArray[np.float64]:
    """Activations ``(N, dims)`` float64 of image files, decoded as pytorch-fid does
    (``Image.open().convert('RGB')``), ``extractor.batch_size`` files at a time."""
    out = np.empty((len(files), extractor.dims), dtype=np.float64)
    for start in range(0, len(files), extractor.batch_size):
        arrays = []
        for f in files[start : start + extractor.batch_size]:
            with Image.open(f) as img:
                arrays.append(np.asarray(img.convert("RGB")))
        if all(a.shape == arrays[0].shape for a in arrays):
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
            out[start : start + len(arrays)] = extractor(batch)
        else:  # mixed sizes: the network resizes each image alone anyway
            for i, a in enumerate(arrays):
                out[start + i] = extractor(torch.from_numpy(a).permute(2, 0, 1)[None])[0]
    return out


def _path_stats(
    path: str | os.PathLike[str], extractor: InceptionFeatures
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if str(path).endswith(".npz"):  # pytorch-fid's --save-stats format, accepted the same way
        with np.load(path) as f:
            return f["mu"][:], f["sigma"][:]
    files = list_images(path)
    if len(files) < 2:
        raise ValueError(f"{path}: need at least 2 images for a covariance; found {len(files)}")
    return stats(features_from_files(extractor, files))


def fid_from_folders(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    dims: int = 2048,
    weights_path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 50,
    allow_download: bool = True,
    download_timeout: float = 30.0,
) -> float:
    """FID (Heusel et al. 2017) between two image folders (or pytorch-fid ``.npz`` statistics).

    The number ``python -m pytorch_fid path_a path_b`` prints with the same weights, up to float32
    rounding: same file selection (:func:`list_images`), same decoding, same network and
    preprocessing, float64 statistics; only the square-root trace is computed by
    :func:`~maskdm_pipeline.metrics.frechet.frechet_distance`. The keyword arguments are
    :class:`InceptionFeatures`'s. Raises ``FileNotFoundError`` for a path that is neither,
    :class:`~maskdm_pipeline.metrics.inception_weights.InceptionWeightsUnavailable` when the
    weights are missing (never substitutes others).
    """
    for path in (path_a, path_b):  # fail on a typo before spending time on the network
        if not (Path(path).is_dir() or (str(path).endswith(".npz") and Path(path).is_file())):
            raise FileNotFoundError(f"not an image folder or .npz statistics file: {path}")
    extractor = InceptionFeatures(
        dims, weights_path, device=device, batch_size=batch_size,
        allow_download=allow_download, download_timeout=download_timeout,
    )
    mu_a, sigma_a = _path_stats(path_a, extractor)
    mu_b, sigma_b = _path_stats(path_b, extractor)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
