"""Small real-data reference sets, built from data that packages ship (no download).

``dsb2018``: one fluorescence nucleus image of the 2018 Data Science Bowl with its expert
instance mask (512 x 512, 125 nuclei), as shipped in the stardist package
(``stardist/data/images/img2d.tif``, ``mask2d.tif``; BSD-3-Clause). It has a nucleus channel
only, so the set declares ``compartments = ["nucleus"]`` and the bench scores nuclei alone;
its cytoplasm channel is zero and each "cell" mask equals its nucleus.

Public API: :data:`REAL_SETS`, :func:`build_real_set`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import tifffile

from cellgen.density import DEFAULT_TIERS
from cellgen.errors import CellgenError
from cellgen.masks import Masks, relabel_sequential, semantic_from_instances
from cellgen.pipeline import SourceItem, write_set

DSB_ATTRIBUTION = (
    "Image and nucleus mask from the 2018 Data Science Bowl (Caicedo et al., 'Nucleus segmentation across "
    "imaging experiments: the 2018 Data Science Bowl', Nature Methods 16, 1247-1253, 2019), as shipped in "
    "the stardist package 0.9.2 (stardist/data/images/img2d.tif and mask2d.tif, BSD-3-Clause)."
)
# The DSB images come without a pixel size; 0.5 um/px is nominal, recorded as such.
DSB_NOMINAL_PIXEL_SIZE_UM = 0.5

REAL_SETS = {"dsb2018": "one real DSB 2018 fluorescence nucleus image with its expert mask (125 nuclei, 512x512)"}


def _stardist_file(name: str) -> Path:
    spec = importlib.util.find_spec("stardist")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CellgenError("the DSB 2018 reference image ships in the stardist package: pip install stardist==0.9.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / name
    if not path.exists():
        raise CellgenError(f"stardist is installed but {path} is missing; reinstall stardist==0.9.2")
    return path


def load_dsb2018() -> tuple[np.ndarray, np.ndarray]:
    """The raw DSB image (uint16, values 0..255) and its instance mask (uint32)."""
    image = tifffile.imread(_stardist_file("img2d.tif"))
    mask = tifffile.imread(_stardist_file("mask2d.tif"))
    if image.shape != mask.shape or image.ndim != 2:
        raise CellgenError(f"unexpected DSB reference shapes {image.shape} / {mask.shape}")
    return image, relabel_sequential(mask)


def build_real_set(name: str, path, overwrite: bool = False, progress: bool = False) -> Path:
    if name not in REAL_SETS:
        raise CellgenError(f"unknown real set '{name}'; choose from: {', '.join(REAL_SETS)}")
    raw, nuclei = load_dsb2018()
    scale = 255.0 if raw.max() <= 255 else float(np.iinfo(raw.dtype).max)
    image = np.stack([raw.astype(np.float32) / scale, np.zeros(raw.shape, np.float32)])
    masks = Masks(semantic_from_instances(nuclei, nuclei), nuclei, nuclei.copy())

    def source(_i: int) -> SourceItem:
        return SourceItem(masks, image, seed=0, source="real:dsb2018")

    return write_set(
        path, 1, source, image_size=raw.shape, pixel_size_um=DSB_NOMINAL_PIXEL_SIZE_UM, tiers=DEFAULT_TIERS,
        variants=[], recipe={"source": "real:dsb2018", "stardist": "0.9.2"}, command=f"cellgen datasets real {name}",
        overwrite=overwrite, progress=progress,
        extra_attrs={"compartments": json.dumps(["nucleus"]), "attribution": DSB_ATTRIBUTION,
                     "pixel_size_nominal": 1},
    )
