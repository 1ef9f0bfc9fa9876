"""Quality metrics (pure torch / numpy, no Kedro).

* :func:`frechet_distance` / :func:`stats`: the Frechet distance between Gaussians fitted to
  features, float64, via a Cholesky (or ``eigh``) factor and ``eigvalsh``, not SciPy's ``sqrtm``.
* FID (Heusel et al. 2017): :class:`InceptionFeatures` and :func:`fid_from_folders`, pytorch-fid's
  InceptionV3 with the real ``pt_inception-2015-12-05`` weights only; when they are missing,
  :class:`InceptionWeightsUnavailable` says where to put them. Never faked.
* ``fd_clf``: the Frechet distance on the penultimate features of a small classifier trained on the
  real training data (the "Frechet LeNet distance" practice), for offline runs on labelled data.
  It is not FID and is never called FID.
* :func:`kid_from_features`: the unbiased polynomial-kernel MMD^2 of KID (Binkowski et al. 2018).
"""

from maskdm_pipeline.metrics.classifier import (
    ClassifierConfig,
    ClassifierFeatures,
    SmallConvClassifier,
    TrainedClassifier,
    classifier_from_state,
    classifier_state,
    train_classifier,
)
from maskdm_pipeline.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    stats,
    trace_sqrt_product,
)
from maskdm_pipeline.metrics.inception import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    build_fid_inception,
    fid_from_folders,
    hub_weights_path,
    list_images,
    random_fid_inception_state_dict,
    resolve_inception_weights,
)
from maskdm_pipeline.metrics.kid import KernelDistance, kid_from_features

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "ClassifierConfig",
    "ClassifierFeatures",
    "InceptionFeatures",
    "InceptionWeightsUnavailable",
    "KernelDistance",
    "SmallConvClassifier",
    "TrainedClassifier",
    "build_fid_inception",
    "classifier_from_state",
    "classifier_state",
    "fid_from_folders",
    "frechet_distance",
    "frechet_distance_from_features",
    "hub_weights_path",
    "kid_from_features",
    "list_images",
    "random_fid_inception_state_dict",
    "resolve_inception_weights",
    "stats",
    "train_classifier",
    "trace_sqrt_product",
]
