"""pytorch-fid's InceptionV3 as a feature extractor, and FID of two image folders.

FID (Heusel et al. 2017) is only comparable across papers when computed with the TF-FID Inception
weights ``pt_inception-2015-12-05-6726825d.pth`` that pytorch-fid ports (METHOD.md section 6). So
this module never substitutes other weights: it resolves that file (an explicit path, then the torch
hub cache, then an optional download with a timeout) or raises :class:`InceptionWeightsUnavailable`
saying where to put it. The network itself is pytorch-fid's own ``InceptionV3``; only the loading of
its state dict is redirected to the resolved file, so pytorch-fid never reaches for the network.

Speed over ``pytorch_fid.fid_score.get_activations`` (``benchmarks/fid.py``): nearly all of it is
channels-last tensors, oneDNN's preferred convolution layout on CPU (measured in CPU time, one
thread, 32x32 inputs: 0.149 -> 0.101 s per image, 1.5x). ``inference_mode`` instead of ``no_grad``
measured no difference but costs nothing; folding BatchNorm into the convolutions gave another ~6%
and was left out to keep pytorch-fid's module tree untouched; TorchScript freezing was slower.
Images are decoded in this process: for FID-sized images decoding is a small fraction of the
network's cost, and DataLoader workers would only compete with it for the same cores. The numbers
agree with pytorch-fid to float32 rounding (activations within about 1e-6 relative).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

from maskdm_pipeline.devices import resolve_device
from maskdm_pipeline.metrics.frechet import frechet_distance, stats

if TYPE_CHECKING:
    import pytorch_fid.inception as pfi

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "InceptionFeatures",
    "InceptionWeightsUnavailable",
    "build_fid_inception",
    "fid_from_folders",
    "hub_weights_path",
    "list_images",
    "random_fid_inception_state_dict",
    "resolve_inception_weights",
]

# pytorch-fid (and with it torchvision) is imported only where a network is built: importing it
# here added about a second to every `kedro run`, FID or not. Both constants equal pytorch-fid's
# own (tests/unit/test_metrics.py checks them).
FID_WEIGHTS_URL: str = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                        "pt_inception-2015-12-05-6726825d.pth")
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch hub names checkpoints "<name>-<first 8 hex digits of sha256>.<ext>"; checked on download.
_FID_WEIGHTS_SHA256_PREFIX = "6726825d"
_PARAMETER_NAME = "evaluate.fid.weights_path"

# pytorch_fid reads its module-level ``load_state_dict_from_url`` while building the network;
# the lock keeps two threads from swapping it at the same time.
_PATCH_LOCK = threading.Lock()


class InceptionWeightsUnavailable(RuntimeError):
    """The pytorch-fid Inception weights could not be found or fetched; FID cannot be computed.

    Callers report FID as unavailable (null) with this message; they never fall back to other
    weights, because a number from other weights is not FID.
    """


def hub_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) caches the weights: ``<hub dir>/checkpoints/<file>``.

    ``torch.hub.get_dir()`` follows ``torch.hub.set_dir`` and ``$TORCH_HOME`` (default
    ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _unavailable_message(tried: Sequence[str]) -> str:
    return (
        f"FID needs pytorch-fid's InceptionV3 weights file {FID_WEIGHTS_FILENAME!r} "
        f"(the TF-FID weights pytorch_fid downloads from {FID_WEIGHTS_URL}). "
        f"Put the file at {hub_weights_path()} (the torch hub cache; $TORCH_HOME moves it), "
        f"or set the parameter `{_PARAMETER_NAME}` to its path "
        f"(e.g. kedro run --params {_PARAMETER_NAME}=/path/to/{FID_WEIGHTS_FILENAME}). "
        "FID is never computed with other weights. Tried: " + "; ".join(tried)
    )


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` to ``dest`` atomically, checking torch hub's sha256 prefix.

    ``timeout`` bounds connecting and every read (socket timeout), so an offline machine fails in
    milliseconds (DNS error) and a black-holed one within ``timeout`` seconds.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(_FID_WEIGHTS_SHA256_PREFIX):
            raise OSError(
                f"downloaded file has sha256 {digest.hexdigest()[:8]}..., "
                f"expected {_FID_WEIGHTS_SHA256_PREFIX}..."
            )
        os.replace(tmp_name, dest)  # a half-written file never sits under the final name
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def resolve_inception_weights(
    weights_path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
    download_timeout: float = 30.0,
) -> Path:
    """Find the pytorch-fid Inception weights: explicit path -> torch hub cache -> download.

    An explicit ``weights_path`` that does not exist is an error (a typo should not silently use
    another file). Files found locally are not hash-checked (the user's choice is respected);
    downloads are. Raises :class:`InceptionWeightsUnavailable` naming the file, the hub-cache path,
    the ``evaluate.fid.weights_path`` parameter and the URL when nothing works.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return path
        raise InceptionWeightsUnavailable(
            _unavailable_message([f"{_PARAMETER_NAME}={path} (no such file)"])
        )
    tried: list[str] = []
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    tried.append(f"torch hub cache {cached} (no such file)")
    if not allow_download:
        tried.append("download (disabled: allow_download=False)")
        raise InceptionWeightsUnavailable(_unavailable_message(tried))
    try:
        _download(FID_WEIGHTS_URL, cached, download_timeout)
    except Exception as exc:  # any network / disk / hash failure means the same to the user
        tried.append(f"download from {FID_WEIGHTS_URL} ({type(exc).__name__}: {exc})")
        raise InceptionWeightsUnavailable(_unavailable_message(tried)) from exc
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
    for the duration of construction that name is pointed at the resolved local file (read with
    ``torch.load(weights_only=True)``), so the architecture, the strict ``load_state_dict`` and the
    forward pass (resize to 299 bilinear, scale to [-1, 1]) are pytorch-fid's own. Returned in
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
        # weights_only: a state dict needs no pickled code; the released file loads this way.
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
            _unavailable_message([f"{path} (not loadable: {type(exc).__name__}: {exc})"])
        ) from exc
    return model.eval()


def random_fid_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A STAND-IN state dict for pytorch-fid's FID Inception, randomly initialised. Tests only.

    Lets offline tests and benchmarks exercise the real loading path and the real architecture
    (same keys and shapes as ``pt_inception-2015-12-05``) without the real file. Numbers computed
    with it are not FID and must never be reported. Conv weights are He-normal so activations
    neither vanish nor explode through the ~95 layers (PyTorch's default init shrinks them to
    about 1e-8 at pool3, which would make any comparison meaningless).
    """
    import pytorch_fid.inception as pfi

    captured: dict[str, torch.nn.Module] = {}
    original_builder = pfi._inception_v3

    def _capture(*args: Any, **kwargs: Any) -> torch.nn.Module:
        # fid_inception_v3 builds torchvision's net with this, swaps in the FID blocks, then loads.
        captured["net"] = original_builder(*args, **kwargs)
        return captured["net"]

    def _own_state(*_args: Any, **_kwargs: Any) -> dict[str, torch.Tensor]:
        return captured["net"].state_dict()

    with _PATCH_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        original_loader = pfi.load_state_dict_from_url
        pfi._inception_v3 = _capture
        pfi.load_state_dict_from_url = _own_state
        try:
            net = pfi.fid_inception_v3()
        finally:
            pfi._inception_v3 = original_builder
            pfi.load_state_dict_from_url = original_loader
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key, value in state.items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


class InceptionFeatures:
    """Images ``(N, C, H, W)`` -> pytorch-fid Inception activations ``(N, dims)`` float64.

    ``uint8`` images are scaled by 1/255 in float32 exactly like torchvision's ``ToTensor`` (what
    ``python -m pytorch_fid`` feeds); float images must already be in [0, 1]. One channel is
    repeated to three (as PIL's ``convert('RGB')`` does for grey images). Any size: the network
    resizes to 299x299 itself. Features from the real weights give FID; from anything else they
    give a different number that must not be called FID.
    """

    def __init__(
        self,
        dims: int = 2048,
        weights_path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 50,
        allow_download: bool = True,
        download_timeout: float = 30.0,
        channels_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.dims = dims
        self.batch_size = batch_size
        self.device = resolve_device(device)
        # channels_last: oneDNN (CPU) and cuDNN (tensor cores) run these convs faster in NHWC.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = build_fid_inception(
            dims, weights_path, allow_download=allow_download, download_timeout=download_timeout
        )
        self.model = model.to(self.device, memory_format=self.memory_format)

    def _to_input(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            # Same op order as ToTensor: float32 first, then divide by 255.
            x = batch.to(self.device).to(torch.float32).div(255)
        elif batch.is_floating_point():
            x = batch.to(self.device, torch.float32)
            # Samples in [-1, 1] passed as they come from a sampler would give a silently wrong FID.
            if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise ValueError(
                    f"float images must be in [0, 1]; got [{float(x.min()):.3g}, "
                    f"{float(x.max()):.3g}] (map [-1, 1] samples with (x + 1) / 2)"
                )
        else:
            raise ValueError(f"images must be uint8 or float in [0, 1]; got dtype {batch.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def __call__(self, images: NDArray[Any] | torch.Tensor) -> NDArray[np.float64]:
        data = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
        if data.ndim != 4 or data.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be (N, C, H, W) with C in (1, 3); got shape {tuple(data.shape)}"
            )
        out = np.empty((data.shape[0], self.dims), dtype=np.float64)
        for start in range(0, data.shape[0], self.batch_size):
            x = self._to_input(data[start : start + self.batch_size])
            pred = self.model(x)[0]
            # As pytorch-fid: blocks other than pool3 are spatial maps, averaged to a vector.
            if pred.shape[2] != 1 or pred.shape[3] != 1:
                pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
            out[start : start + pred.shape[0]] = pred.flatten(1).cpu().numpy()
        return out

    def from_files(self, files: Sequence[str | os.PathLike[str]]) -> NDArray[np.float64]:
        """Activations of image files, decoded as pytorch-fid does (``Image.open().convert('RGB')``).

        Decoded batch by batch in this process: for FID-sized images decoding costs far less than
        the network, and a DataLoader worker would only take a core away from it.
        """
        out = np.empty((len(files), self.dims), dtype=np.float64)
        for start in range(0, len(files), self.batch_size):
            arrays = []
            for f in files[start : start + self.batch_size]:
                with Image.open(f) as img:
                    arrays.append(np.asarray(img.convert("RGB")))
            if all(a.shape == arrays[0].shape for a in arrays):
                batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
                out[start : start + len(arrays)] = self(batch)
            else:  # mixed sizes: the network resizes each image alone anyway
                for i, a in enumerate(arrays):
                    out[start + i] = self(torch.from_numpy(a).permute(2, 0, 1)[None])[0]
        return out


def list_images(path: str | os.PathLike[str]) -> list[Path]:
    """The files pytorch-fid reads from a folder: top level, its extensions (case-sensitive), sorted."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"not an image folder: {folder}")
    return sorted(file for ext in IMAGE_EXTENSIONS for file in folder.glob(f"*.{ext}"))


def _path_stats(
    path: str | os.PathLike[str], extractor: InceptionFeatures
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if str(path).endswith(".npz"):  # pytorch-fid's --save-stats format, accepted the same way
        with np.load(path) as f:
            return f["mu"][:], f["sigma"][:]
    files = list_images(path)
    if len(files) < 2:
        raise ValueError(f"{path}: need at least 2 images for a covariance; found {len(files)}")
    return stats(extractor.from_files(files))


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
    :func:`~maskdm_pipeline.metrics.frechet.frechet_distance`. Raises
    :class:`InceptionWeightsUnavailable` when the weights are missing (never substitutes others).
    """
    for path in (path_a, path_b):  # fail on a typo before spending time on the network
        if not (Path(path).is_dir() or (str(path).endswith(".npz") and Path(path).is_file())):
            raise FileNotFoundError(f"not an image folder or .npz statistics file: {path}")
    extractor = InceptionFeatures(
        dims,
        weights_path,
        device=device,
        batch_size=batch_size,
        allow_download=allow_download,
        download_timeout=download_timeout,
    )
    mu_a, sigma_a = _path_stats(path_a, extractor)
    mu_b, sigma_b = _path_stats(path_b, extractor)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
