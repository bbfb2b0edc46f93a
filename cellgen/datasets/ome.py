"""OME exports of a benchmark set: OME-Zarr (written with ome-zarr-py) and OME-TIFF (tifffile).

Both carry the pixel size in micrometres, the channel names and the instance masks, so a
set opens at its physical scale in napari, Fiji/Bio-Formats, QuPath or any NGFF reader.

OME-Zarr, one NGFF image (version 0.4, Zarr v2: the version every NGFF reader reads) per
image and variant, mirroring the folder export::

    DIR/images/NNNNN.ome.zarr               (c, y, x) uint16, nucleus then cytoplasm;
                                            multiscales scale [1, px, px] in micrometer
        labels/cells, labels/nuclei         (y, x) uint32 instances (a nucleus has its cell's id)
        .zattrs "cellgen"                   the image's metadata row, variant, noise, source set
    DIR/noisy/<variant>/NNNNN.ome.zarr      the same for each noise variant
    DIR/masks/NNNNN.ome.zarr                masks-only sets: the semantic map as the image
    DIR/metadata.csv                        one row per image

OME-TIFF: ``.ome.tif`` files in the folder export's layout (``images/``, ``noisy/<variant>/``,
``masks/{semantic,cell,nucleus}/``), each with PhysicalSizeX/Y and channel names.

A nucleus-only set (imported annotations) gets no ``cells`` labels. Every file or image
group appears complete or not at all: each is written beside its place and renamed in. An
OME-Zarr export that was interrupted resumes when rerun: an image group whose ``cellgen``
record (metadata row, variant, noise, the set's recipe and checkpoint hashes) matches is kept.

Public API: :func:`write_ome_tiff`, :func:`write_ome_zarr_image`, :func:`export_ome_zarr`,
:func:`image_record`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from cellgen.datasets.h5 import CHANNELS, CLEAN, BenchmarkSet
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path

UNIT = "micrometer"
LABEL_NAMES = {"cell": "cells", "nucleus": "nuclei"}
# display colours as NGFF "omero" metadata and in napari: nucleus blue, cytoplasm green
CHANNEL_COLORS = {"nucleus": "0000FF", "cytoplasm": "00FF00", "semantic": "FFFFFF"}


def write_ome_tiff(path, array: np.ndarray, axes: str, pixel_size_um: float, channel_names=None) -> Path:
    """One OME-TIFF with the physical pixel size (and channel names for a ``CYX`` image)."""
    metadata = {"axes": axes, "PhysicalSizeX": float(pixel_size_um), "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": float(pixel_size_um), "PhysicalSizeYUnit": "µm"}
    if channel_names:
        metadata["Channel"] = {"Name": list(channel_names)}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, ome=True, photometric="minisblack", metadata=metadata, compression="zlib")
    return Path(path)


def _json_value(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN (psi of a simulated image)
    return value


def image_record(ds: BenchmarkSet, index: int, variant: str) -> dict:
    """What the exported image is: its metadata row, the variant and its noise, the source set."""
    meta = ds.metadata
    record = {column: _json_value(values[index]) for column, values in meta.items()}
    attrs = ds.attrs
    record.update(variant=variant, pixel_size_um=ds.pixel_size_um, source_set=ds.path.name,
                  tier_scheme=json.loads(ds.tier_scheme.to_json()),
                  source_recipe_sha256=hashlib.sha256(str(attrs.get("recipe", "")).encode()).hexdigest(),
                  generator_sha256=attrs.get("generator_sha256", ""), renderer_sha256=attrs.get("renderer_sha256", ""))
    if variant != CLEAN and variant in ds.variants:
        record["noise"] = json.loads(ds.noise_params(variant))
        record["snr_db"] = [_json_value(v) for v in ds.snr_db(variant)[index]]
    return record


def _omero(names) -> dict:
    return {"channels": [{"label": n, "color": CHANNEL_COLORS.get(n, "FFFFFF"), "active": True,
                          "window": {"start": 0, "end": 65535, "min": 0, "max": 65535}} for n in names],
            "rdefs": {"model": "color"}}


def write_ome_zarr_image(path, image: np.ndarray, labels: dict[str, np.ndarray], pixel_size_um: float,
                         channel_names=CHANNELS, attrs: dict | None = None) -> Path:
    """One NGFF image group: ``image`` (C, Y, X) or (Y, X), its label images, the pixel size."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image, write_labels

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FormatV04()
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        root = zarr.open_group(str(staging), mode="w", zarr_format=2)
        spatial = {"y": float(pixel_size_um), "x": float(pixel_size_um)}
        units = {"y": UNIT, "x": UNIT}
        if image.ndim == 3:
            write_image(image, root, scale_factors=[], axes="cyx", fmt=fmt, scale={"c": 1.0, **spatial},
                        axes_units=units, name=path.name.split(".")[0], omero=_omero(channel_names))
        else:
            write_image(image, root, scale_factors=[], axes="yx", fmt=fmt, scale=spatial, axes_units=units,
                        name=path.name.split(".")[0])
        for name, lab in labels.items():
            write_labels(lab.astype(np.uint32), root, name=name, scaler=None, scale_factors=[], axes="yx", fmt=fmt,
                         scale=spatial, axes_units=units, label_metadata={"source": {"image": "../../"}})
        if attrs:
            root.attrs["cellgen"] = attrs
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _replace_dir(new: Path, target: Path) -> None:
    """Put a finished folder in place of ``target``; an old one is moved aside, then removed."""
    os.chmod(new, 0o777 & ~_umask())  # mkdtemp makes 0700
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_ome_zarr(ds: BenchmarkSet, out: Path, variants: list[str], progress: bool = True) -> None:
    """Every image of ``ds`` in ``variants`` as an NGFF image with its labels (see the module doc)."""
    try:
        import dask
        import ome_zarr  # noqa: F401
    except ImportError:
        raise CellgenError("--format ome-zarr needs the ome-zarr package: pip install 'cellgen[ome-zarr]'") from None
    from tqdm import tqdm

    kinds = [k for k in ("cell", "nucleus") if k in ds.compartments]
    with dask.config.set(scheduler="synchronous"):  # one small image at a time: threads only cost here
        for i in tqdm(range(ds.n), desc=f"exporting to {out}", unit="img", disable=not progress):
            jobs = [(out / "masks", "masks")] if not variants else [
                (out / "images" if v == CLEAN else out / "noisy" / v, v) for v in variants]
            todo = []
            for folder, v in jobs:
                record = image_record(ds, i, v)
                if not _already_exported(folder / f"{i:05d}.ome.zarr", record):
                    todo.append((folder / f"{i:05d}.ome.zarr", v, record))
            if not todo:
                continue  # a rerun after an interruption resumes here
            masks = ds.masks(i)
            labels = {LABEL_NAMES[k]: getattr(masks, k) for k in kinds}
            for path, v, record in todo:
                if v == "masks":
                    write_ome_zarr_image(path, masks.semantic, labels, ds.pixel_size_um, channel_names=("semantic",),
                                         attrs=record)
                else:
                    write_ome_zarr_image(path, ds.images(i, v), labels, ds.pixel_size_um, attrs=record)


def _already_exported(path: Path, record: dict) -> bool:
    """An image group written earlier from the same image of the same set (groups appear whole)."""
    try:
        return json.loads((path / ".zattrs").read_text()).get("cellgen") == record
    except (OSError, ValueError):
        return False
