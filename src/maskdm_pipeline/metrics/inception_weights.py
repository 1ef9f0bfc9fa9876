"""The FID Inception network with the real weights: find the file, download it, load it.

FID (Heusel et al. 2017) is only comparable across papers when computed with the TF-FID Inception
weights ``pt_inception-2015-12-05-6726825d.pth`` that pytorch-fid ports (METHOD.md section 6). So
this module never substitutes other weights: it resolves that file (an explicit path, then the torch
hub cache, then an optional download with a timeout) or raises :class:`InceptionWeightsUnavailable`
saying where to put it. The network itself is pytorch-fid's own ``InceptionV3``; only the loading of
its state dict is redirected to the resolved file, so pytorch-fid never reaches for the network.

This is the network and file I/O of the metrics; the feature math is
:mod:`~maskdm_pipeline.metrics.inception`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pytorch_fid.inception as pfi

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "InceptionWeightsUnavailable",
    "build_fid_inception",
    "hub_weights_path",
    "resolve_inception_weights",
]

logger = logging.getLogger(__name__)

# pytorch-fid (and with it torchvision) is imported only where a network is built: importing it
# here added about a second to every `kedro run`, FID or not. Both constants equal pytorch-fid's
# own (tests/unit/test_inception.py checks them).
FID_WEIGHTS_URL: str = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                        "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch hub names checkpoints "<name>-<first 8 hex digits of sha256>.<ext>"; checked on download.
_FID_WEIGHTS_SHA256_PREFIX = "6726825d"

# pytorch_fid reads its module-level ``load_state_dict_from_url`` while building the network;
# the lock keeps two threads from swapping it at the same time.
_PATCH_LOCK = threading.Lock()
# The download changes the process's default socket timeout while it runs (see _download).
_DOWNLOAD_LOCK = threading.Lock()


class InceptionWeightsUnavailable(RuntimeError):
    """The pytorch-fid Inception weights could not be found or fetched; FID cannot be computed.

    Callers report FID as unavailable (null) with this message; they never fall back to other
    weights, because a number from other weights is not FID. ``tried`` lists what was tried;
    :meth:`explain` renders the message with the caller's own way to point at a file (the
    pipeline names its parameter there, this module only knows the ``weights_path`` argument).
    """

    def __init__(self, tried: Sequence[str]) -> None:
        self.tried = list(tried)
        self.hub_path = hub_weights_path()
        super().__init__(self.explain())

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:  # picklable across processes
        return type(self), (self.tried,)

    def explain(self, how_to_point: str = "pass its path as the `weights_path` argument") -> str:
        return (
            f"FID needs pytorch-fid's InceptionV3 weights file {FID_WEIGHTS_FILENAME!r} "
            f"(the TF-FID weights pytorch_fid downloads from {FID_WEIGHTS_URL}). "
            f"Put the file at {self.hub_path} (the torch hub cache; $TORCH_HOME moves it), "
            f"or {how_to_point}. FID is never computed with other weights. Tried: "
            + "; ".join(self.tried)
        )


def hub_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) caches the weights: ``<hub dir>/checkpoints/<file>``.

    ``torch.hub.get_dir()`` follows ``torch.hub.set_dir`` and ``$TORCH_HOME`` (default
    ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


@contextmanager
def _default_socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets created inside the block time out after ``seconds`` (connect and every read)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` to ``dest`` with torch hub's own downloader, bounded by ``timeout`` seconds.

    ``torch.hub.download_url_to_file`` writes to a temporary name, checks the sha256 prefix and
    only then moves the file into place, but it has no timeout argument: it calls ``urlopen``
    without one, so its sockets (redirects included) take the process's default socket timeout.
    That default is set to ``timeout`` for the duration of the call, so an offline machine fails
    in milliseconds (DNS error) and a black-holed connection within ``timeout`` seconds (measured:
    tests/unit/test_inception.py). Other threads that open sockets during the download get the
    same default; downloads themselves are serialised.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Trying to download the FID Inception weights (about 92 MB, once; %g s timeout) from %s to %s",
                timeout, url, dest)
    with _DOWNLOAD_LOCK, _default_socket_timeout(timeout):
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=_FID_WEIGHTS_SHA256_PREFIX,
                                       progress=False)


def resolve_inception_weights(
    weights_path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    download_timeout: float = 30.0,
) -> Path:
    """Find the pytorch-fid Inception weights: explicit path -> torch hub cache -> download.

    An explicit ``weights_path`` that does not exist is an error (a typo should not silently use
    another file). Files found locally are not hash-checked (the user's choice is respected);
    downloads are, and bounded by ``download_timeout`` seconds per connection or read. Raises
    :class:`InceptionWeightsUnavailable` naming the file, the hub-cache path and the URL when
    nothing works.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return path
        raise InceptionWeightsUnavailable([f"weights_path={path} (no such file)"])
    tried: list[str] = []
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    tried.append(f"torch hub cache {cached} (no such file)")
    if not allow_download:
        tried.append("download (disabled: allow_download=False)")
        raise InceptionWeightsUnavailable(tried)
    try:
        _download(FID_WEIGHTS_URL, cached, download_timeout)
    except Exception as exc:  # any network / disk / hash failure means the same to the user
        tried.append(f"download from {FID_WEIGHTS_URL} ({type(exc).__name__}: {exc})")
        raise InceptionWeightsUnavailable(tried) from exc
    return cached


def build_fid_inception(
    dims: int = 2048,
    weights_path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    download_timeout: float = 30.0,
) -> pfi.InceptionV3:
    """pytorch-fid's ``InceptionV3`` for ``dims`` (64, 192, 768 or 2048) with the resolved weights.

    pytorch-fid builds the network and then calls its module-level ``load_state_dict_from_url``;
    for the duration of construction that name is pointed at the resolved local file. Needed:
    pytorch-fid has no argument for a weights file, its loader finds only the hub-cache copy
    (not an explicit ``weights_path``), reads it with ``weights_only=False`` (arbitrary pickled
    code) and downloads without a timeout when the file is missing. Here the file is read with
    ``torch.load(weights_only=True)``; the architecture, the strict ``load_state_dict`` and the
    forward pass (resize to 299 bilinear, scale to [-1, 1]) stay pytorch-fid's own. Returned in
    eval mode on CPU, without gradients.
    """
    import pytorch_fid.inception as pfi

    if dims not in pfi.InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(
            f"dims must be one of {sorted(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)}; got {dims}"
        )
    path = resolve_inception_weights(
        weights_path, allow_download=allow_download, download_timeout=download_timeout
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)

        def _load_resolved(*_args: Any, **_kwargs: Any) -> dict[str, torch.Tensor]:
            return state

        with _PATCH_LOCK:
            original = pfi.load_state_dict_from_url
            pfi.load_state_dict_from_url = _load_resolved
            try:
                model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
            finally:
                pfi.load_state_dict_from_url = original
    except Exception as exc:  # unreadable, truncated, or another network's weights (strict load)
        raise InceptionWeightsUnavailable(
            [f"{path} (not loadable: {type(exc).__name__}: {exc})"]
        ) from exc
    return model.eval()
