"""Montages of a benchmark set: images with mask outlines, one row per density tier.

Public API: :func:`composite`, :func:`outlined`, :func:`preview_set`.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

from cellgen.datasets.h5 import CLEAN, BenchmarkSet
from cellgen.fileio import atomic_path

CELL_OUTLINE = (1.0, 0.85, 0.1)
NUCLEUS_OUTLINE = (1.0, 0.2, 0.9)


def _stretch(channel: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(channel, (0.5, 99.8))
    return np.clip((channel.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def composite(image: np.ndarray) -> np.ndarray:
    """(2, H, W) nucleus+cytoplasm -> (H, W, 3) display RGB: nucleus blue, cytoplasm green."""
    nuc, cyto = _stretch(image[0]), _stretch(image[1])
    return np.stack([0.25 * cyto, 0.9 * cyto + 0.15 * nuc, nuc], -1).clip(0, 1)


def semantic_rgb(semantic: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*semantic.shape, 3), np.float32)
    rgb[semantic == 255] = (0.1, 0.55, 0.2)
    rgb[semantic == 128] = (0.2, 0.35, 0.9)
    return rgb


def outlined(rgb: np.ndarray, cell: np.ndarray | None, nucleus: np.ndarray | None) -> np.ndarray:
    """Outlines drawn over ``rgb``; a compartment given as None is not drawn."""
    out = rgb.copy()
    if cell is not None:
        out[find_boundaries(cell, mode="inner")] = CELL_OUTLINE
    if nucleus is not None:
        out[find_boundaries(nucleus, mode="inner")] = NUCLEUS_OUTLINE
    return out


def preview_set(path, out, variant: str = CLEAN, per_tier: int = 4, outlines: bool = True, seed: int = 0):
    """Write a PNG montage of up to ``per_tier`` images of each tier; returns the output path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with BenchmarkSet(path) as ds:
        if ds.has_images:
            ds.require_variant(variant)
        rows = []
        for tier in ds.tier_scheme.names:
            idx = ds.indices(tier)
            if idx.size > per_tier:
                # spread picks over the tier, deterministically, rather than the first few
                idx = idx[np.linspace(0, idx.size - 1, per_tier).round().astype(int)]
            rows.append((tier, idx, int(ds.indices(tier).size)))
        rows = [r for r in rows if r[1].size] or [("(empty)", np.array([], int), 0)]
        ncols = max(1, max(r[1].size for r in rows))
        fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.8 * len(rows)), squeeze=False)
        meta = ds.metadata
        comps = ds.compartments
        objects = "cells" if "cell" in comps else "nuclei"
        for r, (tier, idx, total) in enumerate(rows):
            for c in range(ncols):
                ax = axes[r, c]
                ax.set_axis_off()
                if c >= idx.size:
                    continue
                i = int(idx[c])
                m = ds.masks(i)
                rgb = composite(ds.images(i, variant)) if ds.has_images else semantic_rgb(m.semantic)
                shown = outlined(rgb, m.cell if "cell" in comps else None, m.nucleus if "nucleus" in comps else None)
                ax.imshow(shown if outlines else rgb, interpolation="nearest")
                ax.set_title(f"#{i}  {int(meta['count'][i])} {objects}", fontsize=8)
            axes[r, 0].text(
                -0.08, 0.5, f"{tier}\n({total} images)", transform=axes[r, 0].transAxes,
                ha="right", va="center", fontsize=10, rotation=90,
            )
        what = variant if ds.has_images else "masks only"
        legend = ", ".join(f"{c} {colour}" for c, colour in (("cells", "yellow"), ("nuclei", "magenta"))
                           if c[:-1] in comps or (c == "nuclei" and "nucleus" in comps))
        fig.suptitle(f"{ds.path.name}: {what}; outlines: {legend}", fontsize=10)
        fig.tight_layout()
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    return out
