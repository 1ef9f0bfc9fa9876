"""The FID path: pytorch-fid's Inception with the real weights only (lookup, download, loading),
its features, and FID of two folders against ``python -m pytorch_fid`` itself.

Everything runs offline. The real Inception weights are not needed: a STAND-IN file with the same
keys and shapes (random weights, seed 0) goes into a temporary torch hub cache, which exercises the
real resolution and loading code and lets us compare against ``python -m pytorch_fid`` itself.
Downloads go to servers on 127.0.0.1 started by the tests.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import get_activations

from benchmarks.standin_weights import random_fid_inception_state_dict
from maskdm_pipeline.metrics import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    IMAGE_EXTENSIONS,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    build_fid_inception,
    features_from_files,
    fid_from_folders,
    hub_weights_path,
    inception_weights,
    list_images,
    resolve_inception_weights,
)
from maskdm_pipeline.params import EvaluateParams
from maskdm_pipeline.pipelines.evaluate.nodes import inception_reference
from maskdm_pipeline.training import TrainerConfig

# --------------------------------------------------------------------------- Inception weights


@pytest.fixture(scope="module")
def standin_state() -> dict[str, torch.Tensor]:
    return random_fid_inception_state_dict(seed=0)


@pytest.fixture(scope="module")
def torch_home(
    tmp_path_factory: pytest.TempPathFactory, standin_state: dict[str, torch.Tensor]
) -> Iterator[Path]:
    """A temporary $TORCH_HOME whose hub cache holds the stand-in weights under the real name."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(standin_state, checkpoints / FID_WEIGHTS_FILENAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.setattr(torch.hub, "_hub_dir", None)  # get_dir() then follows $TORCH_HOME
        yield home


@pytest.fixture()
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def _write_folder(root: Path, n: int, seed: int, brightness: int) -> Path:
    """Small PNG/JPEG images, one greyscale, plus files pytorch-fid ignores (and so must we)."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256 - brightness, (8, 8, 3), dtype=np.uint8) + brightness
        img = Image.fromarray(base.astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        if i == 0:
            img = img.convert("L")
        img.save(root / f"img_{i:02d}.{'jpg' if i % 4 == 1 else 'png'}")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "ignored_upper.PNG")
    (root / "nested").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "nested" / "ignored.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("fid_folders")
    return _write_folder(base / "a", 12, 0, 0), _write_folder(base / "b", 12, 1, 60)


@pytest.mark.slow
def test_pytorch_fid_constants_match_and_pipelines_load_without_it() -> None:
    import pytorch_fid.fid_score
    import pytorch_fid.inception

    assert FID_WEIGHTS_URL == pytorch_fid.inception.FID_WEIGHTS_URL
    assert IMAGE_EXTENSIONS == set(pytorch_fid.fid_score.IMAGE_EXTENSIONS)
    # Loading every pipeline (what each `kedro run` does) leaves pytorch-fid and torchvision unimported.
    code = ("import importlib, pkgutil, sys, maskdm_pipeline.pipelines as p\n"
            "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'): importlib.import_module(m.name)\n"
            "print(sorted(m for m in ('pytorch_fid', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hub_path_follows_torch_home(torch_home: Path) -> None:
    expected = torch_home / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME
    assert hub_weights_path() == expected
    assert resolve_inception_weights(allow_download=False) == expected


@pytest.mark.slow
def test_fid_from_folders_equals_pytorch_fid_cli(
    torch_home: Path, image_folders: tuple[Path, Path]
) -> None:
    """Same number as ``python -m pytorch_fid`` with the same (stand-in) weights from the hub cache.

    ``--dims 192`` (the first two Inception blocks) keeps the CPU cost to seconds; pool3 (2048-d)
    goes through the same code and is checked per image below and end to end in benchmarks/fid.py.
    At 2048-d the CLI's scipy sqrtm alone takes ~10 s on two cores.
    """
    a, b = image_folders
    assert [p.name for p in list_images(a)][:2] == ["img_00.png", "img_01.jpg"]
    assert len(list_images(a)) == 12  # .PNG, nested/ and .txt left out, as pytorch-fid does
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    cli = subprocess.run(
        [sys.executable, "-m", "pytorch_fid", str(a), str(b), "--device", "cpu", "--dims", "192"]
        + ["--batch-size", "5", "--num-workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    match = re.search(r"FID:\s+(\S+)", cli.stdout)
    assert match, cli.stdout + cli.stderr
    reference = float(match.group(1))
    ours = fid_from_folders(a, b, dims=192, device="cpu", batch_size=8, allow_download=False)
    assert reference > 1e-3  # the stand-in network separates the two folders
    assert abs(ours - reference) / reference < 1e-4


@pytest.mark.slow
def test_pool3_features_match_pytorch_fid_activations(
    torch_home: Path, image_folders: tuple[Path, Path]
) -> None:
    files = list_images(image_folders[0])[:3]
    extractor = InceptionFeatures(2048, device="cpu", batch_size=2, allow_download=False)
    ref = get_activations(files, extractor.model, batch_size=3, dims=2048, num_workers=0)
    ours = features_from_files(extractor, files)
    assert ours.shape == (3, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inception_features_inputs(torch_home: Path, image_folders: tuple[Path, Path]) -> None:
    # dims=64 (first block only) keeps this cheap and exercises the spatial-average path.
    files = list_images(image_folders[0])[:6]
    model = build_fid_inception(64, allow_download=False)
    ref = get_activations(files, model, batch_size=4, dims=64, device="cpu", num_workers=0)
    extractor = InceptionFeatures(64, device="cpu", batch_size=4, allow_download=False)
    ours = features_from_files(extractor, files)
    assert ours.shape == (6, 64) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)

    # In-memory uint8 == float [0, 1] == what the files give; grey is repeated to 3 channels.
    rgb = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(extractor(rgb), ours, rtol=1e-6, atol=1e-7)
    floats = torch.from_numpy(rgb).float() / 255
    np.testing.assert_allclose(extractor(floats), ours, rtol=1e-6, atol=1e-7)
    grey = rgb[:2, :1]
    np.testing.assert_allclose(extractor(grey), extractor(np.repeat(grey, 3, axis=1)), atol=1e-7)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        extractor(rgb[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor(floats * 2 - 1)


def test_explicit_weights_path_takes_precedence(
    torch_home: Path, tmp_path: Path, standin_state: dict[str, torch.Tensor]
) -> None:
    other = dict(standin_state)
    other["Conv2d_1a_3x3.conv.weight"] = standin_state["Conv2d_1a_3x3.conv.weight"] * 2
    explicit = tmp_path / "my_weights.pth"
    torch.save(other, explicit)
    assert hub_weights_path().is_file()
    assert resolve_inception_weights(explicit, allow_download=False) == explicit
    model = build_fid_inception(64, explicit, allow_download=False)
    first_conv = model.blocks[0][0].conv.weight
    assert torch.equal(first_conv, other["Conv2d_1a_3x3.conv.weight"])
    with pytest.raises(InceptionWeightsUnavailable, match="no such file"):
        resolve_inception_weights(tmp_path / "typo.pth")


def test_unloadable_weights_file_is_reported(torch_home: Path, tmp_path: Path) -> None:
    garbage = tmp_path / FID_WEIGHTS_FILENAME
    garbage.write_bytes(b"truncated download")
    wrong_net = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong_net)
    for path in (garbage, wrong_net):
        with pytest.raises(InceptionWeightsUnavailable, match="not loadable") as info:
            build_fid_inception(64, path, allow_download=False)
        _assert_helpful(str(info.value))


def _assert_helpful(message: str) -> None:
    assert FID_WEIGHTS_FILENAME in message
    assert str(hub_weights_path()) in message
    assert "`weights_path`" in message
    assert inception_weights.FID_WEIGHTS_URL in message  # a local server's in the download tests


def test_missing_weights_without_download(empty_torch_home: Path) -> None:
    with pytest.raises(InceptionWeightsUnavailable) as info:
        fid_from_folders(empty_torch_home, empty_torch_home, allow_download=False)
    _assert_helpful(str(info.value))
    assert "allow_download=False" in str(info.value)


# --------------------------------------------------------------------------- download


class _Body(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` for any GET; with ``stall`` it sends the headers and part of the body, then
    waits until the test ends (a connection that goes silent mid-download)."""

    body = b""
    stall: threading.Event | None = None

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body) + (1000 if self.stall else 0)))
        self.end_headers()
        self.wfile.write(self.body)
        self.wfile.flush()
        if self.stall is not None:
            self.stall.wait(30)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """serve(body, stall=False) points the weights URL at a local server sending ``body``."""
    servers, release = [], threading.Event()

    def start(body: bytes, stall: bool = False) -> None:
        handler = type("Handler", (_Body,), {"body": body, "stall": release if stall else None})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        monkeypatch.setattr(inception_weights, "FID_WEIGHTS_URL", f"http://127.0.0.1:{server.server_port}/w.pth")

    yield start
    release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_lands_in_the_hub_cache(empty_torch_home: Path, serve, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"pretend weights " * 1000
    monkeypatch.setattr(inception_weights, "_FID_WEIGHTS_SHA256_PREFIX", hashlib.sha256(body).hexdigest()[:8])
    serve(body)
    assert resolve_inception_weights(allow_download=True, download_timeout=5.0) == hub_weights_path()
    assert hub_weights_path().read_bytes() == body
    assert [p.name for p in hub_weights_path().parent.iterdir()] == [FID_WEIGHTS_FILENAME]


def test_download_with_wrong_hash_is_refused(empty_torch_home: Path, serve) -> None:
    serve(b"not weights")
    with pytest.raises(InceptionWeightsUnavailable, match="invalid hash value"):
        resolve_inception_weights(allow_download=True, download_timeout=5.0)
    assert not any(hub_weights_path().parent.glob("*"))  # the partial file is gone too


def test_failed_download_is_reported_and_leaves_no_file(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a local port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(inception_weights, "FID_WEIGHTS_URL", f"http://127.0.0.1:{port}/w.pth")
    with pytest.raises(InceptionWeightsUnavailable) as info:
        resolve_inception_weights(allow_download=True, download_timeout=1.0)
    _assert_helpful(str(info.value))
    assert "URLError" in str(info.value)
    assert not any(hub_weights_path().parent.glob("*"))


@pytest.mark.parametrize("where", ["no response", "mid-body"])
def test_download_gives_up_after_the_timeout(
    empty_torch_home: Path, serve, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """torch.hub's downloader has no timeout of its own: ours bounds the wait for the response
    and every read of the body, then restores the process's socket default."""
    if where == "no response":  # a listening socket that never accepts: connect works, no reply
        silent = socket.create_server(("127.0.0.1", 0))
        monkeypatch.setattr(inception_weights, "FID_WEIGHTS_URL",
                            f"http://127.0.0.1:{silent.getsockname()[1]}/w.pth")
    else:
        serve(b"x" * 100, stall=True)
    before = socket.getdefaulttimeout()
    start = time.perf_counter()
    with pytest.raises(InceptionWeightsUnavailable, match="timed out"):
        resolve_inception_weights(allow_download=True, download_timeout=0.5)
    assert 0.4 < time.perf_counter() - start < 5.0
    assert socket.getdefaulttimeout() == before
    assert not any(hub_weights_path().parent.glob("*"))
    if where == "no response":
        silent.close()


def test_evaluate_node_names_the_parameter(empty_torch_home: Path, tmp_path: Path) -> None:
    """The metrics speak Python (``weights_path``); the evaluate node turns that into the Kedro
    parameter and the command line, and reports FID as null."""
    from maskdm_pipeline.datasets import FeatureCacheDataset

    params = EvaluateParams(fid={"enabled": True, "dims": 64, "weights_path": None, "batch_size": 8,
                                 "allow_download": False},
                            fd_clf={"enabled": False, "num_samples": 2, "epochs": 1, "seed": 0})
    train = {"images": np.zeros((4, 1, 8, 8), np.uint8)}
    cache = FeatureCacheDataset(path=str(tmp_path / "cache")).load()
    out = inception_reference(train, {"checksum": "0" * 64}, cache, params, TrainerConfig(device="cpu"))
    assert out["available"] is False
    assert "set the parameter `evaluate.fid.weights_path` to its path (e.g. kedro run --params " \
           f"evaluate.fid.weights_path=/path/to/{FID_WEIGHTS_FILENAME})" in out["reason"]
    assert str(hub_weights_path()) in out["reason"] and "allow_download=False" in out["reason"]


def test_fid_from_folders_checks_paths_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an image folder"):
        fid_from_folders(tmp_path / "missing", tmp_path, allow_download=False)
    with pytest.raises(ValueError, match="dims"):
        build_fid_inception(100, allow_download=False)
