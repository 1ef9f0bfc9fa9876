"""Patch <-> image conversions shared by the model, the losses and the masks.

Token order is raster order over the patch grid (h, w) and the element order inside a
token is (p1, p2, c), the order METHOD.md section 1 step 7 gives for the target.
"""

from __future__ import annotations

import torch
from einops import rearrange

from maskdm_pipeline.devices import to_device


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


def visible_index(mask: torch.Tensor) -> torch.Tensor:
    """The positions of the visible tokens: bool ``mask`` (B, N), True = masked -> int64
    (B, N_vis), each row ascending (raster order), on ``mask``'s device.

    Every row must mask the same number of tokens (all mask generators guarantee it). Computed
    where the mask is: the training loop draws masks on the CPU, so the GPU never waits for
    this count (a GPU mask would make the host wait for the count, the count first).
    """
    b = mask.shape[0]
    visible = ~mask
    n_vis = int(visible[0].sum())
    return visible.nonzero()[:, 1].reshape(b, n_vis)  # nonzero lists (row, column) in row-major order


def take_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, N, D) at ``index`` (B, K) int64 on ``tokens``' device -> (B, K, D)."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def keep_visible(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop masked tokens MAE-style: (B, N, D) with mask (B, N) True = masked -> (B, N_vis, D).

    The visible tokens keep their raster order. ``mask`` may live on another device than
    ``tokens`` (the CPU: :func:`visible_index`); the values are copies either way, so the result
    and its gradient are bitwise those of boolean indexing ``tokens[~mask]``.
    """
    index = to_device(visible_index(mask), tokens.device)
    return take_tokens(tokens, index)
