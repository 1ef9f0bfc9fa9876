"""Patch-grid mask generators for masked pre-training (METHOD.md section 2).

A mask is a bool tensor (B, N) over the g x g patch grid in raster order (N = g**2), True =
masked. The model drops the masked tokens (METHOD.md section 1 step 5) and the MDSM loss,
``L_mdsm = E ||ε̂ - ε_θ(sqrt(ᾱ_t) x̂0 + sqrt(1 - ᾱ_t) ε̂, t)||²``, is taken on the visible
patches only. Dropping reshapes the visible tokens to (B, N_visible, D), so every row must
mask exactly the same number of patches; all three generators guarantee that.

Kinds (m = ratio, N = g**2):

- ``patch``: exactly floor(m N) patches, uniformly at random.
- ``block``: the grid is cut into (g/b)**2 non-overlapping b x b blocks and
  floor(floor(m N) / b**2) whole blocks are masked, so the realised ratio can fall below m.
- ``crop``: one c x c square at a uniformly random position is kept, the rest is masked;
  ``ratio`` is ignored.

Masks are drawn independently per row and fully vectorised over the batch (argsort of
uniform noise), from ``generator`` when given, so a seeded generator reproduces them.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = ["MASK_KINDS", "draw_masks", "mask_count", "sample_masks", "validate_mask_params"]

MASK_KINDS: tuple[str, ...] = ("patch", "block", "crop")

# floor(m * N) computed in floating point can land just below an integer (0.29 * 100 =
# 28.999999999999996); this tolerance makes the count the exact floor the spec means.
_FLOOR_EPS = 1e-9


def _name(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def validate_mask_params(
    kind: str,
    grid_size: int,
    ratio: float,
    block_size: int | None,
    crop_size: int | None,
    *,
    prefix: str = "",
) -> None:
    """Refuse mask settings that cannot be realised, naming the parameter at fault.

    Only the parameters the kind uses are checked (``ratio`` is ignored by ``crop``,
    ``block_size`` only matters for ``block``, ``crop_size`` only for ``crop``).
    Messages name them as this function's arguments (``ratio=1.2 is outside [0, 1)``);
    ``prefix`` is where the caller keeps them, e.g. ``pretrain.mask`` for the parameter
    ``pretrain.mask.ratio``.

    Raises:
        ValueError: unknown kind, a ratio outside [0, 1), a block size that does not divide
            the grid, a crop larger than the grid, or settings that leave no visible token.
    """
    if kind not in MASK_KINDS:
        raise ValueError(
            f"{_name(prefix, 'kind')}={kind!r} is not a mask kind; "
            f"valid kinds: {', '.join(MASK_KINDS)}"
        )
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(
            f"grid_size={grid_size!r} (image size / patch size) must be a positive int"
        )
    n = grid_size**2
    if kind in ("patch", "block"):
        r_name = _name(prefix, "ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, Real):
            raise ValueError(f"{r_name}={ratio!r} must be a number in [0, 1)")
        if not 0.0 <= float(ratio) < 1.0:  # also refuses NaN
            raise ValueError(f"{r_name}={ratio!r} is outside [0, 1)")
        if math.floor(float(ratio) * n + _FLOOR_EPS) >= n:
            raise ValueError(
                f"{r_name}={ratio!r} masks all {n} patches of the {grid_size}x{grid_size} grid; "
                "at least one patch must stay visible"
            )
    if kind == "block":
        b_name = _name(prefix, "block_size")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"{b_name}={block_size!r} must be a positive int")
        if grid_size % block_size:
            raise ValueError(
                f"{b_name}={block_size} does not divide the {grid_size}x{grid_size} patch grid "
                f"(grid_size={grid_size}); pick a divisor of {grid_size}"
            )
    if kind == "crop":
        c_name = _name(prefix, "crop_size")
        if crop_size is None:
            raise ValueError(f"{c_name} is required for {_name(prefix, 'kind')}='crop'")
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"{c_name}={crop_size!r} must be a positive int")
        if crop_size > grid_size:
            raise ValueError(
                f"{c_name}={crop_size} is larger than the {grid_size}x{grid_size} patch grid"
            )


def mask_count(
    kind: str,
    grid_size: int,
    ratio: float = 0.9,
    block_size: int | None = 4,
    crop_size: int | None = None,
) -> int:
    """Number of masked patches per row that ``sample_masks`` realises (METHOD.md section 2 table).

    Raises:
        ValueError: as :func:`validate_mask_params`.
    """
    validate_mask_params(kind, grid_size, ratio, block_size, crop_size)
    return _count(kind, grid_size, ratio, block_size, crop_size)


def _count(kind: str, grid_size: int, ratio: float, block_size: int | None,
           crop_size: int | None) -> int:
    n = grid_size**2
    if kind == "crop":
        assert crop_size is not None  # validated by the caller
        return n - crop_size**2
    nominal = math.floor(float(ratio) * n + _FLOOR_EPS)
    if kind == "patch":
        return nominal
    assert block_size is not None  # validated by the caller
    return (nominal // block_size**2) * block_size**2


def _random_subset(
    batch_size: int,
    n: int,
    k: int,
    generator: torch.Generator | None,
    device: torch.device | None,
) -> torch.Tensor:
    """(B, n) bool with exactly k True per row, each row an independent uniform k-subset."""
    noise = torch.rand(batch_size, n, generator=generator, device=device)  # (B, n)
    # The k smallest noise values of a row are a uniform random k-subset of its columns.
    chosen = noise.argsort(dim=1)[:, :k]  # (B, k)
    mask = torch.zeros(batch_size, n, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


def sample_masks(
    kind: str,
    grid_size: int,
    batch_size: int,
    ratio: float = 0.9,
    block_size: int | None = 4,
    crop_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``batch_size`` independent masks of one kind; bool (B, grid_size**2), True = masked.

    Every row masks exactly ``mask_count(kind, grid_size, ratio, block_size, crop_size)``
    patches. ``device`` defaults to the generator's device (or the CPU without one).

    Raises:
        ValueError: as :func:`validate_mask_params`, or ``batch_size`` is not a positive int.
    """
    validate_mask_params(kind, grid_size, ratio, block_size, crop_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    return draw_masks(kind, grid_size, batch_size, ratio=ratio, block_size=block_size,
                      crop_size=crop_size, generator=generator, device=device)


def draw_masks(
    kind: str,
    grid_size: int,
    batch_size: int,
    *,
    ratio: float,
    block_size: int | None,
    crop_size: int | None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`sample_masks` without the checks, for a training loop that validated the settings
    once (``validate_mask_params``) and draws every step; unchecked settings can fail obscurely."""
    if device is None and generator is not None:
        device = generator.device
    device = torch.device(device) if device is not None else None
    g, n = grid_size, grid_size**2
    k = _count(kind, grid_size, ratio, block_size, crop_size)

    if kind == "patch":
        return _random_subset(batch_size, n, k, generator, device)

    if kind == "block":
        assert block_size is not None
        blocks_per_side = g // block_size
        coarse = _random_subset(
            batch_size, blocks_per_side**2, k // block_size**2, generator, device
        ).view(batch_size, blocks_per_side, blocks_per_side)  # (B, g/b, g/b)
        # Each block cell covers b x b patches: upsample the block grid to the patch grid.
        fine = coarse.repeat_interleave(block_size, dim=1).repeat_interleave(block_size, dim=2)
        return fine.reshape(batch_size, n)  # (B, g*g), raster order

    assert crop_size is not None
    # Top-left corner of the kept square, uniform over the g - c + 1 valid positions per axis.
    top, left = torch.randint(
        0, g - crop_size + 1, (2, batch_size, 1), generator=generator, device=device
    )  # 2 x (B, 1)
    coords = torch.arange(g, device=device)[None]  # (1, g)
    rows_kept = (coords >= top) & (coords < top + crop_size)  # (B, g)
    cols_kept = (coords >= left) & (coords < left + crop_size)  # (B, g)
    kept = rows_kept[:, :, None] & cols_kept[:, None, :]  # (B, g, g)
    return ~kept.reshape(batch_size, n)
