"""Quality metrics (torch / numpy, no Kedro).

* :func:`frechet_distance` / :func:`stats`: the Frechet distance between Gaussians fitted to
  features, float64, via a Cholesky (or ``eigh``) factor and ``eigvalsh``, not SciPy's ``sqrtm``.
* FID (Heusel et al. 2017): :class:`InceptionFeatures` (the feature math) with pytorch-fid's
  InceptionV3 and the real ``pt_inception-2015-12-05`` weights only (``inception_weights``: lookup,
  download, loading; when they are missing, :class:`InceptionWeightsUnavailable` says where to put
  them; never faked), and :func:`fid_from_folders` (``fid_folders``: the folder I/O).
* ``fd_clf``'s feature space: :class:`ClassifierFeatures`, the penultimate features of a small
  classifier trained on the real training data (the "Frechet LeNet distance" practice), for offline
  runs on labelled data. It is not FID and is never called FID; :mod:`maskdm_pipeline.fd_clf`
  measures it.
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
from maskdm_pipeline.metrics.fid_folders import (
    IMAGE_EXTENSIONS,
    features_from_files,
    fid_from_folders,
    list_images,
)
from maskdm_pipeline.metrics.frechet import (
    frechet_distance,
    frechet_distance_from_features,
    stats,
    stats_from_batches,
    trace_sqrt_product,
)
from maskdm_pipeline.metrics.inception import InceptionFeatures
from maskdm_pipeline.metrics.inception_weights import (
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    InceptionWeightsUnavailable,
    build_fid_inception,
    hub_weights_path,
    resolve_inception_weights,
)

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "IMAGE_EXTENSIONS",
    "ClassifierConfig",
    "ClassifierFeatures",
    "InceptionFeatures",
    "InceptionWeightsUnavailable",
    "SmallConvClassifier",
    "TrainedClassifier",
    "build_fid_inception",
    "classifier_from_state",
    "classifier_state",
    "features_from_files",
    "fid_from_folders",
    "frechet_distance",
    "frechet_distance_from_features",
    "hub_weights_path",
    "list_images",
    "resolve_inception_weights",
    "stats",
    "stats_from_batches",
    "train_classifier",
    "trace_sqrt_product",
]
