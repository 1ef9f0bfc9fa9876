"""Masked pre-training (MDSM on the visible patches only)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
