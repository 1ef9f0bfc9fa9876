"""Fine-tuning without masks from the pre-trained weights."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
