"""Metrics: Frechet distance vs pytorch-fid, the pytorch-fid Inception loading path, fd_clf, KID.

Everything runs offline. The real Inception weights are not needed: a STAND-IN file with the same
keys and shapes (random weights, seed 0) goes into a temporary torch hub cache, which exercises the
real resolution and loading code and lets us compare against ``python -m pytorch_fid`` itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
from sklearn.datasets import load_digits

from maskdm_pipeline import fd_clf
from maskdm_pipeline.metrics import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    ClassifierFeatures,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    build_fid_inception,
    classifier_from_state,
    classifier_state,
    fid_from_folders,
    frechet_distance,
    frechet_distance_from_features,
    hub_weights_path,
    kid_from_features,
    list_images,
    random_fid_inception_state_dict,
    resolve_inception_weights,
    stats,
    trace_sqrt_product,
    train_classifier,
)
from maskdm_pipeline.metrics import inception as inception_module

# --------------------------------------------------------------------------- Frechet distance


def _random_stats(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``n`` correlated samples: PSD, and singular when ``n <= d``."""
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    feats = rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)
    return stats(feats)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("d", "n"), [(64, 500), (64, 20), (512, 1500)])
def test_frechet_distance_matches_pytorch_fid(d: int, n: int) -> None:
    # (64, 20): rank-deficient covariances, the usual case of small-sample FIDs.
    # 2048-d is compared end to end against the pytorch-fid CLI below and in benchmarks/fid.py.
    rng = np.random.default_rng(d + n)
    mu1, s1 = _random_stats(rng, d, n)
    mu2, s2 = _random_stats(rng, d, n)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert isinstance(ours, float)
    assert abs(ours - ref) / abs(ref) < 1e-6


def test_trace_sqrt_product_cholesky_and_eigh_paths_agree() -> None:
    rng = np.random.default_rng(7)
    _, pd = _random_stats(rng, 48, 400)  # positive definite: the Cholesky path
    _, other = _random_stats(rng, 48, 400)
    _, singular = _random_stats(rng, 48, 10)  # rank 9: Cholesky fails, the eigh path
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(singular)
    # Singular: ~39 null directions, each worth sqrt(eps)-level noise in either route.
    for s1, rel in ((pd, 1e-10), (singular, 1e-6)):
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2), the textbook route
        expected = np.sqrt(np.clip(np.linalg.eigvalsh(root @ other @ root), 0, None)).sum()
        assert trace_sqrt_product(s1, other) == pytest.approx(expected, rel=rel)


def test_frechet_distance_identical_symmetric_and_torch_inputs() -> None:
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 32, 100)
    mu2, s2 = _random_stats(rng, 32, 100)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    ab, ba = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert ab > 0.1
    assert abs(ab - ba) < 1e-9 * ab
    as_torch = frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)))
    assert abs(as_torch - ab) < 1e-4 * ab
    # A pure mean shift of 3 in every one of 32 dims: exactly 32 * 9.
    assert frechet_distance(mu1, s1, mu1 + 3.0, s1) == pytest.approx(288.0, rel=1e-9)


def test_stats_and_features_helper() -> None:
    feats = np.random.default_rng(1).standard_normal((50, 8))
    mu, sigma = stats(torch.from_numpy(feats).float())
    assert mu.dtype == np.float64 and sigma.shape == (8, 8)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-6)
    assert frechet_distance_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="2-D"):
        stats(feats[0])
    with pytest.raises(ValueError, match="at least 2"):
        stats(feats[:1])
    with pytest.raises(ValueError, match="NaN"):
        stats(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="widths"):
        frechet_distance_from_features(feats, feats[:, :4])


def test_frechet_distance_rejects_bad_shapes() -> None:
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="different lengths"):
        frechet_distance(mu, s, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, np.eye(3), mu, s)
    with pytest.raises(ValueError, match="1-D"):
        frechet_distance(mu[None], s, mu[None], s)
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(mu, np.triu(np.ones((4, 4))), mu, s)


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


def test_pytorch_fid_constants_match_and_pipelines_load_without_it() -> None:
    import pytorch_fid.fid_score
    import pytorch_fid.inception

    assert inception_module.FID_WEIGHTS_URL == pytorch_fid.inception.FID_WEIGHTS_URL
    assert inception_module.IMAGE_EXTENSIONS == set(pytorch_fid.fid_score.IMAGE_EXTENSIONS)
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


def test_pool3_features_match_pytorch_fid_activations(
    torch_home: Path, image_folders: tuple[Path, Path]
) -> None:
    files = list_images(image_folders[0])[:3]
    extractor = InceptionFeatures(2048, device="cpu", batch_size=2, allow_download=False)
    ref = get_activations(files, extractor.model, batch_size=3, dims=2048, num_workers=0)
    ours = extractor.from_files(files)
    assert ours.shape == (3, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_inception_features_inputs(torch_home: Path, image_folders: tuple[Path, Path]) -> None:
    # dims=64 (first block only) keeps this cheap and exercises the spatial-average path.
    files = list_images(image_folders[0])[:6]
    model = build_fid_inception(64, allow_download=False)
    ref = get_activations(files, model, batch_size=4, dims=64, device="cpu", num_workers=0)
    extractor = InceptionFeatures(64, device="cpu", batch_size=4, allow_download=False)
    ours = extractor.from_files(files)
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
    assert "evaluate.fid.weights_path" in message
    assert FID_WEIGHTS_URL in message


def test_missing_weights_without_download(empty_torch_home: Path) -> None:
    with pytest.raises(InceptionWeightsUnavailable) as info:
        fid_from_folders(empty_torch_home, empty_torch_home, allow_download=False)
    _assert_helpful(str(info.value))
    assert "allow_download=False" in str(info.value)


def test_failed_download_is_reported_and_leaves_no_file(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never touch the network from a test: the download is replaced by an offline failure.
    def offline(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(inception_module.urllib.request, "urlopen", offline)
    with pytest.raises(InceptionWeightsUnavailable) as info:
        resolve_inception_weights(allow_download=True, download_timeout=1.0)
    _assert_helpful(str(info.value))
    assert "URLError" in str(info.value)
    assert not any(hub_weights_path().parent.glob("*"))


def test_download_with_wrong_hash_is_refused(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(
        inception_module.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not weights")
    )
    with pytest.raises(InceptionWeightsUnavailable, match="sha256"):
        resolve_inception_weights(allow_download=True)
    assert not any(hub_weights_path().parent.glob("*"))


def test_fid_from_folders_checks_paths_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an image folder"):
        fid_from_folders(tmp_path / "missing", tmp_path, allow_download=False)
    with pytest.raises(ValueError, match="dims"):
        build_fid_inception(100, allow_download=False)


# --------------------------------------------------------------------------- fd_clf classifier


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 digits (ship with the wheel), as uint8 (N, 1, 8, 8)."""
    data = load_digits()
    images = np.clip(data.images * 16, 0, 255).astype(np.uint8)[:, None]
    return images, data.target


@pytest.fixture(scope="module")
def trained(digits: tuple[np.ndarray, np.ndarray]):
    images, labels = digits
    return train_classifier(images, labels, epochs=6, seed=0)


def test_classifier_learns_digits(trained, digits: tuple[np.ndarray, np.ndarray]) -> None:
    assert trained.test_accuracy > 0.9
    assert trained.num_test == 180 and trained.num_train == len(digits[0]) - 180


def test_classifier_is_deterministic_given_seed(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits[0][:600], digits[1][:600]
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    runs = [train_classifier(images, labels, epochs=1, seed=s) for s in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads  # and so is its thread count
    first, again, other = (r.model.state_dict() for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fd_clf_features_and_distances(trained, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits
    extractor = ClassifierFeatures(trained)
    feats = extractor(images[:100])
    assert feats.shape == (100, 128) and feats.dtype == np.float64
    real_a, real_b = images[:400], images[400:800]
    noise = np.random.default_rng(0).integers(0, 256, real_b.shape, dtype=np.uint8)
    # ~0 up to the sqrt(eps)-level rounding of near-null directions (see trace_sqrt_product).
    scale = np.trace(stats(extractor(real_a))[1])

    def fd(samples: np.ndarray, reference: np.ndarray) -> float:
        return fd_clf.distance_to_reference(extractor, samples, *stats(extractor(reference)))

    assert abs(fd(real_a, real_a)) < 1e-7 * scale
    real_vs_real, real_vs_noise = fd(real_b, real_a), fd(noise, real_a)
    assert real_vs_noise > 10 * real_vs_real > 0
    # float [0, 1] input gives the same features as uint8
    np.testing.assert_allclose(extractor(images[:20] / 255.0), feats[:20], rtol=1e-5, atol=1e-6)


def test_classifier_rejects_other_shapes(trained, digits: tuple[np.ndarray, np.ndarray]) -> None:
    extractor = ClassifierFeatures(trained)
    images = digits[0][:4]
    with pytest.raises(ValueError, match="trained on images"):
        extractor(np.repeat(images, 3, axis=1))
    with pytest.raises(ValueError, match="trained on images"):
        extractor(np.zeros((4, 1, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor(images / 127.5 - 1.0)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(images, np.zeros(3, np.int64))


def test_classifier_round_trips_through_weights_only_load(
    trained, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "classifier.pt"
    torch.save(classifier_state(trained), path)
    state = torch.load(path, weights_only=True)
    assert state["test_accuracy"] == pytest.approx(trained.test_accuracy)
    rebuilt = classifier_from_state(state)
    images = digits[0][:50]
    np.testing.assert_array_equal(
        ClassifierFeatures(rebuilt)(images), ClassifierFeatures(trained)(images)
    )
    with pytest.raises(ValueError, match="classifier_state"):
        classifier_from_state({"state_dict": {}})


def test_fd_clf_reference_floor_and_final_score(trained, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits
    state = {"available": True, **classifier_state(trained)}
    features = fd_clf.classifier_features(state)
    reference = {"available": True, **fd_clf.reference_and_floor(features, images[:600], images[600:], 100)}
    assert (reference["reference_n"], reference["floor_n"]) == (600, 100)
    assert reference["floor_fd_clf"] == fd_clf.distance_to_reference(
        features, images[600:700], reference["mu"].numpy(), reference["sigma"].numpy())
    scored = fd_clf.score(images[600:800], state, reference, 100)
    assert scored == {"fd_clf": reference["floor_fd_clf"], "fd_clf_n": 100, "fd_clf_reason": None}
    assert fd_clf.score(images[:50], state, reference, 100)["fd_clf_reason"].startswith("only 50 samples")
    unlabelled = fd_clf.fit_feature_classifier(images, None, epochs=1, seed=0)
    assert not unlabelled["available"]
    missing = fd_clf.score(images, unlabelled, {"available": False}, 100)
    assert missing == {"fd_clf": None, "fd_clf_n": None, "fd_clf_reason": unlabelled["reason"]}


# --------------------------------------------------------------------------- KID-style distance


def test_kid_unbiased_near_zero_for_same_distribution() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    same = kid_from_features(a, b, num_subsets=20, subset_size=100)
    shifted = kid_from_features(a, b + 0.5, num_subsets=20, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * max(abs(same.mean), same.std)
    assert kid_from_features(a, b, num_subsets=3, subset_size=10_000).subset_size == 300
    with pytest.raises(ValueError, match="equal D"):
        kid_from_features(a, b[:, :3])
