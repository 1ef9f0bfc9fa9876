"""The feature space of ``fd_clf``: a small classifier trained on the real data (pure torch).

Without the Inception weights (offline) there is no FID. For labelled data the pipeline still
measures sample quality the way small-image papers do with the "Frechet LeNet distance": train a
small CNN classifier on the real training images, take its penultimate-layer features, and compute
the Frechet distance (Heusel et al. 2017's formula, :func:`~maskdm_pipeline.metrics.frechet.frechet_distance`)
between Gaussians fitted to real and generated features. The number is called ``fd_clf``, always at
a fixed sample count, and is NEVER called FID: its scale depends on this classifier, so it is only
comparable between runs that share the classifier (same data, seed and config). What the metric
is measured on (reference, floor, N, the training probe) is :mod:`maskdm_pipeline.fd_clf`.

The trained classifier is saved as a plain dict (``classifier_state``) that ``torch.save`` writes
and ``torch.load(..., weights_only=True)`` reads back, so the pipeline can cache it as a catalog
entry and rebuild it with :func:`classifier_from_state`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

__all__ = [
    "ClassifierConfig",
    "ClassifierFeatures",
    "SmallConvClassifier",
    "TrainedClassifier",
    "classifier_from_state",
    "classifier_state",
    "train_classifier",
]


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild the network; ints only, so it survives ``weights_only`` loads."""

    in_chans: int
    height: int
    width: int
    num_classes: int
    channels: int = 16  # first conv stage; the second has twice as many
    feature_dim: int = 128  # penultimate layer = the fd_clf feature space


class SmallConvClassifier(nn.Module):
    """LeNet-sized CNN: two conv stages with 2x2 max-pooling, a ``feature_dim`` layer, logits.

    Small on purpose: it trains in seconds on 16x16 digits on two CPU cores, and a LeNet-style
    penultimate layer is what the Frechet LeNet distance uses.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.conv = nn.Sequential(
            nn.Conv2d(config.in_chans, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # Pool to at most 4x4 so the head's size does not grow with the resolution; at 8x8 input
        # the conv output is already 2x2 and stays so.
        pooled = (max(1, min(4, config.height // 4)), max(1, min(4, config.width // 4)))
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.fc = nn.Linear(2 * c * pooled[0] * pooled[1], config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> penultimate features (B, feature_dim), after the ReLU."""
        h = self.pool(self.conv(x))  # (B, 2c, h', w')
        return F.relu(self.fc(h.flatten(1)))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [-1, 1]; the same scale for both paths."""
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div(255)
    elif images.is_floating_point():
        x = images.to(torch.float32)
        # [-1, 1] samples passed as they come from a sampler would give a silently wrong fd_clf.
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError(
                f"float images must be in [0, 1]; got [{float(x.min()):.3g}, {float(x.max()):.3g}]"
                " (map [-1, 1] samples with (x + 1) / 2)"
            )
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1]; got dtype {images.dtype}")
    return x.mul(2).sub(1)


def _rows(images: Any, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of any uint8 array-like (a tensor, an array, memory-mapped shards),
    normalised: the batch is all that is ever converted to float."""
    if isinstance(images, torch.Tensor):
        return _normalise(images[indices])
    return _normalise(torch.from_numpy(np.ascontiguousarray(images[indices.numpy()])))


def iter_batches(images: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """``images[a:b]`` as tensors, in order: consecutive slices of a tensor, an array or
    memory-mapped shards, so a reader holds one batch at a time."""
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        yield batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))


def _check_images(images: Any, config: ClassifierConfig) -> None:
    expected = (config.in_chans, config.height, config.width)
    if len(images.shape) != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"the classifier was trained on images (N, {expected[0]}, {expected[1]}, {expected[2]});"
            f" got shape {tuple(images.shape)}. fd_clf needs samples at the training resolution "
            "and channel count."
        )


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run with ``num_threads`` intra-op threads, restoring the caller's setting afterwards."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class TrainedClassifier:
    """A trained :class:`SmallConvClassifier` and its accuracy on the held-out split."""

    model: SmallConvClassifier
    test_accuracy: float
    num_train: int
    num_test: int


def train_classifier(
    images: NDArray[Any] | torch.Tensor,
    labels: NDArray[Any] | torch.Tensor,
    *,
    num_classes: int | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 2e-3,
    test_fraction: float = 0.1,
    seed: int = 0,
    channels: int = 16,
    feature_dim: int = 128,
    num_threads: int | None = 1,
) -> TrainedClassifier:
    """Train the fd_clf classifier on real images ``(N, C, H, W)`` (uint8, or float in [0, 1]).

    Deterministic on CPU for a given ``seed`` (and thread count): the split, the initialisation and
    the batch order come from seeded generators, and the global RNG is left as it was. A random
    ``test_fraction`` of the data is held out and the accuracy on it is returned, so a report can
    show that the feature space separates the classes (a classifier at chance gives a meaningless
    fd_clf). Adam, cross-entropy, no augmentation: a few epochs take seconds on 16x16 digits.

    ``num_threads`` (default 1; ``None`` keeps torch's setting) is the intra-op thread count while
    training. The ops of so small a network are too short to split: measured on two cores busy
    with other jobs, 5 epochs on 4,500 16x16 digits took 2.2 s on one thread and 15-24 s on two
    (each op waits for the thread the scheduler took away); on idle cores the two are similar.
    """
    y_all = torch.as_tensor(np.asarray(labels)).long()
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {shape}")
    if y_all.shape != (shape[0],):
        raise ValueError(f"labels must be (N,) = ({shape[0]},); got {tuple(y_all.shape)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    if y_all.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    n_classes = int(y_all.max()) + 1 if num_classes is None else num_classes
    if int(y_all.max()) >= n_classes:
        raise ValueError(f"labels go up to {int(y_all.max())} but num_classes={n_classes}")
    n = shape[0]
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise ValueError(f"too few images ({n}) to hold out a test split")

    config = ClassifierConfig(
        in_chans=int(shape[1]),
        height=int(shape[2]),
        width=int(shape[3]),
        num_classes=n_classes,
        channels=channels,
        feature_dim=feature_dim,
    )
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    y_train = y_all[train_idx]

    # Seed the init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallConvClassifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with _torch_threads(num_threads):
        for _ in range(epochs):
            order = torch.randperm(train_idx.shape[0], generator=generator)
            for start in range(0, order.shape[0], batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(model(_rows(images, train_idx[idx])), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat(
                [model(_rows(images, test_idx[i : i + 1024])).argmax(1) for i in range(0, n_test, 1024)]
            )
    accuracy = float((pred == y_all[test_idx]).float().mean())
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainedClassifier(model, accuracy, num_train=n - n_test, num_test=n_test)


def classifier_state(
    classifier: SmallConvClassifier | TrainedClassifier,
) -> dict[str, Any]:
    """A ``torch.save``-able dict ``{"config", "state_dict"[, "test_accuracy"]}``.

    Only ints, floats, strings and tensors, so ``torch.load(..., weights_only=True)`` reads it.
    """
    model = classifier.model if isinstance(classifier, TrainedClassifier) else classifier
    state: dict[str, Any] = {
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if isinstance(classifier, TrainedClassifier):
        state["test_accuracy"] = classifier.test_accuracy
    return state


def classifier_from_state(state: dict[str, Any]) -> SmallConvClassifier:
    """Rebuild the classifier from :func:`classifier_state`'s dict (eval mode, no gradients)."""
    try:
        config = ClassifierConfig(**state["config"])
        weights = state["state_dict"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a classifier_state dict: {exc}") from exc
    model = SmallConvClassifier(config)
    model.load_state_dict(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ClassifierFeatures:
    """Images ``(N, C, H, W)`` (uint8, or float in [0, 1]) -> penultimate features, float64.

    The feature extractor behind ``fd_clf``. Images must have the channel count and resolution the
    classifier was trained at (``ValueError`` otherwise).
    """

    def __init__(
        self,
        classifier: SmallConvClassifier | TrainedClassifier,
        *,
        batch_size: int = 512,
        device: str | torch.device = "cpu",
    ) -> None:
        model = classifier.model if isinstance(classifier, TrainedClassifier) else classifier
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.batch_size = batch_size

    @property
    def dims(self) -> int:
        return self.config.feature_dim

    @torch.inference_mode()
    def batches(self, images: Any) -> Iterator[NDArray[np.float64]]:
        """Features ``(b, feature_dim)`` float64 batch by batch, for readers that stream (a
        memory-mapped set is never converted whole)."""
        _check_images(images, self.config)
        for batch in iter_batches(images, self.batch_size):
            yield self.model.features(_normalise(batch.to(self.device))).cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def predict(self, images: Any) -> NDArray[np.int64]:
        """The predicted class of each image ``(N, C, H, W)`` (the logits' argmax): int64 ``(N,)``."""
        _check_images(images, self.config)
        parts = [self.model(_normalise(batch.to(self.device))).argmax(1).cpu().numpy()
                 for batch in iter_batches(images, self.batch_size)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)

    def __call__(self, images: Any) -> NDArray[np.float64]:
        """Features of all ``images`` ``(N, C, H, W)`` (a tensor, an array or shards): ``(N, feature_dim)``."""
        parts = list(self.batches(images))
        return np.concatenate(parts) if parts else np.empty((0, self.dims), dtype=np.float64)
