"""The from-scratch baseline: the fine-tuning recipe from random weights."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
