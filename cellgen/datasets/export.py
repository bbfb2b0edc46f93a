"""Export a benchmark set as a folder of TIFF or PNG files, one file per image and per mask.

Layout (``NNNNN`` = zero-padded image index)::

    DIR/images/NNNNN.tif            (2, H, W) uint16, nucleus then cytoplasm   [tiff]
    DIR/images/NNNNN.png            16-bit RGB: green cytoplasm, blue nucleus   [png]
    DIR/noisy/<variant>/NNNNN.*     same, for each noise variant
    DIR/masks/semantic/NNNNN.png    uint8 0 / 128 / 255                         [both]
    DIR/masks/cell/NNNNN.tif|png    instance ids (uint32 TIFF; uint16 PNG)
    DIR/masks/nucleus/NNNNN.tif|png nucleus ids = their cell's id
                                    (only the set's annotated compartments: a nucleus-only
                                    set has no masks/cell)
    DIR/metadata.csv                one row per image

This is also the layout ``cellgen bench --method predictions`` reads label maps from.
``ome-tiff`` writes the same layout as ``.ome.tif`` files with the pixel size (the semantic
map too); ``ome-zarr`` writes one OME-NGFF image per image and variant with its labels
(see :mod:`cellgen.datasets.ome`).

Public API: :func:`export_set`, :func:`read_label_file`, :func:`mask_file`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm import tqdm

from cellgen.datasets.h5 import CHANNELS, CLEAN, METADATA_COLUMNS, BenchmarkSet
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path

FORMATS = ("tiff", "png", "ome-tiff", "ome-zarr")
_EXT = {"tiff": ".tif", "png": ".png", "ome-tiff": ".ome.tif"}


def mask_file(root, kind: str, index: int, fmt: str) -> Path:
    ext = ".png" if kind == "semantic" and fmt != "ome-tiff" else _EXT[fmt]
    return Path(root) / "masks" / kind / f"{index:05d}{ext}"


def _write_image(path: Path, image: np.ndarray, fmt: str, pixel_size_um: float | None = None):
    if fmt == "ome-tiff":
        from cellgen.datasets.ome import write_ome_tiff

        write_ome_tiff(path, image, "CYX", pixel_size_um, channel_names=CHANNELS)
        return
    with atomic_path(path) as tmp:
        if fmt == "tiff":
            tifffile.imwrite(tmp, image, photometric="minisblack", metadata={"axes": "CYX"})
        else:
            bgr = np.stack([image[0], image[1], np.zeros_like(image[0])], -1)  # cv2 order: B, G, R
            if not cv2.imwrite(str(tmp), bgr):
                raise CellgenError(f"could not write {path}")


def _write_labels(path: Path, labels: np.ndarray, fmt: str, pixel_size_um: float | None = None):
    if fmt == "ome-tiff":
        from cellgen.datasets.ome import write_ome_tiff

        write_ome_tiff(path, labels if labels.dtype == np.uint8 else labels.astype(np.uint32), "YX", pixel_size_um)
        return
    with atomic_path(path) as tmp:
        if path.suffix == ".tif":
            tifffile.imwrite(tmp, labels.astype(np.uint32))
        else:
            if labels.max(initial=0) > 65535:
                raise CellgenError(f"{path}: more than 65535 objects do not fit a 16-bit PNG; export as tiff")
            dtype = np.uint8 if labels.dtype == np.uint8 else np.uint16
            if not cv2.imwrite(str(tmp), labels.astype(dtype)):
                raise CellgenError(f"could not write {path}")


def read_label_file(path) -> np.ndarray:
    """Read one label image (TIFF or PNG) as a 2-D integer array."""
    path = Path(path)
    if not path.exists():
        raise CellgenError(f"no such file: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ValueError("not a readable image")
    except Exception as err:  # tifffile and cv2 raise many kinds for a bad file
        raise CellgenError(f"{path} is not a readable label image: {err}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise CellgenError(f"{path}: a label image must be 2-D integer, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _export_files(ds: BenchmarkSet, out: Path, fmt: str, variants: list[str], progress: bool) -> None:
    px = ds.pixel_size_um
    for i in tqdm(range(ds.n), desc=f"exporting to {out}", unit="img", disable=not progress):
        for v in variants:
            folder = out / "images" if v == CLEAN else out / "noisy" / v
            _write_image(folder / f"{i:05d}{_EXT[fmt]}", ds.images(i, v), fmt, px)
        m = ds.masks(i)
        _write_labels(mask_file(out, "semantic", i, fmt), m.semantic, fmt, px)
        for kind in ds.compartments:  # a nucleus-only set has no cell masks to give
            _write_labels(mask_file(out, kind, i, fmt), getattr(m, kind), fmt, px)


def export_set(path, out_dir, fmt: str = "tiff", variants: list[str] | None = None, progress: bool = True) -> Path:
    if fmt not in FORMATS:
        raise CellgenError(f"unknown export format '{fmt}'; choose from: {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CellgenError(f"{out} exists and is not a folder")
    with BenchmarkSet(path) as ds:
        variants = list(ds.variants) if variants is None else variants
        for v in variants:
            ds.require_variant(v)
        if fmt == "ome-zarr":
            from cellgen.datasets.ome import export_ome_zarr

            export_ome_zarr(ds, out, variants, progress=progress)
        else:
            _export_files(ds, out, fmt, variants, progress)
        meta = ds.metadata
        with atomic_path(out / "metadata.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                columns = list(METADATA_COLUMNS)
                writer.writerow(columns)
                for i in range(ds.n):
                    writer.writerow([meta[c][i] for c in columns])
    return out
