"""Dense-first masking (issue 17 item 1) and the token-block count (item 2) of the U-ViT.

SPRINT (Park et al., ICLR 2026) and MicroDiT's deferred masking (Sehwag et al., CVPR 2025):
the first k in-blocks see every token, then the masked ones are dropped; k = 0 is MaskDM.
"""

from __future__ import annotations

import pytest
import torch

from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.models import build_uvit, check_dense_blocks
from maskdm_pipeline.models.patching import keep_visible, patchify
from maskdm_pipeline.models.uvit import UViT, timestep_embedding

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _maskdm_forward(model: UViT, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked path of ``UViT.forward`` as it was before dense-first masking (main at 14b8f62),
    copied op for op: k = 0 must reproduce it bitwise."""
    b = x_t.shape[0]
    x = model.patch_embed(x_t).flatten(2).transpose(1, 2)
    time_token = timestep_embedding(t, model.embed_dim).to(x.dtype)[:, None]
    x = torch.cat([time_token, x], dim=1) + model.pos_embed
    keep_time = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
    x = keep_visible(x, torch.cat([keep_time, mask], dim=1))
    skips = []
    for block in model.in_blocks:
        x = block(x)
        skips.append(x)
    x = model.mid_block(x)
    for block in model.out_blocks:
        x = block(x, skips.pop())
    return model.head(model.norm(x))[:, 1:]


def _dense_first_reference(model: UViT, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                           k: int) -> torch.Tensor:
    """Dense-first written another way: gather by visible indices, and cut a long skip down to the
    visible tokens only when an out-block consumes it."""
    x = model.patch_embed(x_t).flatten(2).transpose(1, 2)
    time_token = timestep_embedding(t, model.embed_dim).to(x.dtype)[:, None]
    x = torch.cat([time_token, x], dim=1) + model.pos_embed  # (B, 1+N, D)
    visible = torch.stack([row.nonzero().squeeze(1) + 1 for row in ~mask])  # (B, N_vis), +1: time
    index = torch.cat([torch.zeros_like(visible[:, :1]), visible], dim=1)  # the time token first
    index = index[..., None].expand(-1, -1, x.shape[-1])

    def gather(z: torch.Tensor) -> torch.Tensor:
        return z if z.shape[1] == index.shape[1] else torch.gather(z, 1, index)

    skips = []
    for i, block in enumerate(model.in_blocks):
        x = block(gather(x) if i >= k else x)
        skips.append(x)
    x = model.mid_block(gather(x))
    for block in model.out_blocks:
        x = block(x, gather(skips.pop()))
    return model.head(model.norm(x))[:, 1:]


def _model(depth: int = 6, seed: int = 0) -> UViT:
    torch.manual_seed(seed)
    return build_uvit("tiny", depth=depth).eval()  # 16x16x1, p = 4: N = 16, depth // 2 in-blocks


def _inputs(b: int = 3, ratio: float = 0.75, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 16, 16, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t, sample_masks("patch", 4, b, ratio=ratio, generator=g)


@pytest.mark.parametrize("depth", [1, 4, 6])
def test_zero_dense_blocks_is_maskdm_bitwise(depth: int) -> None:
    model = _model(depth)
    x, t, mask = _inputs()
    with torch.no_grad():
        expected = _maskdm_forward(model, x, t, mask)
        assert torch.equal(model(x, t, mask), expected)
        assert torch.equal(model(x, t, mask, dense_blocks=0), expected)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dense_first_matches_an_independent_reference(k: int) -> None:
    model = _model(depth=6)
    x, t, mask = _inputs()
    with torch.no_grad():
        out = model(x, t, mask, dense_blocks=k)
        torch.testing.assert_close(out, _dense_first_reference(model, x, t, mask, k))
        # The test can fail: the dense blocks change the result.
        assert not torch.allclose(out, model(x, t, mask))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_masked_pixels_reach_the_visible_outputs_only_through_dense_blocks(k: int) -> None:
    model = _model(depth=6, seed=1)
    x, t, mask = _inputs(seed=1)
    pixel_mask = mask.view(-1, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3)
    scrambled = torch.where(pixel_mask, 10 * torch.randn_like(x), x)
    with torch.no_grad():
        out, out_scrambled = model(x, t, mask, dense_blocks=k), model(scrambled, t, mask, dense_blocks=k)
    assert out.shape == out_scrambled.shape == (3, 4, 16)  # (B, N_visible, p*p*C) for any k
    if k == 0:
        assert torch.equal(out, out_scrambled)
    else:
        assert not torch.allclose(out, out_scrambled)


def test_dense_blocks_do_not_change_the_unmasked_paths() -> None:
    model = _model(depth=4)
    x, t, _ = _inputs()
    empty = torch.zeros(3, 16, dtype=torch.bool)
    with torch.no_grad():
        image = model(x, t)
        for k in (1, 2):
            assert torch.equal(model(x, t, dense_blocks=k), image)  # mask=None ignores k
            # Ratio 0 (fine-tuning's path) keeps every token, so k changes nothing.
            torch.testing.assert_close(model(x, t, empty, dense_blocks=k), patchify(image, 4),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [3, -1, True, 1.0])
def test_dense_blocks_outside_the_in_blocks_are_refused(bad) -> None:
    model = _model(depth=4)  # 2 in-blocks
    x, t, mask = _inputs()
    match = r"^dense_blocks=.*from 0 to 2.*depth-4"
    with pytest.raises(ValueError, match=match):
        model(x, t, mask, dense_blocks=bad)
    with pytest.raises(ValueError, match=match):
        model(x, t, dense_blocks=bad)
    with pytest.raises(ValueError, match=match):
        check_dense_blocks(bad, depth=4)
    assert check_dense_blocks(2, depth=4) == 2
    with pytest.raises(ValueError, match=r"^pretrain\.mask\.dense_blocks=3: must be an integer from 0 to 2"):
        check_dense_blocks(3, depth=4, prefix="pretrain.mask")


def test_token_blocks_counts_what_the_blocks_see() -> None:
    """tiny: N = 16 patches, 5 blocks (2 in, 1 mid, 2 out); 75% masked leaves 4 visible."""
    model = _model(depth=4)
    assert model.num_blocks == 5
    assert [model.token_blocks(4, k) for k in (0, 1, 2)] == [5 * 4, 16 + 4 * 4, 2 * 16 + 3 * 4]
    assert {model.token_blocks(16, k) for k in (0, 1, 2)} == {5 * 16}  # unmasked: k is free
    seen: list[int] = []
    for block in [*model.in_blocks, model.mid_block, *model.out_blocks]:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1] - 1))
    x, t, mask = _inputs(b=1)
    for k in (0, 1, 2):
        seen.clear()
        with torch.no_grad():
            model(x, t, mask, dense_blocks=k)
        assert sum(seen) == model.token_blocks(4, k)  # patch tokens per block, time token excluded


def test_token_blocks_small64() -> None:
    """small-64: N = 256, 13 blocks (6 in); the paper's 90% block mask leaves 32 visible."""
    with torch.device("meta"):
        model = build_uvit("small-64")
    assert model.num_blocks == 13
    assert model.token_blocks(32) == 13 * 32 == 416
    assert model.token_blocks(32, dense_blocks=2) == 2 * 256 + 11 * 32 == 864
    assert model.token_blocks(32, dense_blocks=6) == 6 * 256 + 7 * 32 == 1760
    assert model.token_blocks(256, dense_blocks=2) == 13 * 256
    for bad in (0, 257):
        with pytest.raises(ValueError, match="visible_tokens must be an integer from 1 to N=256"):
            model.token_blocks(bad)
    with pytest.raises(ValueError, match=r"^dense_blocks=7"):
        model.token_blocks(32, dense_blocks=7)


def test_the_masked_loss_hands_dense_blocks_to_the_model() -> None:
    from maskdm_pipeline.diffusion import MaskedDenoisingLoss, make_schedule

    model, s = _model(depth=4), make_schedule("linear")
    x0, t, mask = _inputs()
    noise = torch.randn_like(x0)
    target = keep_visible(patchify(noise, 4), mask)
    with torch.no_grad():
        x_t = s.q_sample(x0, t, noise)
        for k in (0, 2):
            expected = (model(x_t, t, mask, dense_blocks=k) - target).pow(2).flatten(1).mean(1).mean()
            loss = MaskedDenoisingLoss(s, "eps", dense_blocks=k)(model, x0, mask, t=t, noise=noise)
            torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
        with pytest.raises(ValueError, match=r"^dense_blocks=3"):
            MaskedDenoisingLoss(s, "eps", dense_blocks=3)(model, x0, mask, t=t, noise=noise)
