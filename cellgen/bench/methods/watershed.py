"""Classical baseline with scikit-image only, so the bench always has one method that runs.

Nuclei: Gaussian smoothing, Otsu foreground, watershed of the distance transform from one
seed per distance peak (splits touching nuclei). Cells: seeded watershed from those nuclei
on the inverted cytoplasm channel, inside that channel's foreground (Otsu on log
intensity); cell ``i`` contains nucleus ``i``, the same id.

All lengths are given in micrometres and turned into pixels with the image's pixel size,
so one set of defaults serves any magnification.
"""

from __future__ import annotations

import numpy as np
import scipy
import skimage
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from cellgen.bench.methods.base import Method, Segmentation, check_image
from cellgen.errors import CellgenError


def _rescale(channel: np.ndarray) -> np.ndarray:
    # robust percentiles so a few hot pixels do not compress the dynamic range
    lo, hi = np.percentile(channel, (0.5, 99.8))
    if hi <= lo:
        return np.zeros_like(channel, dtype=np.float32)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    # Otsu is undefined on a constant image; such an image has no foreground
    return float(threshold_otsu(values)) if np.ptp(values) > 0 else np.inf


class Watershed(Method):
    """Otsu + distance-transform watershed for nuclei, seeded watershed for cells.

    Options (lengths in micrometres):

    - ``nucleus_diameter_um`` (8.0): typical nucleus diameter; sets the smoothing, the
      minimum spacing of nucleus seeds and the smallest nucleus kept.
    - ``smoothing`` (0.12): Gaussian sigma as a fraction of the nucleus diameter.
    - ``seed_spacing`` (0.5): minimum distance between two nucleus seeds, as a fraction of
      the nucleus diameter; lower splits more.
    - ``min_nucleus_fraction`` (0.2): nuclei smaller than this fraction of the typical
      nucleus area are dropped as debris.
    - ``cell_threshold_factor`` (1.0): multiplies the cytoplasm threshold (Otsu on log
      intensity); below 1 grows cells into dimmer cytoplasm.
    """

    name = "watershed"
    compartments = ("cell", "nucleus")

    def __init__(
        self,
        nucleus_diameter_um: float = 8.0,
        smoothing: float = 0.12,
        seed_spacing: float = 0.5,
        min_nucleus_fraction: float = 0.2,
        cell_threshold_factor: float = 1.0,
    ):
        if nucleus_diameter_um <= 0:
            raise CellgenError(f"watershed: nucleus_diameter_um must be positive, got {nucleus_diameter_um}")
        if cell_threshold_factor <= 0:
            raise CellgenError(f"watershed: cell_threshold_factor must be positive, got {cell_threshold_factor}")
        self.nucleus_diameter_um = float(nucleus_diameter_um)
        self.smoothing = float(smoothing)
        self.seed_spacing = float(seed_spacing)
        self.min_nucleus_fraction = float(min_nucleus_fraction)
        self.cell_threshold_factor = float(cell_threshold_factor)

    def describe(self) -> dict:
        return {
            "method": self.name,
            "nucleus_diameter_um": self.nucleus_diameter_um,
            "smoothing": self.smoothing,
            "seed_spacing": self.seed_spacing,
            "min_nucleus_fraction": self.min_nucleus_fraction,
            "cell_threshold_factor": self.cell_threshold_factor,
            "channels": {"nucleus": 0, "cytoplasm": 1},
            "versions": {"scikit-image": skimage.__version__, "scipy": scipy.__version__, "numpy": np.__version__},
        }

    def settings_for_set(self, pixel_size_um: float) -> dict:
        diameter = self.nucleus_diameter_um / pixel_size_um
        return {"nucleus_diameter_px": diameter, "smoothing_sigma_px": max(self.smoothing * diameter, 0.5),
                "seed_spacing_px": max(int(round(self.seed_spacing * diameter)), 1)}

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        image = check_image(image)
        if not pixel_size_um or pixel_size_um <= 0:
            raise CellgenError(f"watershed: pixel size must be positive, got {pixel_size_um}")
        diameter = self.nucleus_diameter_um / pixel_size_um
        sigma = max(self.smoothing * diameter, 0.5)
        nucleus = self._nuclei(_rescale(image[0]), diameter, sigma)
        cell = self._cells(_rescale(image[1]), nucleus, sigma)
        return Segmentation(cell=cell.astype(np.uint32), nucleus=nucleus.astype(np.uint32))

    def _nuclei(self, channel: np.ndarray, diameter: float, sigma: float) -> np.ndarray:
        smooth = gaussian(channel, sigma)
        foreground = ndi.binary_fill_holes(smooth > _otsu(smooth))
        min_area = self.min_nucleus_fraction * np.pi * diameter**2 / 4
        foreground = remove_small_objects(foreground, max(int(min_area), 1))
        if not foreground.any():
            return np.zeros(channel.shape, np.int32)
        # smoothing the distance map keeps one peak per roundish nucleus despite ragged edges
        distance = gaussian(ndi.distance_transform_edt(foreground), 1.0)
        spacing = max(int(round(self.seed_spacing * diameter)), 1)
        peaks = peak_local_max(
            distance, min_distance=spacing, labels=ndi.label(foreground)[0], exclude_border=False
        )
        markers = np.zeros(channel.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)
        # watershed can leave slivers between seeds: drop them like debris, then renumber
        small = np.bincount(labels.ravel()) < min_area
        small[0] = False
        labels[small[labels]] = 0
        return relabel_sequential(labels)[0]

    def _cells(self, channel: np.ndarray, nucleus: np.ndarray, sigma: float) -> np.ndarray:
        if nucleus.max() == 0:
            return np.zeros(channel.shape, np.int32)
        smooth = gaussian(channel, sigma)
        # Otsu on log intensity: cytoplasm brightness varies several-fold between cells, and
        # a linear Otsu threshold set by the bright ones cuts the dim ones away
        offset = 0.01
        level = np.exp(_otsu(np.log(smooth + offset))) - offset
        foreground = (smooth > self.cell_threshold_factor * level) | (nucleus > 0)
        foreground = ndi.binary_fill_holes(foreground)
        # cytoplasm dims towards the cell edge, so borders between touching cells are valleys
        # of the smoothed channel; foreground without a nucleus is left unlabelled
        return watershed(-smooth, markers=nucleus, mask=foreground)
