"""Patch <-> image conversions shared by the model, the losses and the masks.

Token order is raster order over the patch grid (h, w) and the element order inside a
token is (p1, p2, c), the order METHOD.md section 1 step 7 gives for the target.
"""

from __future__ import annotations

import torch
from einops import rearrange


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p) * (W/p)."""
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); the grid is assumed square."""
    n = tokens.shape[1]
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"unpatchify expects a square patch grid, got {n} tokens")
    return rearrange(
        tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=side, p1=patch_size, p2=patch_size, c=channels
    )


def keep_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop masked tokens MAE-style: (B, N, D) with mask (B, N) True = masked -> (B, N_vis, D).

    Every row of ``mask`` must mask the same number of tokens (all mask generators guarantee
    it); the reshape below relies on that and keeps the raster order of the visible tokens.
    """
    b, n, d = tokens.shape
    visible = ~mask
    n_vis = int(visible[0].sum())
    return tokens[visible].reshape(b, n_vis, d)
