"""Quality measurement glue shared by the training stages and the evaluate pipeline (pure).

``fd_clf`` is the Frechet distance on a small classifier's penultimate features ("Frechet LeNet
distance" practice); it is always reported with its sample count and never called FID. FID is
computed only with pytorch-fid's real Inception weights (:mod:`maskdm_pipeline.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdm_pipeline import generation
from maskdm_pipeline.metrics import (
    ClassifierFeatures,
    classifier_from_state,
    classifier_state,
    frechet_distance,
    stats,
    train_classifier,
)

# The periodic quality probe during training uses a cheap sampler; the final evaluation uses
# the `sample` parameters. DPM-Solver++ at 20 steps is close to DDIM-250 quality (see benchmarks).
PROBE_SAMPLER = "dpm++2m"
PROBE_STEPS = 20


def fit_feature_classifier(
    images: np.ndarray, labels: np.ndarray | None, *, epochs: int, seed: int
) -> dict[str, Any]:
    """Train the fd_clf classifier on the real training images; a ``weights_only``-safe dict.

    Without labels there is no classifier: the dict says so and fd_clf will be null.
    """
    if labels is None:
        return {"available": False, "reason": "the training data have no labels (fd_clf needs a classifier)"}
    trained = train_classifier(images, labels, epochs=epochs, seed=seed)
    return {"available": True, "reason": None, **classifier_state(trained), "num_train": trained.num_train}


def classifier_features(state: Mapping[str, Any], device: str | torch.device = "cpu") -> ClassifierFeatures | None:
    if not state.get("available", False):
        return None
    return ClassifierFeatures(classifier_from_state(dict(state)), device=device)


class QualityProbe:
    """``probe(step, ema_model) -> {"fd_clf": ..., "fd_clf_n": N}`` for the training loop.

    Picklable (plain tensors and numbers only), so it also works as ``eval_fn`` under DDP, where
    it runs on rank 0. Samples are drawn with a fixed seed at every probe, so the curve moves
    only because the model does.
    """

    def __init__(
        self,
        classifier: Mapping[str, Any],
        reference: tuple[np.ndarray, np.ndarray],
        *,
        schedule: str,
        prediction: str,
        num_samples: int,
        seed: int = 0,
    ):
        self.classifier = dict(classifier)
        self.mu, self.sigma = reference
        self.schedule, self.prediction = schedule, prediction
        self.num_samples, self.seed = num_samples, seed
        self._features: ClassifierFeatures | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_features": None}

    def __call__(self, step: int, model: nn.Module) -> dict[str, Any]:
        device = next(model.parameters()).device
        if self._features is None:
            self._features = classifier_features(self.classifier, device)
        was_training = model.training
        model.eval()
        images, _ = generation.generate(
            model, num_samples=self.num_samples, batch_size=self.num_samples, schedule=self.schedule,
            prediction=self.prediction, sampler=PROBE_SAMPLER, steps=PROBE_STEPS, eta=0.0,
            seed=self.seed, device=device,
        )
        model.train(was_training)
        mu, sigma = stats(self._features(images))
        return {"fd_clf": frechet_distance(mu, sigma, self.mu, self.sigma), "fd_clf_n": self.num_samples}


def reference_and_floor(
    features: ClassifierFeatures, train_images: np.ndarray, heldout_images: np.ndarray, n: int
) -> dict[str, Any]:
    """Reference statistics of the training images, and the real-data floor: fd_clf of ``n``
    held-out real images against them (what a perfect generator would score at this N)."""
    mu, sigma = stats(features(train_images))
    held = heldout_images[:n]
    floor_mu, floor_sigma = stats(features(held))
    return {
        "mu": torch.from_numpy(mu),
        "sigma": torch.from_numpy(sigma),
        "reference_n": int(len(train_images)),
        "floor_fd_clf": frechet_distance(floor_mu, floor_sigma, mu, sigma),
        "floor_n": int(len(held)),
    }
