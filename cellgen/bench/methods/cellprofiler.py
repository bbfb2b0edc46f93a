"""CellProfiler's own segmentation algorithms, run headless through ``cellprofiler_library``.

This is the classic two-module pipeline: IdentifyPrimaryObjects on the nucleus channel,
then IdentifySecondaryObjects (Propagation by default) on the cytoplasm channel, seeded by
those nuclei. The library functions hold the algorithms of CellProfiler 5's modules of the
same names; calling them directly needs no pipeline file, Java VM or worker processes.

Install: ``pip install cellprofiler-library-nightly==5.0.0.dev784
centriole-nightly==5.0.0.dev784`` (centriole holds the propagation and morphology code).
``cellprofiler-core-nightly`` is not needed: these modules never import it, and it brings
a Java bridge and cloud-storage clients.
"""

from __future__ import annotations

import importlib.metadata
import warnings

import numpy as np

from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation, check_image
from cellgen.errors import CellgenError

PIP_COMMAND = "pip install cellprofiler-library-nightly==5.0.0.dev784 centriole-nightly==5.0.0.dev784"

# settings are spelled as in the CellProfiler GUI; these tables validate them before import
THRESHOLD_METHODS = ("Minimum Cross-Entropy", "Otsu", "Robust Background")
UNCLUMP_METHODS = ("Intensity", "Shape", "None")
DIVIDING_LINES = ("Intensity", "Shape", "Propagate", "None")
SECONDARY_METHODS = ("Propagation", "Watershed - Gradient", "Watershed - Image", "Distance - N", "Distance - B")


def _key(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    # "otsu", "minimum_cross_entropy", "watershed-gradient" all work from the command line
    for a in allowed:
        if _key(value) == _key(a):
            return a
    raise CellgenError(f"cellprofiler: unknown {what} '{value}'; choose from: {', '.join(allowed)}")


def _unit_range(channel: np.ndarray) -> np.ndarray:
    # CellProfiler works on intensities scaled to [0, 1] (as it loads files); cellgen images
    # already are, so only out-of-range inputs are stretched
    channel = channel.astype(np.float64)
    lo, hi = float(channel.min()), float(channel.max())
    if lo >= 0.0 and hi <= 1.0:
        return channel
    return (channel - lo) / (hi - lo) if hi > lo else np.zeros_like(channel)


class CellProfiler(Method):
    """IdentifyPrimaryObjects (nuclei) + IdentifySecondaryObjects (cells).

    Options:

    - ``nucleus_diameter_um`` ((4.0, 16.0)): typical nucleus diameter range, min and max, in
      micrometres; or ``nucleus_diameter_px`` to give it in pixels (wins when set). Objects
      outside the range are discarded; the minimum also sets CellProfiler's declumping
      smoothing and maxima suppression.
    - ``threshold_method`` ("Otsu"), ``threshold_smoothing`` (1.3488, the GUI default),
      ``threshold_correction`` (1.0): primary (nucleus) threshold;
      ``cell_threshold_method`` ("Otsu"), ``cell_threshold_correction`` (1.0): secondary.
    - ``declump`` ("Shape") and ``dividing_lines`` ("Shape"): how clumped nuclei are
      recognised and split (Intensity, Shape, None / Intensity, Shape, Propagate, None).
    - ``secondary_method`` ("Propagation"), ``regularization`` (0.05): how cells grow from
      the nuclei; ``distance_to_dilate_um`` (5.0) for the Distance methods.
    - ``exclude_border_objects`` (False): CellProfiler's default drops nuclei touching the
      edge, but cellgen's ground truth keeps partial cells, so this is off.
    """

    name = "cellprofiler"
    compartments = ("cell", "nucleus")

    def __init__(
        self,
        nucleus_diameter_um: tuple[float, float] = (4.0, 16.0),
        nucleus_diameter_px: tuple[float, float] | None = None,
        threshold_method: str = "Minimum Cross-Entropy",
        threshold_smoothing: float = 1.3488,
        threshold_correction: float = 1.0,
        cell_threshold_method: str = "Minimum Cross-Entropy",
        cell_threshold_correction: float = 1.0,
        declump: str = "Shape",
        dividing_lines: str = "Shape",
        secondary_method: str = "Propagation",
        regularization: float = 0.05,
        distance_to_dilate_um: float = 5.0,
        exclude_border_objects: bool = False,
    ):
        for rng_name, rng in (("nucleus_diameter_um", nucleus_diameter_um), ("nucleus_diameter_px", nucleus_diameter_px)):
            if rng is not None and not (len(rng) == 2 and 0 < rng[0] < rng[1]):
                raise CellgenError(f"cellprofiler: {rng_name} must be (min, max) with 0 < min < max, got {rng}")
        self.nucleus_diameter_um = tuple(float(v) for v in nucleus_diameter_um)
        self.nucleus_diameter_px = None if nucleus_diameter_px is None else tuple(float(v) for v in nucleus_diameter_px)
        self.threshold_method = _choice(threshold_method, THRESHOLD_METHODS, "threshold method")
        self.threshold_smoothing = float(threshold_smoothing)
        self.threshold_correction = float(threshold_correction)
        self.cell_threshold_method = _choice(cell_threshold_method, THRESHOLD_METHODS, "threshold method")
        self.cell_threshold_correction = float(cell_threshold_correction)
        self.declump = _choice(declump, UNCLUMP_METHODS, "declump method")
        self.dividing_lines = _choice(dividing_lines, DIVIDING_LINES, "dividing-lines method")
        self.secondary_method = _choice(secondary_method, SECONDARY_METHODS, "secondary method")
        self.regularization = float(regularization)
        self.distance_to_dilate_um = float(distance_to_dilate_um)
        self.exclude_border_objects = bool(exclude_border_objects)

    def check(self) -> None:
        try:
            import cellprofiler_library.modules  # noqa: F401
        except ImportError as err:
            raise MethodUnavailable(f"cellprofiler: cellprofiler_library is not importable ({err}); install it: {PIP_COMMAND}") from None

    def describe(self) -> dict:
        versions = {}
        for dist in ("cellprofiler-library-nightly", "centriole-nightly"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = None
        return {
            "method": self.name,
            "nucleus_diameter_um": list(self.nucleus_diameter_um),
            "nucleus_diameter_px": None if self.nucleus_diameter_px is None else list(self.nucleus_diameter_px),
            "threshold_method": self.threshold_method,
            "threshold_smoothing": self.threshold_smoothing,
            "threshold_correction": self.threshold_correction,
            "cell_threshold_method": self.cell_threshold_method,
            "cell_threshold_correction": self.cell_threshold_correction,
            "declump": self.declump,
            "dividing_lines": self.dividing_lines,
            "secondary_method": self.secondary_method,
            "regularization": self.regularization,
            "distance_to_dilate_um": self.distance_to_dilate_um,
            "exclude_border_objects": self.exclude_border_objects,
            "channels": {"IdentifyPrimaryObjects": "nucleus (0)", "IdentifySecondaryObjects": "cytoplasm (1)"},
            "versions": versions,
        }

    def settings_for_set(self, pixel_size_um: float) -> dict:
        return {"nucleus_diameter_px": list(self._diameter_px(pixel_size_um)),
                "distance_to_dilate_px": max(int(round(self.distance_to_dilate_um / pixel_size_um)), 1)}

    def _diameter_px(self, pixel_size_um: float) -> tuple[int, int]:
        if self.nucleus_diameter_px is not None:
            lo, hi = self.nucleus_diameter_px
        else:
            lo, hi = (d / pixel_size_um for d in self.nucleus_diameter_um)
        return max(int(round(lo)), 1), max(int(round(hi)), 2)

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        self.check()
        image = check_image(image)
        if not pixel_size_um or pixel_size_um <= 0:
            raise CellgenError(f"cellprofiler: pixel size must be positive, got {pixel_size_um}")
        min_d, max_d = self._diameter_px(pixel_size_um)
        with warnings.catch_warnings():
            # the library still calls scipy.ndimage.measurements; harmless, but once per image
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="cellprofiler_library")
            return self._segment(image, min_d, max_d, pixel_size_um)

    def _segment(self, image: np.ndarray, min_d: int, max_d: int, pixel_size_um: float) -> Segmentation:
        from cellprofiler_library.modules import identifyprimaryobjects, identifysecondaryobjects
        from cellprofiler_library.opts.identifyprimaryobjects import UnclumpMethod, WatershedMethod
        from cellprofiler_library.opts.identifysecondaryobjects import SecondaryObjectMethod
        from cellprofiler_library.opts.threshold import Method as ThresholdMethod

        nucleus = identifyprimaryobjects(
            _unit_range(image[0]),
            threshold_method=ThresholdMethod(self.threshold_method),
            threshold_smoothing=self.threshold_smoothing,
            threshold_correction_factor=self.threshold_correction,
            min_size=min_d,
            max_size=max_d,
            exclude_size=True,
            exclude_border_objects=self.exclude_border_objects,
            unclump_method=UnclumpMethod(self.declump),
            watershed_method=WatershedMethod(self.dividing_lines),
        )
        nucleus = np.asarray(nucleus).astype(np.int32)
        cell = identifysecondaryobjects(
            _unit_range(image[1]),
            nucleus,
            # the watershed methods AND their foreground with the mask, so it cannot be None
            mask=np.ones(nucleus.shape, bool),
            secondary_object_method=SecondaryObjectMethod(self.secondary_method),
            threshold_method=ThresholdMethod(self.cell_threshold_method),
            threshold_smoothing=self.threshold_smoothing,
            threshold_correction_factor=self.cell_threshold_correction,
            regularization_factor=self.regularization,
            distance_to_dilate=max(int(round(self.distance_to_dilate_um / pixel_size_um)), 1),
            fill_holes=True,
        )
        # secondary objects take the number of the nucleus they grew from: ids already agree
        return Segmentation(cell=np.asarray(cell).astype(np.uint32), nucleus=nucleus.astype(np.uint32))
