"""models/flops.py: the U-ViT's matrix-product FLOPs counted from its architecture agree with
torch's own FLOP counter, forward and forward + backward, masked or not (on the CPU, with the
attention computed by plain matrix products so that the counter sees them)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.models import UViT, build_uvit
from maskdm_pipeline.models.flops import TRAINING_MULTIPLIER, uvit_flops


def _counted(model: UViT, batch: int, mask: torch.Tensor | None = None, dense_blocks: int = 0,
             backward: bool = False) -> int:
    device = next(model.parameters()).device
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, t, mask, dense_blocks=dense_blocks)
        if backward:
            out.float().pow(2).mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("preset", ["small-64", "base-256"])
def test_paper_presets_unmasked_forward(preset: str) -> None:
    """The paper's models, on the meta device (no memory, no arithmetic): exact agreement."""
    with torch.device("meta"):
        model = build_uvit(preset)
    assert _counted(model, batch=2) == 2 * uvit_flops(model).forward


@pytest.mark.parametrize(("ratio", "dense_blocks"), [(0.0, 0), (0.75, 0), (0.75, 1), (0.75, 2)])
def test_masked_and_dense_first_forward_and_backward(ratio: float, dense_blocks: int) -> None:
    """A small U-ViT (depth 4: 2 in-blocks) with 16 patch tokens: the forward count is exact, and
    forward + backward is three forwards less the patch embedding's input gradient (the noisy
    image needs none), the only product whose backward is one product rather than two."""
    torch.manual_seed(0)
    model = UViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=4, num_heads=2)
    batch = 3
    mask = None
    visible = model.num_patches
    if ratio:
        mask = sample_masks("patch", model.grid_size, batch, ratio=ratio)
        visible = int((~mask[0]).sum())
    flops = uvit_flops(model, visible, dense_blocks)
    assert _counted(model, batch, mask, dense_blocks) == batch * flops.forward
    both = _counted(model, batch, mask, dense_blocks, backward=True)
    assert both == batch * (TRAINING_MULTIPLIER * flops.forward - flops.patch_embed)


@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_a_class_conditional_model_counts_its_label_token(ratio: float) -> None:
    """The label token is one more token in every block (and the head): exact against torch's
    counter, masked or not; the guidance costs (diffusion.guidance.sampling_flops) read the same."""
    torch.manual_seed(0)
    model = UViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    mask = sample_masks("patch", model.grid_size, 2, ratio=ratio) if ratio else None
    visible = model.num_patches if mask is None else int((~mask[0]).sum())
    assert _counted(model, 2, mask) == 2 * uvit_flops(model, visible).forward


def test_base256_figures_and_what_masking_saves() -> None:
    """base-256 forward: about 1.5 TFLOP an image unmasked, half of it in the 4097 x 4097
    attention products; 90% block-4 masking (410 visible) cuts the model FLOPs about 15x."""
    with torch.device("meta"):
        model = build_uvit("base-256")
    full, masked = uvit_flops(model), uvit_flops(model, visible_tokens=410)
    assert 1.4e12 < full.forward < 1.6e12
    assert 0.45 < full.attention / full.forward < 0.55
    assert 14 < full.training / masked.training < 17
    with pytest.raises(ValueError, match="visible_tokens must be an integer from 1 to N=4096"):
        uvit_flops(model, visible_tokens=0)
