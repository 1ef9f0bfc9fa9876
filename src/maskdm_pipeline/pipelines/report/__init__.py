"""The final report: Markdown, quality-vs-compute curves and samples side by side."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
