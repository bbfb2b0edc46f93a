"""Cell density measured on masks, and density tiers defined by thresholds on one measure.

Public API: :data:`MEASURES`, :func:`measure`, :class:`TierScheme`, :data:`DEFAULT_TIERS`.

A tier is a named interval of one measure with thresholds stored in every benchmark set, so
"high" means the same density in every set that uses the same scheme.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cellgen.errors import CellgenError
from cellgen.masks import touching_pixels

MEASURES = {
    "count": "number of cells",
    "cells_per_mm2": "cells per square millimetre of image area",
    "area_fraction": "fraction of the image covered by cells",
    "touching_fraction": "fraction of cells that touch another cell (8-connectivity)",
    "mean_nn_distance_um": "mean distance from each cell centroid to its nearest neighbour's, in micrometres",
}


def measure(cell: np.ndarray, pixel_size_um: float) -> dict[str, float]:
    """All density measures of one cell instance map (ids need not be contiguous)."""
    cell = np.asarray(cell)
    if cell.ndim != 2:
        raise CellgenError(f"density needs an (H, W) cell instance map, got shape {cell.shape}")
    if pixel_size_um <= 0:
        raise CellgenError(f"pixel size must be positive, got {pixel_size_um}")
    ids, inverse = np.unique(cell.ravel(), return_inverse=True)
    inverse = inverse.reshape(cell.shape)
    objects = ids != 0
    n = int(objects.sum())
    area_mm2 = cell.size * (pixel_size_um / 1000.0) ** 2
    result = {
        "count": float(n),
        "cells_per_mm2": n / area_mm2,
        "area_fraction": float((cell != 0).mean()),
        "touching_fraction": float("nan"),
        "mean_nn_distance_um": float("nan"),
    }
    if n == 0:
        return result
    touching = np.zeros(ids.size, dtype=bool)
    touching[np.unique(inverse[touching_pixels(cell)])] = True
    result["touching_fraction"] = float(touching[objects].mean())
    if n >= 2:
        yy, xx = np.indices(cell.shape)
        counts = np.bincount(inverse.ravel(), minlength=ids.size).astype(float)
        cy = np.bincount(inverse.ravel(), yy.ravel(), minlength=ids.size) / np.maximum(counts, 1)
        cx = np.bincount(inverse.ravel(), xx.ravel(), minlength=ids.size) / np.maximum(counts, 1)
        centroids = np.stack([cy[objects], cx[objects]], 1)
        dist, _ = cKDTree(centroids).query(centroids, k=2)
        result["mean_nn_distance_um"] = float(dist[:, 1].mean() * pixel_size_um)
    return result


@dataclass(frozen=True)
class TierScheme:
    """Tiers as consecutive half-open intervals of one measure: ``[t_i, t_{i+1})``.

    ``thresholds`` has one fewer entry than ``names`` and is increasing. For a measure that
    falls as density rises (nearest-neighbour distance) tiers are still named from the
    lowest density up, so the intervals are mirrored (``descending``).
    """

    measure: str = "cells_per_mm2"
    thresholds: tuple[float, ...] = (700.0, 1600.0)
    names: tuple[str, ...] = ("low", "medium", "high")

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise CellgenError(f"unknown density measure '{self.measure}'; choose from: {', '.join(MEASURES)}")
        if len(self.thresholds) != len(self.names) - 1:
            raise CellgenError(f"{len(self.names)} tiers need {len(self.names) - 1} thresholds, got {len(self.thresholds)}")
        if not all(math.isfinite(t) for t in self.thresholds):
            raise CellgenError(f"tier thresholds must be finite numbers, got {list(self.thresholds)}")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise CellgenError(f"tier thresholds must increase, got {list(self.thresholds)}")
        if len(set(self.names)) != len(self.names):
            raise CellgenError(f"tier names must be distinct, got {list(self.names)}")

    @property
    def descending(self) -> bool:
        return self.measure == "mean_nn_distance_um"

    def assign(self, value: float) -> str:
        if value != value:  # NaN: an empty image is the sparsest there is
            return self.names[0]
        index = int(np.searchsorted(np.asarray(self.thresholds), value, side="right"))
        if self.descending:
            index = len(self.names) - 1 - index
        return self.names[index]

    def to_json(self) -> str:
        return json.dumps({"measure": self.measure, "thresholds": list(self.thresholds), "names": list(self.names)})

    @classmethod
    def from_json(cls, text: str) -> "TierScheme":
        try:
            d = json.loads(text)
            return cls(d["measure"], tuple(float(t) for t in d["thresholds"]), tuple(d["names"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CellgenError(f"unreadable tier scheme {text!r}: {err}") from None

    @classmethod
    def parse(cls, measure: str, thresholds: str, names: str = "low,medium,high") -> "TierScheme":
        """From command-line strings: ``--tier-measure``, ``--tier-thresholds 700,1600``."""
        try:
            values = tuple(float(t) for t in thresholds.split(",") if t.strip())
        except ValueError:
            raise CellgenError(f"--tier-thresholds must be comma-separated numbers, got {thresholds!r}") from None
        return cls(measure, values, tuple(n.strip() for n in names.split(",") if n.strip()))


# 700 and 1600 cells/mm^2: at 0.5 um/px a 256 x 256 field (0.0164 mm^2) holds < 11.5 cells in
# "low", 11.5-26 in "medium" and more in "high", which for ~18 um cells spans sparse to crowded.
DEFAULT_TIERS = TierScheme()
