"""Border exclusion: objects touching the image border are left out of scoring.

An object cut by the image edge is only part of a cell, and neither truth nor prediction can
say where the rest lies. The NeurIPS 2022 cell-segmentation challenge therefore drops every
true and predicted object with a pixel in the outer 2-pixel band of the image before
matching; ``--exclude-border PX`` does the same with a band of PX pixels (0: keep all).

Public API: :func:`drop_border_objects`.
"""

from __future__ import annotations

import numpy as np

from cellgen.errors import CellgenError


def drop_border_objects(labels: np.ndarray, px: int) -> np.ndarray:
    """A copy of ``labels`` without the objects that have a pixel within ``px`` of the border."""
    labels = np.asarray(labels)
    if px < 0:
        raise CellgenError(f"--exclude-border must be 0 or more pixels, got {px}")
    if px == 0 or labels.size == 0:
        return labels
    band = np.ones(labels.shape, bool)
    band[px:-px, px:-px] = False
    touching = np.unique(labels[band])
    touching = touching[touching != 0]
    if touching.size == 0:
        return labels
    return np.where(np.isin(labels, touching), 0, labels).astype(labels.dtype, copy=False)
