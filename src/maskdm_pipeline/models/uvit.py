"""U-ViT backbone with MAE-style token dropping, as MaskDM trains it.

MaskDM (Lei et al., arXiv 2306.11363) trains a pixel-space diffusion model with the masked
denoising score matching objective (MDSM, METHOD.md section 1)::

    L_mdsm = E_{t, x̂0, ε̂} || ε̂ - ε_θ( sqrt(ᾱ_t) x̂0 + sqrt(1 - ᾱ_t) ε̂, t ) ||²

where the hat marks the visible patches. This module is ε_θ: a U-ViT (Bao et al.) whose
encoder only ever sees the visible tokens. The steps follow METHOD.md section 1 (2-6) and
the block / long-skip layout follows METHOD.md section 3:

1. Conv2d patch embedding (kernel = stride = p), tokens in raster order (h, w).
2. One extra *time token*: the sinusoidal embedding of the unscaled integer t (no MLP).
3. A learned absolute positional embedding over all 1 + N tokens, added **before** masking,
   so every surviving token keeps its own position.
4. Masked tokens are removed (the time token is always kept); no mask tokens, no decoder.
5. d//2 in-blocks -> 1 mid-block -> d//2 out-blocks with U-ViT long skips.
6. Final LayerNorm + Linear(D -> p*p*C) per token; the time token's output is discarded.

**Dense-first masking** (``forward(..., dense_blocks=k)``) moves step 4 behind the first k
in-blocks, which then see all 1 + N tokens, as SPRINT does (Park et al., ICLR 2026: two dense
blocks, then 75% of the tokens dropped; shown on U-ViT) and MicroDiT's deferred masking
(Sehwag et al., CVPR 2025: a patch mixer on all tokens before the drop). The long skips of the
dense blocks keep only the visible tokens for the out-blocks that consume them. k = 0 is
MaskDM. It adds no weights: the same model trains with any k and samples with ``mask=None``.

**Class-conditional** (``num_classes=K > 0``): the label enters as one more token, as in U-ViT
(Bao et al., CVPR 2023, ``libs/uvit.py``: an ``nn.Embedding`` row prepended to the tokens), with
U-ViT's convention of one extra row: K + 1 rows, row K the "no label" class (``null_class``) that
label dropout trains and classifier-free guidance's unconditional branch uses (DiT's
``LabelEmbedder`` keeps the same extra row). Two choices differ from U-ViT, both so that an
unconditional model's weights are a conditional model's minus one embedding table:

- the label token gets no positional embedding (U-ViT adds one): a learned position added to a
  learned embedding at a fixed place is a constant every row can absorb, so it adds nothing, and
  ``pos_embed`` keeps its (1, 1 + N, D) shape, conditional or not;
- K = 0 (the default) builds exactly MaskDM's unconditional model, the same parameters and
  state-dict keys (the official code's unused unconditional embedding is not kept).

Masks drop patch tokens only; the label and time tokens are always kept, dense-first or not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskdm_pipeline.devices import to_device
from maskdm_pipeline.models.patching import take_tokens, unpatchify, visible_index

__all__ = ["LABEL_EMBEDDING", "UViT", "check_dense_blocks", "timestep_embedding"]

# The state-dict key of the label table: the one weight a conditional model has and an
# unconditional one lacks (fine-tuning a conditional model from unconditional weights).
LABEL_EMBEDDING = "label_emb.weight"


def check_dense_blocks(dense_blocks: int, depth: int, prefix: str = "") -> int:
    """Return ``dense_blocks`` if a U-ViT of ``depth`` can run it, else raise ValueError.

    Dense-first masking may keep 0 (MaskDM) up to all depth // 2 in-blocks dense; with all of
    them dense the drop happens right before the mid-block. The message names the argument,
    ``dense_blocks=...``; ``prefix`` is where the caller keeps it (``pretrain.mask`` for the
    parameter ``pretrain.mask.dense_blocks``), so the parameter schema can call this too.
    """
    in_blocks = depth // 2
    if (
        isinstance(dense_blocks, bool)
        or not isinstance(dense_blocks, int)
        or not 0 <= dense_blocks <= in_blocks
    ):
        name = f"{prefix}.dense_blocks" if prefix else "dense_blocks"
        raise ValueError(
            f"{name}={dense_blocks!r}: must be an integer from 0 to {in_blocks}, "
            f"the number of in-blocks of a depth-{depth} U-ViT (depth // 2); 0 drops the masked "
            "tokens at the input, as MaskDM does"
        )
    return dense_blocks


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of the time steps ``t`` (B,) -> (B, dim), METHOD.md section 1 step 3.

    ``t`` is used unscaled (integers in [0, T) as in DDPM). The halves are ``[cos, sin]`` in that
    order, frequencies ``max_period ** (-i / half)``; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = t.to(torch.float32)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class Attention(nn.Module):
    """Multi-head self-attention; fused qkv without bias by default (METHOD.md section 3)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, hd)
        # SDPA's default scale is head_dim ** -0.5, the scale METHOD.md section 3 gives.
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, L, D)


class Mlp(nn.Module):
    """Two-layer MLP with GELU, hidden width ``mlp_ratio * dim``."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; an out-block first fuses its long skip (METHOD.md section 3).

    ``x += Attn(LN x); x += MLP(LN x)``; with ``skip=True`` the block starts with
    ``x = Linear(2D -> D)(concat([x, skip]))`` as in U-ViT.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False
    ) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("an out-block needs the matching in-block output as its skip")
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, D)
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class UViT(nn.Module):
    """MaskDM's U-ViT ("MaskedUViT"), ε_θ of the MDSM loss (METHOD.md sections 1 and 3).

    Args:
        img_size: side of the square input image in pixels.
        patch_size: patch side p; ``img_size`` must be divisible by it.
        in_chans: image channels C.
        embed_dim: token width D (must be divisible by ``num_heads``).
        depth: U-ViT depth d: d//2 in-blocks, 1 mid-block, d//2 out-blocks (12 and 13 both
            build 13 blocks, METHOD.md section 3).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over D.
        qkv_bias: bias on the fused qkv projection (off in every MaskDM config but the DWT one).
        num_classes: K, the number of classes of a class-conditional model (labels 0..K-1 and the
            "no label" class K); 0 builds the unconditional model (module docstring).
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self._check_config()  # before any layer is built from these numbers
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        # Index 0 is the time token; it gets a positional embedding like every patch token.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        n_side = depth // 2
        self.in_blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(n_side)
        )
        self.mid_block = Block(embed_dim, num_heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=True) for _ in range(n_side)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self._init_weights()
        # Built after the initialisation above, so that a conditional model starts from the same
        # weights as the unconditional one of the same seed, plus its label table. Row K is the
        # "no label" class; PyTorch's N(0, 1) init, which U-ViT keeps too.
        self.label_emb = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None

    @property
    def conditional(self) -> bool:
        """Whether the model takes a class label (``num_classes > 0``)."""
        return self.num_classes > 0

    @property
    def null_class(self) -> int:
        """The "no label" class, K: the label-dropout and unconditional-guidance label.

        Raises:
            ValueError: the model is unconditional.
        """
        if not self.conditional:
            raise ValueError("an unconditional model has no 'no label' class; it takes no label at all")
        return self.num_classes

    @property
    def extra_tokens(self) -> int:
        """Tokens before the patches: the time token, and the label token when conditional."""
        return 2 if self.conditional else 1

    def _init_weights(self) -> None:
        """Linear: trunc-normal(0.02), bias 0; LayerNorm: 1 / 0; pos-embed: trunc-normal(0.02).

        The patch-embedding conv keeps PyTorch's default init, as in the official code
        (METHOD.md section 3).
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        dense_blocks: int = 0,
    ) -> torch.Tensor:
        """Predict ε (or x0 / v, whatever the loss trains) for the noisy image ``x_t``.

        Args:
            x_t: noisy images (B, C, H, W) with H = W = ``img_size``.
            t: time steps (B,) (or a scalar, broadcast), integers in [0, T), used unscaled.
            mask: optional bool (B, N), True = masked, the same count in every row.
            labels: int64 (B,) classes in [0, K] of a conditional model, K = ``null_class`` ("no
                label"); None gives every sample the "no label" class (the unconditional
                prediction). An unconditional model takes None only.
            dense_blocks: k, the number of in-blocks that see all 1 + N tokens before the
                masked ones are dropped (dense-first masking, module docstring); 0 drops them
                at the input (MaskDM). Irrelevant when ``mask`` is None.

        Returns:
            ``mask is None``: the prediction as an image (B, C, H, W).
            Otherwise: (B, N_visible, p*p*C) for the visible patches in raster order with
            elements (p1 p2 c), directly comparable with ``keep_visible(patchify(eps, p), mask)``
            (the MDSM target, METHOD.md section 1 step 7), whatever ``dense_blocks`` is.

        Raises:
            ValueError: malformed ``x_t``, ``t``, ``mask`` or ``labels``; ``dense_blocks`` outside
                [0, depth // 2] (:func:`check_dense_blocks`).
        """
        t = self._check_inputs(x_t, t, mask)
        check_dense_blocks(dense_blocks, self.depth)
        b = x_t.shape[0]
        x = self.patch_embed(x_t).flatten(2).transpose(1, 2)  # (B, N, D), raster order (h w)
        time_token = timestep_embedding(t, self.embed_dim).to(x.dtype)[:, None]  # (B, 1, D)
        x = torch.cat([time_token, x], dim=1) + self.pos_embed  # (B, 1+N, D)
        if self.label_emb is not None:
            # U-ViT's order: the label token first, then time, then the patches (E = 2 extras).
            label_token = self.label_emb(self._labels(labels, b, x.device)).to(x.dtype)[:, None]  # (B, 1, D)
            x = torch.cat([label_token, x], dim=1)  # (B, 2+N, D)
        elif labels is not None:
            raise ValueError("this model is unconditional (num_classes=0): it takes no labels")
        extras = self.extra_tokens
        keep = None  # (B, E+N_vis) positions of the visible tokens, when masked
        if mask is not None:
            # Prepend "not masked" for the time (and label) token so it always survives
            # (section 1 step 5): masks drop patch tokens only. Where the mask is (the training
            # loop's are drawn on the CPU: no GPU synchronisation).
            keep_extras = torch.zeros(b, extras, dtype=torch.bool, device=mask.device)
            keep = to_device(visible_index(torch.cat([keep_extras, mask], dim=1)), x.device)

        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.in_blocks):
            if i == dense_blocks and keep is not None:
                x, skips = _drop_masked(x, skips, keep)  # (B, E+N_vis, D) from here on
            x = block(x)  # (B, L, D)
            skips.append(x)
        if dense_blocks == len(self.in_blocks) and keep is not None:
            x, skips = _drop_masked(x, skips, keep)  # every in-block was dense
        x = self.mid_block(x)  # (B, L, D)
        for block in self.out_blocks:
            # LIFO: the last in-block's output feeds the first out-block (U-ViT long skips).
            x = block(x, skips.pop())  # (B, L, D)

        x = self.head(self.norm(x))[:, extras:]  # (B, N_vis, p*p*C); drop the time and label tokens
        if mask is None:
            return unpatchify(x, self.patch_size, self.in_chans)  # (B, C, H, W)
        return x

    @property
    def num_blocks(self) -> int:
        """Transformer blocks in all: depth // 2 in + 1 mid + depth // 2 out (METHOD.md section 3)."""
        return len(self.in_blocks) + 1 + len(self.out_blocks)

    def token_blocks(self, visible_tokens: int, dense_blocks: int = 0) -> int:
        """Patch tokens summed over all blocks for one image's forward pass (issue 17 item 2)::

            token_blocks = k * N + (blocks - k) * N_visible

        with k = ``dense_blocks``, N = ``num_patches`` and blocks = ``num_blocks``. The time
        token is not counted, as ``tokens_per_image`` / ``visible_tokens_per_image`` of the
        training loop count patch tokens only; it adds ``blocks`` per image whatever k is.
        Unmasked (``visible_tokens == N``) it is ``blocks * N`` for any k. A cost proxy linear
        in tokens: it counts the per-token layers (qkv, projection, MLP: about 24 D^2 FLOPs per
        token and block) and leaves out attention's scores and weighted sum (4 L D per token for
        L tokens in the block), a share of about L / (6 D): 8% at small-64's 257 tokens, 1% at
        its 33 visible ones, but more than the per-token layers at 4097 tokens (256 px), where
        the count under-states what dense blocks cost.

        Raises:
            ValueError: ``visible_tokens`` outside [1, N]; ``dense_blocks`` as in
                :func:`check_dense_blocks`.
        """
        check_dense_blocks(dense_blocks, self.depth)
        n = self.num_patches
        if isinstance(visible_tokens, bool) or not isinstance(visible_tokens, int) or not (
            1 <= visible_tokens <= n
        ):
            raise ValueError(f"visible_tokens must be an integer from 1 to N={n}, got {visible_tokens!r}")
        return dense_blocks * n + (self.num_blocks - dense_blocks) * visible_tokens

    def _labels(self, labels: torch.Tensor | None, b: int, device: torch.device) -> torch.Tensor:
        """``labels`` as int64 (B,) on ``device``, the "no label" class for None; refused when
        malformed (the embedding would index out of range or silently broadcast)."""
        if labels is None:
            return torch.full((b,), self.num_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device)
        if labels.shape != (b,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of shape ({b},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if b and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = no label); "
                             f"got values from {int(labels.min())} to {int(labels.max())}")
        return labels.long()

    def _check_inputs(
        self, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Raise a clear ValueError on malformed inputs; return ``t`` as a (B,) tensor."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != expected:
            raise ValueError(
                f"x_t must have shape (B, {self.in_chans}, {self.img_size}, {self.img_size}) "
                f"(the positional embedding ties the model to one resolution), got {tuple(x_t.shape)}"
            )
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},) or be a scalar, got {tuple(t.shape)}")
        if mask is None:
            return t
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = masked), got dtype {mask.dtype}")
        if mask.shape != (b, self.num_patches):
            raise ValueError(
                f"mask must have shape (B, N) = ({b}, {self.num_patches}) for a "
                f"{self.grid_size}x{self.grid_size} patch grid, got {tuple(mask.shape)}"
            )
        counts = mask.sum(dim=1)
        if b == 0:
            return t
        if bool((counts != counts[0]).any()):
            raise ValueError(
                "every row of mask must mask the same number of tokens (the visible tokens are "
                f"reshaped to (B, N_visible, D)); got per-row counts {counts.tolist()}"
            )
        if int(counts[0]) == self.num_patches:
            raise ValueError("mask hides every patch; at least one token must stay visible")
        return t

    def _check_config(self) -> None:
        """Refuse an architecture that cannot be built, naming the offending argument."""
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio!r}")
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"num_classes must be a non-negative int (0: unconditional), got {k!r}")


def _drop_masked(
    x: torch.Tensor, skips: list[torch.Tensor], keep: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Keep the visible tokens of ``x`` (B, E+N, D) and of the long skips taken so far, each
    -> (B, E+N_vis, D); ``keep`` (B, E+N_vis) int64 are their positions (the E time / label
    tokens' always among them)."""
    return take_tokens(x, keep), [take_tokens(skip, keep) for skip in skips]
