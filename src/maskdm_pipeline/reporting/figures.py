"""The report's matplotlib figures: quality-vs-compute curves and samples side by side.

Pure (numpy, matplotlib; no Kedro). MaskDM's curve starts where its pre-training ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from maskdm_pipeline.reporting.curves import Curve

# Curve column -> the label of its axis, in the figure's order.
AXES = {"images": "images processed (MaskDM: pre-train + fine-tune)",
        "tokens": "tokens processed (visible tokens when masked)",
        "token_blocks": "token-blocks (tokens x blocks; dense blocks see all)",
        "wall_s": "cumulative training wall time (s)"}


def curves_figure(maskdm: Curve, baseline: Curve,
                  finals: Mapping[str, tuple[float, float | None, int | None]] | None = None
                  ) -> Figure:
    """fd_clf vs images processed, tokens processed, token-blocks and cumulative wall time.

    MaskDM starts after its pre-training on every axis. Tokens count what the network actually
    processed (visible tokens when masked), the axis on which masking's saving shows; images
    count a masked image as a whole one; token-blocks sum the tokens over the network's blocks
    (``UViT.token_blocks``), so dense-first masking's dense blocks are charged for all tokens.
    ``finals`` maps model -> (total wall s, final fd_clf, N) from the final evaluation, drawn as
    stars because its N may differ from the periodic evaluations'.
    """
    fig = Figure(figsize=(20, 4.2), layout="constrained")
    axes = fig.subplots(1, len(AXES))
    styles = {"maskdm": ("tab:blue", maskdm), "baseline": ("tab:orange", baseline)}
    pre_cost = {"images": maskdm.offset.images_seen, "tokens": maskdm.offset.tokens_seen,
                "token_blocks": maskdm.offset.token_blocks_seen, "wall_s": maskdm.offset.wall_time_s}
    for ax, (x, xlabel) in zip(axes, AXES.items(), strict=True):
        pre = pre_cost[x]
        if pre > 0:
            ax.axvspan(0, pre, color="tab:blue", alpha=0.08, label="MaskDM pre-training")
        for color, curve in styles.values():
            if not curve.empty:
                ax.plot(curve.points[x], curve.points["fd_clf"], "o-", color=color, ms=4,
                        label=f"{curve.label} (N={curve.n})" if curve.n else curve.label)
        # The final evaluation may use another N than the periodic ones: stars, not curve points.
        for key, (total_s, value, n) in (finals or {}).items() if x == "wall_s" else ():
            if value is not None:
                label = f"{styles[key][1].label} final" + (f" (N={n})" if n else "")
                ax.plot([total_s], [value], "*", ms=13, color=styles[key][0], mec="k", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fd_clf (lower is better)")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        if maskdm.empty and baseline.empty:
            ax.text(0.5, 0.8, "no periodic fd_clf evaluations recorded\n"
                    "(unlabelled data, or eval_every = 0)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=10, color="0.4")
    fig.suptitle("Quality vs compute (MaskDM charged for pre-training)")
    return fig


def samples_figure(grids: Mapping[str, Any], titles: Mapping[str, str]) -> Figure:
    """Sample grids side by side, one titled panel per model."""
    fig = Figure(figsize=(5 * len(grids), 5.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (key, grid) in zip(axes, grids.items(), strict=True):
        image = np.asarray(grid)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.axis("off")
    fig.suptitle("Samples (EMA weights)")
    return fig
