"""Kernel (MMD) distance with KID's cubic polynomial kernel, on any features (pure numpy).

KID (Binkowski et al. 2018, "Demystifying MMD GANs") is the unbiased squared MMD between Inception
pool3 features under ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets. Unlike FID its
estimator is unbiased, so values at different sample counts are comparable, which suits the small
sample counts of CPU runs. The name KID belongs to Inception features with the real weights; on the
classifier features report it as e.g. ``kd_clf``, as ``fd_clf`` is reported for the Frechet distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["KernelDistance", "kid_from_features", "polynomial_mmd2_unbiased"]


@dataclass(frozen=True)
class KernelDistance:
    """Mean and standard deviation of the unbiased MMD^2 over the subsets."""

    mean: float
    std: float
    num_subsets: int
    subset_size: int


def polynomial_mmd2_unbiased(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Unbiased MMD^2 between equal-sized ``x``, ``y`` ``(m, d)`` with ``(x.y/d + 1)^3``.

    The within-set sums leave out the diagonal (``k(x_i, x_i)``), which is what makes it unbiased.
    """
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid_from_features(
    features_a: ArrayLike | Any,
    features_b: ArrayLike | Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KernelDistance:
    """KID-style kernel distance between two feature sets ``(N, D)``; subsets drawn with ``seed``.

    ``subset_size`` is capped at the smaller set's size (the usual convention of KID code such as
    torch-fidelity). Only call the result KID for Inception pool3 features with the real weights.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) feature sets of equal D; got {a.shape} and {b.shape}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"need at least 2 features per set; got {a.shape[0]} and {b.shape[0]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1; got {num_subsets}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            polynomial_mmd2_unbiased(
                a[rng.choice(a.shape[0], m, replace=False)],
                b[rng.choice(b.shape[0], m, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return KernelDistance(float(values.mean()), float(values.std()), num_subsets, m)
