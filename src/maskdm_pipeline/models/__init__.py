"""U-ViT backbone with MAE-style token dropping (pure torch, no Kedro)."""

from maskdm_pipeline.models.presets import PRESETS, build_uvit, count_parameters
from maskdm_pipeline.models.uvit import UViT, check_dense_blocks

__all__ = ["PRESETS", "UViT", "build_uvit", "check_dense_blocks", "count_parameters"]
