"""fd_clf, the offline quality metric, in one place: its classifier, its real reference, the
real-data floor, the periodic probe of the training stages and the final score (pure: no Kedro).

``fd_clf`` is the Frechet distance on the penultimate features of a small classifier trained on the
real training images (the "Frechet LeNet distance" practice; DESIGN.md "Decisions already taken").
It is always reported with its sample count and never called FID: its scale depends on the
classifier, so it is only comparable between runs that share it. FID is computed only with
pytorch-fid's real Inception weights (:mod:`maskdm_pipeline.metrics`). The network and its training
live in :mod:`maskdm_pipeline.metrics.classifier` (math); this module decides what the metric is
measured on (which images, which N, against which reference) and turns unavailability into a
reason.

Distances are always ``frechet_distance(samples, reference)`` in that argument order, so the
probe, the floor and the final score are computed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from maskdm_pipeline import generation, workers
from maskdm_pipeline.diffusion import Guidance
from maskdm_pipeline.fileio import from_bytes, to_bytes
from maskdm_pipeline.metrics import (
    ClassifierFeatures,
    classifier_from_state,
    classifier_state,
    frechet_distance,
    stats,
    stats_from_batches,
    train_classifier,
)

# The periodic quality probe during training uses a cheap sampler; the final evaluation uses
# the `sample` parameters. DPM-Solver++ at 20 steps is close to DDIM-250 quality (see benchmarks).
PROBE_SAMPLER = "dpm++2m"
PROBE_STEPS = 20


def reference_split(primary_train: Mapping[str, Any]) -> tuple[Any, Any]:
    """(images, labels) of the whole training split, before any few-shot subset: the real data
    the classifier is trained on and the metrics' reference (FID's too)."""
    if "reference_images" in primary_train:
        return primary_train["reference_images"], primary_train.get("reference_labels")
    return primary_train["images"], primary_train.get("labels")


def fit_feature_classifier(
    images: Any, labels: np.ndarray | None, *, epochs: int, seed: int
) -> dict[str, Any]:
    """Train the fd_clf classifier on real images uint8 ``(N, C, H, W)`` (an array, a tensor or
    memory-mapped shards, read batch by batch) with int labels ``(N,)``.

    Returns a ``weights_only``-safe dict: ``{"available": True, "reason": None, "config",
    "state_dict", "test_accuracy", "num_train"}``, or ``{"available": False, "reason": ...}``
    when ``labels`` is None (unlabelled data have no classifier, and fd_clf is then null).
    """
    if labels is None:
        return {"available": False, "reason": "the training data have no labels (fd_clf needs a classifier)"}
    trained = train_classifier(images, labels, epochs=epochs, seed=seed)
    return {"available": True, "reason": None, **classifier_state(trained), "num_train": trained.num_train}


FEATURE_BATCH = 512  # images a forward pass of the classifier's feature extraction


def _extractor(device: torch.device, state: Mapping[str, Any] | bytes, batch_size: int) -> ClassifierFeatures:
    if isinstance(state, bytes):  # in a worker (fileio.to_bytes: no tensors through /dev/shm)
        state = from_bytes(state)
    return ClassifierFeatures(classifier_from_state(dict(state)), batch_size=batch_size, device=device)


def classifier_features(
    state: Mapping[str, Any], device: str | torch.device = "cpu", *, nproc: int = 1, batch_size: int = FEATURE_BATCH
) -> ClassifierFeatures | workers.ShardedFeatures | None:
    """The feature extractor of a :func:`fit_feature_classifier` dict, or None when unavailable.

    ``nproc > 1`` (``trainer.nproc``): its batches of ``batch_size`` are spread over that many
    local workers, with the same features (:class:`~maskdm_pipeline.workers.ShardedFeatures`).
    The classifier is LeNet-sized, so this pays only for many images: at the final score's
    N = 256 there is one batch, computed here.
    """
    if not state.get("available", False):
        return None
    source = to_bytes(dict(state)) if nproc > 1 else state
    return workers.features_on(_extractor, (source, batch_size), dims=int(state["config"]["feature_dim"]),
                                batch_size=batch_size, nproc=nproc, device=device)


def distance_to_reference(
    features: ClassifierFeatures | workers.ShardedFeatures,
    images: Any,
    mu: NDArray[np.float64],
    sigma: NDArray[np.float64],
) -> float:
    """fd_clf of ``images`` (uint8 ``(N, C, H, W)``) against reference statistics ``(mu, sigma)``.

    Like FID, the estimate is biased upwards by an amount that depends on N, so compare values
    only at the same N (callers fix it and record it beside the value).
    """
    sample_mu, sample_sigma = stats(features(images))
    return frechet_distance(sample_mu, sample_sigma, mu, sigma)


def reference_and_floor(
    features: ClassifierFeatures, train_images: Any, heldout_images: Any, n: int
) -> dict[str, Any]:
    """Reference statistics of the training images, and the real-data floor: fd_clf of ``n``
    held-out real images against them (what a perfect generator would score at this N).

    The images (uint8 ``(N, C, H, W)`` arrays or memory-mapped shards) are read batch by batch
    and the statistics accumulated in bounded memory (:func:`~maskdm_pipeline.metrics.stats_from_batches`).

    Returns ``{"mu": float64 (D,), "sigma": float64 (D, D)`` (torch tensors, for a
    ``weights_only`` file), ``"reference_n", "floor_fd_clf", "floor_n"}``.
    """
    mu, sigma = stats_from_batches(features.batches(train_images))
    held = heldout_images[:n]
    return {
        "mu": torch.from_numpy(mu),
        "sigma": torch.from_numpy(sigma),
        "reference_n": int(len(train_images)),
        "floor_fd_clf": distance_to_reference(features, held, mu, sigma),
        "floor_n": int(len(held)),
    }


def score(
    images: np.ndarray, classifier: Mapping[str, Any], reference: Mapping[str, Any], n: int, *, nproc: int = 1
) -> dict[str, Any]:
    """The final fd_clf of generated images at the fixed N ``n``: ``{"fd_clf", "fd_clf_n",
    "fd_clf_reason"}``, with a null value and the reason when there is no classifier or reference,
    or fewer than ``n`` images. ``nproc``: local worker processes (:func:`classifier_features`)."""
    features = classifier_features(classifier, nproc=nproc)
    if features is None or not reference.get("available", False):
        return {"fd_clf": None, "fd_clf_n": None,
                "fd_clf_reason": reference.get("reason") or classifier.get("reason")}
    if len(images) < n:
        return {"fd_clf": None, "fd_clf_n": None,
                "fd_clf_reason": f"only {len(images)} samples; evaluate.fd_clf.num_samples={n} are needed"}
    value = distance_to_reference(features, images[:n], reference["mu"].numpy(), reference["sigma"].numpy())
    return {"fd_clf": value, "fd_clf_n": n, "fd_clf_reason": None}


UNLABELLED = -1  # the asked class of a sample drawn with the "no label" class, in the samples' ``labels``


def class_accuracy(images: np.ndarray, asked: np.ndarray, classifier: Mapping[str, Any]) -> dict[str, Any]:
    """How often the fd_clf classifier sees the class a sample was asked for (a class-conditional
    model's samples, uint8 ``(N, C, H, W)`` with their asked classes int64 ``(N,)``; samples asked
    for no class, :data:`UNLABELLED`, are left out). The classifier is the one fd_clf's features come
    from, so its own accuracy on held-out real images (``classifier_accuracy``) is the ceiling.

    Returns ``{"class_accuracy", "class_accuracy_n", "class_accuracy_reason",
    "class_accuracy_per_class": {class: accuracy}, "classifier_accuracy"}``, null values and the
    reason without a classifier or without a sample asked for a class.
    """
    asked = np.asarray(asked)
    labelled = asked != UNLABELLED
    reason = None
    if not classifier.get("available", False):
        reason = classifier.get("reason") or "no fd_clf classifier"
    elif not labelled.any():
        reason = "no sample was asked for a class (sample.classes: [none])"
    if reason is not None:
        return {"class_accuracy": None, "class_accuracy_n": None, "class_accuracy_reason": reason,
                "class_accuracy_per_class": None, "classifier_accuracy": classifier.get("test_accuracy")}
    features = ClassifierFeatures(classifier_from_state(dict(classifier)))
    hit = features.predict(images[labelled]) == asked[labelled]
    per_class = {str(int(c)): float(hit[asked[labelled] == c].mean()) for c in np.unique(asked[labelled])}
    return {"class_accuracy": float(hit.mean()), "class_accuracy_n": int(labelled.sum()),
            "class_accuracy_reason": None, "class_accuracy_per_class": per_class,
            "classifier_accuracy": float(classifier["test_accuracy"])}


def guidance_sweep(model: nn.Module, classifier: Mapping[str, Any], reference: Mapping[str, Any], *,
                   scales: Sequence[float], guidance: Guidance, classes: Sequence[int] | None, num_samples: int,
                   schedule: str, sampler: str, steps: int | None, drawn: Mapping[float, np.ndarray] | None = None,
                   **sampling: Any) -> dict[str, Any]:
    """fd_clf and class accuracy of ``num_samples`` samples at each guidance scale w of ``scales``
    (``guidance``'s mode and interval, the same seeds and classes at every w, so the points differ by
    w alone), and the forward-pass FLOPs per sample of each guidance mode at these sampler settings.
    ``sampling``: the other arguments of :func:`~maskdm_pipeline.generation.generate`. ``drawn``:
    samples already drawn with these settings at some w (the sample stage's, uint8 ``(M, C, H, W)``,
    M >= ``num_samples``): their first ``num_samples`` are the images this would draw at that w
    (sample i depends on its seed and index alone), so they are scored instead of drawn again.

    Returns ``{"available": True, "guidance", "guidance_interval", "sparse_mask_ratio",
    "num_samples", "sampler", "steps", "classifier_accuracy", "points": [{"scale", "fd_clf",
    "fd_clf_n", "class_accuracy", "flops_per_sample", "seconds" (None when reused), "reused" (the
    sample stage's images, scored, not drawn again)}], "flops_per_sample": {"none",
    "cfg" (None for an unconditional model), "sparse"}}`` (FLOPs of each mode at the largest w).
    """
    labels = None
    if classes is not None:
        asked = generation.class_labels(range(num_samples), classes).numpy()
        labels = np.where(asked == int(model.num_classes), UNLABELLED, asked)
    settings = {"schedule": schedule, "sampler": sampler, "steps": steps}
    points = []
    for w in scales:
        at = replace(guidance, scale=float(w))
        known = (drawn or {}).get(float(w))
        reused = known is not None and len(known) >= num_samples
        if reused:
            images, timing = known[:num_samples], {"seconds": None}  # drawn by the sample stage, not here
        else:
            images, timing = generation.generate(model, num_samples=num_samples, classes=classes, guidance=at,
                                                 **settings, **sampling)
        point = {"scale": float(w), **score(images, classifier, reference, num_samples)}
        if labels is not None:
            point["class_accuracy"] = class_accuracy(images, labels, classifier)["class_accuracy"]
        points.append({**point, "flops_per_sample": generation.sampling_cost(model, guidance=at, **settings),
                       "seconds": timing["seconds"], "reused": reused})
    top = max(scales)
    modes = {"none": Guidance(), "sparse": replace(guidance, mode="sparse", scale=top)}
    if getattr(model, "conditional", False):
        modes["cfg"] = replace(guidance, mode="cfg", scale=top)
    return {"available": True, "guidance": guidance.mode,
            "guidance_interval": None if guidance.interval is None else list(guidance.interval),
            "sparse_mask_ratio": guidance.sparse_mask_ratio, "num_samples": num_samples, "sampler": sampler,
            "steps": steps, "classifier_accuracy": classifier.get("test_accuracy"), "points": points,
            "flops_per_sample": {name: generation.sampling_cost(model, guidance=g, **settings)
                                 for name, g in modes.items()} | ({} if "cfg" in modes else {"cfg": None})}


class QualityProbe:
    """``probe(step, ema_model) -> {"fd_clf": ..., "fd_clf_n": N}`` for the training loop.

    Picklable (plain tensors and numbers only), so it also works as ``eval_fn`` under DDP, where
    it runs on rank 0. Samples are drawn with a fixed seed at every probe, so the curve moves
    only because the model does. ``classes``: a class-conditional model's classes, drawn alike
    and unguided (the final samples' guidance is the sample stage's choice, not training's).
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
        classes: tuple[int, ...] | None = None,
    ):
        self.classes = classes
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
            seed=self.seed, device=device, classes=self.classes,
        )
        model.train(was_training)
        value = distance_to_reference(self._features, images, self.mu, self.sigma)
        return {"fd_clf": value, "fd_clf_n": self.num_samples}
