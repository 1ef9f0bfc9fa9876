"""Sampling from the EMA weights of the fine-tuned MaskDM model and of the baseline."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
