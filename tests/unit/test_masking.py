"""Mask generators: counts from METHOD.md section 2, structure, independence, seeding, validation."""

from __future__ import annotations

import math

import pytest
import torch

from maskdm_pipeline.masking import MASK_KINDS, mask_count, sample_masks, validate_mask_params


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# METHOD.md section 2, "Realised ratios, CelebA 64 with p = 4" (16x16 grid): masked counts.
CELEBA64_TABLE = [
    ("patch", 0.1, {}, 25),
    ("patch", 0.5, {}, 128),
    ("patch", 0.9, {}, 230),
    ("block", 0.1, {"block_size": 2}, 24),
    ("block", 0.5, {"block_size": 2}, 128),
    ("block", 0.9, {"block_size": 2}, 228),
    ("block", 0.1, {"block_size": 4}, 16),
    ("block", 0.5, {"block_size": 4}, 128),
    ("block", 0.9, {"block_size": 4}, 224),
    ("block", 0.5, {"block_size": 8}, 128),
    ("crop", 0.1, {"crop_size": 15}, 31),
    ("crop", 0.5, {"crop_size": 11}, 135),
    ("crop", 0.9, {"crop_size": 5}, 231),
]


@pytest.mark.parametrize(("kind", "ratio", "kwargs", "expected"), CELEBA64_TABLE)
def test_celeba64_realised_counts(kind: str, ratio: float, kwargs: dict, expected: int) -> None:
    assert mask_count(kind, 16, ratio, **kwargs) == expected
    masks = sample_masks(kind, 16, 16, ratio=ratio, generator=_gen(0), **kwargs)
    assert masks.shape == (16, 256)
    assert masks.dtype == torch.bool
    assert masks.sum(dim=1).tolist() == [expected] * 16


def test_256px_block4_counts() -> None:
    # METHOD.md section 2: 64x64 grid, block 4 -> 3680 masked (416 visible) at 90%, 2048 at 50%.
    assert mask_count("block", 64, 0.9, 4) == 3680
    assert mask_count("block", 64, 0.5, 4) == 2048
    masks = sample_masks("block", 64, 3, ratio=0.9, block_size=4, generator=_gen(1))
    assert masks.shape == (3, 4096)
    assert (~masks).sum(dim=1).tolist() == [416] * 3


def test_floor_is_exact_despite_float_rounding() -> None:
    # 0.29 * 100 is 28.999999999999996 in floating point; the spec's floor(m N) is 29.
    assert mask_count("patch", 10, 0.29) == 29


@pytest.mark.parametrize("kind", ["patch", "block"])
def test_ratio_zero_masks_nothing(kind: str) -> None:
    masks = sample_masks(kind, 8, 4, ratio=0.0, block_size=2, generator=_gen(0))
    assert not masks.any()


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [("patch", {}), ("block", {"block_size": 2}), ("crop", {"crop_size": 5})],
)
def test_rows_are_independent_and_seeded(kind: str, kwargs: dict) -> None:
    masks = sample_masks(kind, 16, 8, ratio=0.5, generator=_gen(3), **kwargs)
    distinct_rows = {tuple(row.tolist()) for row in masks}
    assert len(distinct_rows) > 1, "every row got the same mask"
    again = sample_masks(kind, 16, 8, ratio=0.5, generator=_gen(3), **kwargs)
    assert torch.equal(masks, again)
    other = sample_masks(kind, 16, 8, ratio=0.5, generator=_gen(4), **kwargs)
    assert not torch.equal(masks, other)


def test_patch_masks_are_uniform_over_positions() -> None:
    masks = sample_masks("patch", 4, 4000, ratio=0.5, generator=_gen(5))
    freq = masks.float().mean(dim=0)
    # Binomial(4000, 0.5) frequencies: std 0.008; 0.05 is > 6 sigma.
    assert torch.all((freq - 0.5).abs() < 0.05), freq


def test_block_masks_cover_whole_aligned_blocks() -> None:
    g, b = 16, 4
    masks = sample_masks("block", g, 32, ratio=0.5, block_size=b, generator=_gen(6))
    blocks = masks.view(32, g // b, b, g // b, b).permute(0, 1, 3, 2, 4).reshape(32, -1, b * b)
    per_block = blocks.sum(dim=-1)
    assert torch.all((per_block == 0) | (per_block == b * b)), "a block is partly masked"
    block_freq = (per_block > 0).float().mean(dim=0)
    assert torch.all(block_freq > 0) and torch.all(block_freq < 1)


def test_crop_keeps_one_square_at_every_position() -> None:
    g, c = 6, 3
    masks = sample_masks("crop", g, 2000, crop_size=c, generator=_gen(7))
    kept = (~masks).view(-1, g, g)
    rows = kept.any(dim=2).float()
    cols = kept.any(dim=1).float()
    top = rows.argmax(dim=1)
    left = cols.argmax(dim=1)
    # The kept set is exactly the c x c square spanned by its first row and column.
    assert torch.all(rows.sum(dim=1) == c) and torch.all(cols.sum(dim=1) == c)
    assert torch.all(kept.sum(dim=(1, 2)) == c * c)
    # All (g - c + 1)**2 corners occur, including the last valid one (off-by-one guard).
    corners = set(zip(top.tolist(), left.tolist(), strict=True))
    assert corners == {(i, j) for i in range(g - c + 1) for j in range(g - c + 1)}


def test_crop_ignores_ratio() -> None:
    a = sample_masks("crop", 8, 4, ratio=0.1, crop_size=3, generator=_gen(8))
    b = sample_masks("crop", 8, 4, ratio=0.9, crop_size=3, generator=_gen(8))
    assert torch.equal(a, b)


def test_device_follows_generator() -> None:
    masks = sample_masks("patch", 4, 2, ratio=0.5, generator=_gen(0))
    assert masks.device.type == "cpu"


@pytest.mark.parametrize(
    ("kind", "grid", "ratio", "block", "crop", "match"),
    [
        ("patch", 16, 1.2, 4, None, r"^ratio=1\.2 is outside \[0, 1\)"),
        ("block", 16, -0.1, 4, None, r"^ratio=-0\.1 is outside"),
        ("patch", 16, math.nan, 4, None, r"^ratio=nan is outside"),
        ("patch", 16, "0.5", 4, None, r"^ratio='0\.5' must be a number"),
        ("patch", 4, 1 - 1e-12, 4, None, r"^ratio=.*at least one patch must stay visible"),
        ("block", 15, 0.5, 4, None, r"^block_size=4 does not divide .*grid_size=15"),
        ("block", 16, 0.5, 0, None, r"^block_size=0 must be a positive int"),
        ("crop", 16, 0.9, 4, 17, r"^crop_size=17 is larger than the 16x16"),
        ("crop", 16, 0.9, 4, None, r"^crop_size is required for kind='crop'"),
        ("crop", 16, 0.9, 4, 0, r"^crop_size=0 must be a positive int"),
        ("random", 16, 0.5, 4, None, r"^kind='random'.*patch, block, crop"),
        ("patch", 0, 0.5, 4, None, r"grid_size=0"),
    ],
)
def test_validation_names_the_parameter(kind, grid, ratio, block, crop, match) -> None:
    with pytest.raises(ValueError, match=match):
        validate_mask_params(kind, grid, ratio, block, crop)
    with pytest.raises(ValueError, match=match):
        sample_masks(kind, grid, 2, ratio=ratio, block_size=block, crop_size=crop)


def test_validation_only_checks_parameters_the_kind_uses() -> None:
    # A 7x7 grid (28 px / patch 4) is fine for patch masks even though block 4 cannot tile it.
    validate_mask_params("patch", 7, 0.5, 4, None)
    validate_mask_params("crop", 7, 5.0, 4, 3)  # crop ignores the ratio


def test_prefix_controls_parameter_names() -> None:
    with pytest.raises(ValueError, match=r"^pretrain\.mask\.ratio=2"):
        validate_mask_params("patch", 4, 2, 4, None, prefix="pretrain.mask")
    with pytest.raises(ValueError, match=r"^pretrain\.mask\.crop_size is required for pretrain\.mask\.kind='crop'"):
        validate_mask_params("crop", 4, 0.5, 4, None, prefix="pretrain.mask")
    with pytest.raises(ValueError, match=r"^ratio=2"):
        mask_count("patch", 4, 2)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        sample_masks("patch", 4, 0)


def test_kinds_are_the_documented_three() -> None:
    assert MASK_KINDS == ("patch", "block", "crop")
