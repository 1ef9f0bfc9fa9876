"""Model FLOPs of the U-ViT, counted from its architecture: the numerator of model FLOPs
utilisation (MFU, Chowdhery et al., PaLM, 2022, appendix B: the FLOPs the model needs, whatever
the implementation recomputes).

Only matrix products are counted, two FLOPs per multiply-add, as torch's own counter
(``torch.utils.flop_counter.FlopCounterMode``) counts them; norms, activations, residual adds
and the softmax are left out (a few percent, and not matrix-unit work). For one image whose
blocks see L tokens (the E extra tokens included: time, and the label of a class-conditional
model), with width D, MLP width F = int(D * mlp_ratio) and P = p * p * C values per patch::

    patch embedding (conv, all N patches)   2 N P D
    per block: qkv, projection              8 L D^2
               scores Q K^T and weights V   4 L^2 D
               MLP                          4 L D F
    long skip of an out-block               4 L D^2
    head (every token, the extras too)      2 L P D

A training step costs three times the forward pass (the backward pass computes the gradients
of the inputs and of the weights, each as costly as the forward: the MFU convention). Masked
pre-training drops the masked tokens at the input (MaskDM) or after ``dense_blocks`` in-blocks
(dense-first masking): those blocks see all E + N tokens, the others E + N_visible. The one
counter of the project: the MFU numerator (benchmarks/gpu.py) and the cost of each guidance mode
(``diffusion.guidance.sampling_flops``) both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from maskdm_pipeline.models.uvit import UViT, check_dense_blocks

__all__ = ["TRAINING_MULTIPLIER", "UViTFlops", "uvit_flops"]

TRAINING_MULTIPLIER = 3  # forward + backward (inputs' and weights' gradients), per image


@dataclass(frozen=True)
class UViTFlops:
    """Forward matrix-product FLOPs of one image, by part (see the module docstring)."""

    patch_embed: int  # the convolution, 2 N P D
    linear: int  # qkv, projection, MLP and long skips of every block
    attention: int  # the two L x L products of every block, 4 L^2 D
    head: int  # the final linear layer, on every token

    @property
    def forward(self) -> int:
        return self.patch_embed + self.linear + self.attention + self.head

    @property
    def training(self) -> int:
        """Forward + backward, the MFU numerator of one image (``TRAINING_MULTIPLIER`` x forward)."""
        return TRAINING_MULTIPLIER * self.forward

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "forward": self.forward, "training": self.training}


def uvit_flops(model: UViT, visible_tokens: int | None = None, dense_blocks: int = 0) -> UViTFlops:
    """The forward FLOPs of one image through ``model`` (built on any device, ``meta`` too).

    Args:
        model: the U-ViT (its width, depth, heads, MLP ratio, patch grid, extra tokens).
        visible_tokens: patch tokens kept by the mask (None: all N, no mask).
        dense_blocks: in-blocks that see every token before the drop (``UViT.forward``).

    Raises:
        ValueError: ``visible_tokens`` outside [1, N]; ``dense_blocks`` outside [0, depth // 2].
    """
    n = model.num_patches
    visible = n if visible_tokens is None else visible_tokens
    if isinstance(visible, bool) or not isinstance(visible, int) or not 1 <= visible <= n:
        raise ValueError(f"visible_tokens must be an integer from 1 to N={n}, got {visible_tokens!r}")
    check_dense_blocks(dense_blocks, model.depth)
    d = model.embed_dim
    hidden = int(d * model.mlp_ratio)
    per_patch = model.patch_size**2 * model.in_chans
    in_blocks = model.depth // 2
    extras = int(model.extra_tokens)  # the time token, and the label token when conditional
    full, kept = extras + n, extras + visible
    # (tokens, has a long skip) of every block: in-blocks, mid-block, out-blocks
    blocks = [(full if i < dense_blocks else kept, False) for i in range(in_blocks)]
    blocks += [(kept, False)] + [(kept, True)] * in_blocks
    linear = sum(8 * tokens * d * d + 4 * tokens * d * hidden + (4 * tokens * d * d if skip else 0)
                 for tokens, skip in blocks)
    attention = sum(4 * tokens * tokens * d for tokens, _ in blocks)
    return UViTFlops(patch_embed=2 * n * per_patch * d, linear=linear, attention=attention,
                     head=2 * kept * per_patch * d)
