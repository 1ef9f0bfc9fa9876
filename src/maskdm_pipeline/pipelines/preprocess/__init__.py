"""Preprocessing: raw images -> uint8 arrays (train / held-out) and a dataset card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
