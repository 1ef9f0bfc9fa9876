"""Evaluation: FID (real Inception weights only) and fd_clf of both models, in metrics.json."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
