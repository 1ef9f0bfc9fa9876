"""U-ViT with token dropping: sizes, shapes, masking semantics, gradients, validation.

Paper-scale presets are built on the 'meta' device (no memory, no init cost) for counts and
shapes; ``tiny`` and ``small-64`` are also run for real.
"""

from __future__ import annotations

import math

import pytest
import torch

from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.models import PRESETS, UViT, build_uvit, count_parameters
from maskdm_pipeline.models.patching import keep_visible, patchify
from maskdm_pipeline.models.uvit import timestep_embedding

# METHOD.md section 3, "Params (analytic count)".
PAPER_PARAMS = {
    "small-64": 44.29e6,
    "small-128": 44.69e6,
    "small-256": 46.26e6,
    "base-256": 102.42e6,
}


def _analytic_params(img_size, patch_size, in_chans, embed_dim, depth, num_heads, **_) -> int:
    """Sum of the layers METHOD.md section 3 lists, written independently of the model code."""
    d, p, c = embed_dim, patch_size, in_chans
    n_tokens = 1 + (img_size // p) ** 2
    patch_embed = c * p * p * d + d
    pos_embed = n_tokens * d
    block = 2 * d + 3 * d * d + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    n_blocks = 2 * (depth // 2) + 1
    skips = (depth // 2) * (2 * d * d + d)
    head = 2 * d + d * p * p * c + p * p * c
    return patch_embed + pos_embed + n_blocks * block + skips + head


def _meta(preset: str, **overrides) -> UViT:
    with torch.device("meta"):
        return build_uvit(preset, **overrides)


def _tiny(seed: int = 0, **overrides) -> UViT:
    torch.manual_seed(seed)
    return build_uvit("tiny", **overrides).eval()


@pytest.mark.parametrize("preset", sorted(PAPER_PARAMS))
def test_param_count_matches_method(preset: str) -> None:
    n = count_parameters(_meta(preset))
    assert abs(n - PAPER_PARAMS[preset]) / PAPER_PARAMS[preset] < 0.005, n


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_param_count_matches_analytic_sum(preset: str) -> None:
    assert count_parameters(_meta(preset)) == _analytic_params(**PRESETS[preset])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_unmasked_shape_every_preset(preset: str) -> None:
    model = _meta(preset)
    cfg = PRESETS[preset]
    x = torch.empty(2, cfg["in_chans"], cfg["img_size"], cfg["img_size"], device="meta")
    out = model(x, torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == x.shape
    assert model.grid_size == cfg["img_size"] // cfg["patch_size"]
    assert model.num_patches == model.grid_size**2


@pytest.mark.parametrize(("depth", "n_side"), [(4, 2), (12, 6), (13, 6)])
def test_block_layout(depth: int, n_side: int) -> None:
    model = _meta("tiny", depth=depth)
    assert len(model.in_blocks) == len(model.out_blocks) == n_side
    assert all(b.skip_linear is None for b in [*model.in_blocks, model.mid_block])
    assert all(b.skip_linear is not None for b in model.out_blocks)
    assert model.out_blocks[0].attn.qkv.bias is None  # qkv_bias=False by default
    assert model.out_blocks[0].attn.proj.bias is not None


def test_long_skips_are_popped_lifo() -> None:
    model = _tiny(depth=6)
    seen_in: list[torch.Tensor] = []
    seen_skip: list[torch.Tensor] = []
    for block in model.in_blocks:
        block.register_forward_hook(lambda _m, _a, out: seen_in.append(out))
    for block in model.out_blocks:
        block.register_forward_pre_hook(lambda _m, args: seen_skip.append(args[1]))
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16), torch.tensor([3]))
    assert len(seen_skip) == 3
    for skip, expected in zip(seen_skip, reversed(seen_in), strict=True):
        assert skip is expected


def test_tiny_forward_both_paths() -> None:
    model = _tiny()
    x = torch.randn(3, 1, 16, 16)
    t = torch.randint(0, 1000, (3,))
    assert model(x, t).shape == (3, 1, 16, 16)
    mask = sample_masks("patch", 4, 3, ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert model(x, t, mask).shape == (3, 4, 16)


@pytest.mark.slow
def test_small64_real_forward() -> None:
    torch.manual_seed(0)
    model = build_uvit("small-64").eval()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([0, 999])
    mask = sample_masks("block", 16, 2, ratio=0.9, block_size=4)
    with torch.no_grad():
        masked = model(x, t, mask)
        full = model(x[:1], t[:1])
    assert masked.shape == (2, 32, 48)  # 32 visible tokens (METHOD.md section 2), 4*4*3 values
    assert full.shape == (1, 3, 64, 64)
    assert torch.isfinite(masked).all() and torch.isfinite(full).all()


def test_ratio_zero_mask_equals_unmasked_output() -> None:
    model = _tiny(qkv_bias=True, img_size=32, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 700])
    mask = torch.zeros(2, model.num_patches, dtype=torch.bool)
    with torch.no_grad():
        tokens = model(x, t, mask)
        image = model(x, t)
    torch.testing.assert_close(tokens, patchify(image, model.patch_size), rtol=1e-5, atol=1e-6)


def test_masked_output_is_comparable_with_the_visible_target() -> None:
    model = _tiny()
    x = torch.randn(2, 1, 16, 16)
    mask = sample_masks("patch", 4, 2, ratio=0.5, generator=torch.Generator().manual_seed(1))
    out = model(x, torch.tensor([1, 2]), mask)
    target = keep_visible(patchify(x, model.patch_size), mask)
    assert out.shape == target.shape


def test_keep_visible_is_boolean_indexing_bitwise_with_its_gradient() -> None:
    """The index gather (positions from the mask, on the mask's device) returns exactly the rows
    boolean indexing returns, in raster order, and the same gradient."""
    torch.manual_seed(0)
    tokens = torch.randn(4, 16, 8, requires_grad=True)
    mask = sample_masks("block", 4, 4, ratio=0.5, block_size=2)
    ours = keep_visible(tokens, mask)
    reference = tokens[~mask].reshape(4, -1, 8)
    assert torch.equal(ours, reference)
    weights = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), tokens)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), tokens)
    assert torch.equal(grad_ours, grad_reference)


def test_gradients_reach_only_visible_patches() -> None:
    model = _tiny(seed=1)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    mask = sample_masks("patch", 4, 2, ratio=0.5, generator=torch.Generator().manual_seed(2))
    out = model(x, torch.tensor([10, 500]), mask)
    out[0, 0].sum().backward()  # one visible token of image 0
    grad = patchify(x.grad, model.patch_size)  # (B, N, p*p*C)
    assert torch.all(grad[0][mask[0]] == 0), "masked pixels received gradient"
    assert torch.all(grad[1] == 0), "gradient leaked across images"
    visible_norms = grad[0][~mask[0]].abs().sum(dim=1)
    assert torch.all(visible_norms > 0), "some visible patch is cut off from the output"


def test_masked_pixels_do_not_change_the_output() -> None:
    model = _tiny(seed=2)
    x = torch.randn(2, 1, 16, 16)
    mask = sample_masks("patch", 4, 2, ratio=0.75, generator=torch.Generator().manual_seed(3))
    pixel_mask = mask.view(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    scrambled = torch.where(pixel_mask, torch.randn_like(x) * 100, x)
    t = torch.tensor([5, 6])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, mask), model(scrambled, t, mask))


def test_position_is_added_before_dropping() -> None:
    # Same patch content, a different single visible position per row: with pos-embed added
    # before dropping the two outputs differ; added after dropping they would be identical.
    model = _tiny(seed=3)
    x = torch.ones(2, 1, 16, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 0] = False
    mask[1, 9] = False
    with torch.no_grad():
        out = model(x, torch.tensor([100, 100]), mask)
    assert out.shape == (2, 1, 16)
    assert not torch.allclose(out[0], out[1])


def test_time_token_conditions_the_output() -> None:
    model = _tiny(seed=4)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0])), model(x, torch.tensor([999]))
        scalar = model(x.expand(2, -1, -1, -1), torch.tensor(7))
        vector = model(x.expand(2, -1, -1, -1), torch.tensor([7, 7]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(scalar, vector)


def test_timestep_embedding_is_cos_then_sin_of_unscaled_t() -> None:
    t = torch.tensor([0, 1, 250])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10_000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.cos(250 * freqs), torch.sin(250 * freqs)])
    torch.testing.assert_close(emb[2], expected)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_init_follows_method() -> None:
    model = build_uvit("tiny", embed_dim=256, depth=2, num_heads=4)
    fc1 = model.mid_block.mlp.fc1
    assert math.isclose(fc1.weight.std().item(), 0.02, rel_tol=0.05)
    assert torch.all(fc1.bias == 0) and torch.all(model.head.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    assert math.isclose(model.pos_embed.std().item(), 0.02, rel_tol=0.1)
    # The conv keeps PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in) = 1/4 here).
    assert model.patch_embed.weight.abs().max() > 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"img_size": 18}, "img_size=18 is not divisible by patch_size=4"),
        ({"num_heads": 5}, "embed_dim=96 is not divisible by num_heads=5"),
        ({"depth": 0}, "depth must be a positive int"),
    ],
)
def test_bad_architecture_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_uvit("tiny", **kwargs)


def test_bad_inputs_are_refused() -> None:
    model = _tiny()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\) = \(2, 16\)"):
        model(x, t, torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="same number of tokens"):
        unequal = torch.zeros(2, 16, dtype=torch.bool)
        unequal[0, 0] = True
        model(x, t, unequal)
    with pytest.raises(ValueError, match="bool"):
        model(x, t, torch.zeros(2, 16))
    with pytest.raises(ValueError, match="every patch"):
        model(x, t, torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 1, 16, 16\)"):
        model(torch.randn(2, 1, 32, 32), t)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(x, torch.tensor([1, 2, 3]))


def test_unknown_preset_and_override_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'huge'.*base-256.*tiny"):
        build_uvit("huge")
    with pytest.raises(ValueError, match=r"\['width'\].*embed_dim"):
        build_uvit("tiny", width=64)


def test_overrides_apply_and_presets_stay_untouched() -> None:
    model = _meta("tiny", img_size=32, in_chans=3)
    assert (model.img_size, model.in_chans, model.num_patches) == (32, 3, 64)
    assert PRESETS["tiny"]["img_size"] == 16
    with pytest.raises(TypeError):
        PRESETS["tiny"]["img_size"] = 64  # type: ignore[index]
