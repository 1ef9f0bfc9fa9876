"""Registry of U-ViT sizes (METHOD.md section 3) and ``build_uvit``.

Each preset is the set of ``UViT`` constructor arguments. The paper-scale ones reproduce the
analytic parameter counts of METHOD.md section 3 (checked in ``tests/unit/test_models.py``)::

    preset      res  C  p  D    heads  blocks (depth)  params
    tiny         16  1  4   96    4     5 (4)            0.60 M  CPU quick start
    small-64     64  3  4  512    8    13 (13)          44.29 M  CelebA 64 ablations
    small-128   128  3  4  512    8    13 (13)          44.69 M  inferred, no official config
    small-256   256  3  4  512    8    13 (13)          46.26 M  transfer runs
    base-256    256  3  4  768   12    13 (12)         102.42 M  MaskDM-B, CelebA-HQ / LSUN

``tiny`` is sized for 16x16 single-channel digits (DESIGN.md quick start); override
``img_size`` / ``in_chans`` for other data, e.g. ``build_uvit("tiny", img_size=32, in_chans=3)``.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any

from torch import nn

from maskdm_pipeline.models.uvit import UViT

__all__ = ["PRESETS", "build_uvit", "count_parameters"]

_SMALL: dict[str, Any] = {
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 512,
    "depth": 13,
    "num_heads": 8,
    "mlp_ratio": 4.0,
    "qkv_bias": False,
}

# MappingProxyType keeps callers from editing a preset in place by accident;
# build_uvit copies the arguments before applying overrides.
PRESETS: dict[str, MappingProxyType[str, Any]] = {
    "tiny": MappingProxyType(
        {
            "img_size": 16,
            "patch_size": 4,
            "in_chans": 1,
            "embed_dim": 96,
            "depth": 4,
            "num_heads": 4,
            "mlp_ratio": 4.0,
            "qkv_bias": False,
        }
    ),
    "small-64": MappingProxyType({"img_size": 64, **_SMALL}),
    "small-128": MappingProxyType({"img_size": 128, **_SMALL}),
    "small-256": MappingProxyType({"img_size": 256, **_SMALL}),
    "base-256": MappingProxyType(
        {
            "img_size": 256,
            "patch_size": 4,
            "in_chans": 3,
            "embed_dim": 768,
            # The official config says depth 12; with d//2 + 1 + d//2 that is 13 blocks.
            "depth": 12,
            "num_heads": 12,
            "mlp_ratio": 4.0,
            "qkv_bias": False,
        }
    ),
}

_UVIT_ARGS: tuple[str, ...] = tuple(inspect.signature(UViT.__init__).parameters)[1:]


def build_uvit(preset: str, **overrides: Any) -> UViT:
    """Build the U-ViT named ``preset``, with any constructor argument overridden.

    Raises:
        ValueError: ``preset`` is not in ``PRESETS``, or an override key is not a ``UViT``
            constructor argument (both messages list the valid names).
    """
    if preset not in PRESETS:
        raise ValueError(
            f"model.preset={preset!r} is not a known preset; valid presets: {sorted(PRESETS)}"
        )
    unknown = sorted(set(overrides) - set(_UVIT_ARGS))
    if unknown:
        raise ValueError(
            f"unknown model override(s) {unknown} for preset {preset!r}; "
            f"valid keys: {list(_UVIT_ARGS)}"
        )
    return UViT(**{**PRESETS[preset], **overrides})


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (works on the 'meta' device too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
