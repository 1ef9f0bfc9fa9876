"""Experiments that measure the paper's claims with this pipeline (see docs/results.md)."""
