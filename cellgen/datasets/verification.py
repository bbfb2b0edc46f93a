"""Is a set file what it claims to be? The checks behind ``datasets verify`` and ``bench``.

Two levels:

* the structure and tables (also alone, ``read_images=False``): the root attributes (recipe
  and tier scheme are JSON, thresholds finite and increasing, pixel size finite and
  positive), every dataset's shape and dtype, the mask contract of every image, and the
  metadata table recomputed from the masks (count, densities, tier);
* the images: every image array read in full, so unreadable (corrupt) chunks, images that
  are all zero, NaN SNR values and noise parameters that are not JSON are found.

:func:`verify_set` runs both; :func:`check_before_scoring`, what ``cellgen bench`` runs before
it segments anything, adds the registry sha256 of a registered set.

Both raise :class:`~cellgen.errors.DatasetError` with one line naming the first problems.

Public API: :func:`check_before_scoring`, :func:`verify_set`.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np

from cellgen.datasets.h5 import CLEAN, METADATA_COLUMNS, BenchmarkSet
from cellgen.density import measure
from cellgen.errors import CellgenError, DatasetError
from cellgen.masks import validate

#: measures recomputed from the masks must match the stored ones to this relative tolerance
_RTOL = 1e-9
_MAX_PROBLEMS = 20


class _Problems(list):
    def add(self, text: str):
        self.append(text)
        return len(self) >= _MAX_PROBLEMS

    def raise_if_any(self, path):
        if self:
            more = f" (+{len(self) - 3} more)" if len(self) > 3 else ""
            raise DatasetError(f"{path}: " + "; ".join(self[:3]) + more)


def check_before_scoring(path, entry: dict | None = None, read_images: bool = True) -> dict:
    """The checks of a set before it is scored; returns :func:`verify_set`'s summary.
    ``entry``: the registry entry when ``path`` is a registered set. Reading the images costs
    a decompression per image, little beside segmenting it, and catches what would otherwise
    be scored (all-zero images, NaN SNR, corrupt chunks); ``read_images=False`` skips it."""
    if entry is not None:
        _check_registered(path, entry)
    return _verify(path, read_images=read_images)


def verify_set(path) -> dict:
    """Every check, images included; returns a summary (n_images, image_size, variants, tiers)."""
    return _verify(path, read_images=True)


def _check_registered(path, entry: dict):
    from cellgen.datasets import registry

    check = getattr(registry, "is_registered_file", None)
    if check is not None:
        ok = check(path, entry)
    else:
        from cellgen.fileio import sha256_of

        ok = not entry.get("sha256") or sha256_of(path) == entry["sha256"]
    if not ok:
        raise DatasetError(f"{path} does not match the registered sha256 of this set: corrupt or altered; "
                           "download or build it again")


def _verify(path, read_images: bool) -> dict:
    try:
        ds = BenchmarkSet(path)
    except DatasetError:
        raise
    except CellgenError as err:  # e.g. a tier scheme with NaN thresholds
        raise DatasetError(f"{path}: {err}") from None
    with ds:
        problems = _Problems()
        _check_attributes(ds, problems)
        _check_layout(ds, problems)
        problems.raise_if_any(path)
        tiers = _check_masks_and_metadata(ds, problems)
        problems.raise_if_any(path)
        if read_images:
            _check_images(ds, problems)
            problems.raise_if_any(path)
        return {
            "path": str(path),
            "n_images": ds.n,
            "image_size": list(ds.image_size),
            "variants": ds.variants,
            "tiers": {t: tiers.get(t, 0) for t in ds.tier_scheme.names},
            "has_images": ds.has_images,
        }


def _check_attributes(ds: BenchmarkSet, problems: _Problems):
    attrs = ds._f.attrs
    for name in ("recipe", "channel_names", "variants"):
        try:
            json.loads(attrs.get(name, ""))
        except (TypeError, ValueError):
            problems.add(f"root attribute '{name}' is not JSON")
    if not (math.isfinite(ds.pixel_size_um) and ds.pixel_size_um > 0):
        problems.add(f"pixel_size_um is {ds.pixel_size_um}, not a positive number")
    if ds.n < 0 or len(ds.image_size) != 2 or min(ds.image_size) < 1:
        problems.add(f"n_images {ds.n} / image_size {list(ds.image_size)} are not a valid size")
    if not isinstance(ds.variants, list) or (ds.has_images and ds.variants[:1] != [CLEAN]):
        problems.add(f"variants attribute {ds.variants!r} does not list 'clean' first")


def _check_layout(ds: BenchmarkSet, problems: _Problems):
    f = ds._f
    n, (h, w) = ds.n, ds.image_size
    required = {
        "masks/semantic": ((n, h, w), np.uint8),
        "masks/cell": ((n, h, w), np.uint32),
        "masks/nucleus": ((n, h, w), np.uint32),
    }
    if ds.has_images:
        required["images"] = ((n, 2, h, w), np.uint16)
    for v in ds.variants if isinstance(ds.variants, list) else []:
        if v != CLEAN:
            required[f"noisy/{v}/images"] = ((n, 2, h, w), np.uint16)
            required[f"noisy/{v}/snr_db"] = ((n, 2), np.float32)
    for column, (dtype, _) in METADATA_COLUMNS.items():
        required[f"metadata/{column}"] = ((n,), None if dtype == "str" else np.dtype(dtype))
    for name, (shape, dtype) in required.items():
        d = f.get(name)
        if d is None:
            problems.add(f"dataset '{name}' is missing")
        elif not isinstance(d, h5py.Dataset):
            problems.add(f"'{name}' is not a dataset")
        elif d.shape != shape:
            problems.add(f"dataset '{name}' has shape {d.shape}, expected {shape}")
        elif dtype is None and not h5py.check_string_dtype(d.dtype):
            problems.add(f"dataset '{name}' has dtype {d.dtype}, expected strings")
        elif dtype is not None and d.dtype != dtype:
            problems.add(f"dataset '{name}' has dtype {d.dtype}, expected {np.dtype(dtype).name}")


def _check_masks_and_metadata(ds: BenchmarkSet, problems: _Problems) -> dict[str, int]:
    """The mask contract per image, and the metadata table against what the masks say."""
    n, size, scheme = ds.n, ds.image_size, ds.tier_scheme
    try:
        meta = ds.metadata
    except (OSError, ValueError) as err:
        problems.add(f"the metadata table cannot be read: {_first(err)}")
        return {}
    if not np.array_equal(meta["index"], np.arange(n)):
        problems.add("metadata column 'index' is not 0..N-1")
    if np.isinf(meta["psi"]).any():
        problems.add("metadata column 'psi' holds infinite values")
    tiers: dict[str, int] = {}
    measures = [c for c in METADATA_COLUMNS if c not in ("index", "seed", "psi", "source", "tier")]
    for i in range(n):
        try:
            m = ds.masks(i)
        except OSError as err:
            if problems.add(f"image {i} cannot be read (corrupt mask chunk): {_first(err)}"):
                break
            continue
        for p in validate(m.cell, m.nucleus, m.semantic, size):
            problems.add(f"image {i}: {p}")
        measured = measure(m.cell, ds.pixel_size_um)
        for column in measures:
            stored = float(meta[column][i])
            if not np.isclose(stored, measured[column], rtol=_RTOL, atol=1e-12, equal_nan=True):
                problems.add(f"image {i}: metadata {column} is {stored:g} but its masks give {measured[column]:g}")
        tier = str(meta["tier"][i])
        expect = scheme.assign(measured[scheme.measure])
        if tier != expect:
            problems.add(f"image {i}: tier '{tier}' but its {scheme.measure} {measured[scheme.measure]:g} "
                         f"with thresholds {list(scheme.thresholds)} says '{expect}'")
        tiers[tier] = tiers.get(tier, 0) + 1
        if len(problems) >= _MAX_PROBLEMS:
            break
    return tiers


def _check_images(ds: BenchmarkSet, problems: _Problems):
    f = ds._f
    for v in ds.variants:
        name = "images" if v == CLEAN else f"noisy/{v}/images"
        if v != CLEAN:
            try:
                json.loads(f[name].attrs.get("params", ""))
            except (TypeError, ValueError):
                problems.add(f"noise parameters of variant '{v}' are not JSON")
            snr = f[f"noisy/{v}/snr_db"][()]
            if np.isnan(snr).any():
                problems.add(f"variant '{v}': SNR is NaN for {int(np.isnan(snr).any(1).sum())} image(s)")
        counts = ds.metadata["count"]
        for i in range(ds.n):
            try:
                image = f[name][i]
            except OSError as err:
                if problems.add(f"{name} of image {i} cannot be read (corrupt chunk): {_first(err)}"):
                    return
                continue
            if not image.any():
                problems.add(f"{v} image {i} is all zero")
            elif counts[i] > 0 and not image[0].any():
                problems.add(f"{v} image {i} has {counts[i]:g} cells but an all-zero nucleus channel")
            if len(problems) >= _MAX_PROBLEMS:
                return


def _first(err) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
