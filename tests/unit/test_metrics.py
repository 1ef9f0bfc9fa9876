"""Metrics: the Frechet distance against pytorch-fid's, and fd_clf (its classifier, reference,
real-data floor and final score). The FID Inception path is tests/unit/test_inception.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from sklearn.datasets import load_digits

from maskdm_pipeline import fd_clf
from maskdm_pipeline.metrics import (
    ClassifierFeatures,
    classifier_from_state,
    classifier_state,
    frechet_distance,
    frechet_distance_from_features,
    stats,
    trace_sqrt_product,
    train_classifier,
)

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
