"""Quality report: Fréchet distances between a generated set and its reference, per tier.

How cellgen data become the 3-channel images both networks read (fixed, documented in
``docs/quality.md``):

* fluorescence image (2, H, W), channel 0 nucleus, channel 1 cytoplasm, uint16 at full
  scale 65535 -> RGB = (0, cytoplasm, nucleus) / 65535: nucleus blue, cytoplasm green, as
  cellgen's previews show them, at the fixed full scale (no per-image stretch, so a
  brighter background counts);
* masks -> RGB = (cell outlines, cytoplasm, nucleus): red 1 on the inner boundary pixels of
  every cell instance (so touching cells stay apart), green 1 on cytoplasm (semantic 255),
  blue 1 on nucleus (semantic 128), black background.

A set whose image size differs from the reference's is first resampled to the
reference's size (images: antialiased bilinear; masks: nearest neighbour, before the
outlines are drawn), so outlines and edges have the same width in pixels in both sets. The
two sets should cover the same field of view (size x pixel size); the result records both.

Public API: :func:`quality_report`, :func:`report_rows`, :func:`report_table`, :func:`write_report`,
:func:`set_features`, :func:`images_to_rgb`, :func:`masks_to_rgb`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellgen.datasets.h5 import FULL_SCALE
from cellgen.errors import CellgenError
from cellgen.quality.frechet import fd_from_features


# -- cellgen data -> 3-channel images ------------------------------------------------------------
def images_to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 2, H, W) nucleus+cytoplasm at full scale 65535 -> (N, 3, H, W) float32 RGB in [0, 1].

    R = 0, G = cytoplasm, B = nucleus; float input is taken as already in [0, 1].
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 2:
        raise CellgenError(f"expected (N, 2, H, W) nucleus+cytoplasm images, got shape {x.shape}")
    x = x.astype(np.float32) / FULL_SCALE if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    return np.stack([np.zeros_like(x[:, 0]), x[:, 1], x[:, 0]], axis=1)


def masks_to_rgb(semantic: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(N, H, W) semantic (0/128/255) and cell instances -> (N, 3, H, W) float32 RGB.

    R = inner boundary of each cell instance, G = cytoplasm (255), B = nucleus (128).
    """
    from skimage.segmentation import find_boundaries

    semantic, cell = np.asarray(semantic), np.asarray(cell)
    if semantic.ndim == 2:
        semantic, cell = semantic[None], cell[None]
    if semantic.shape != cell.shape or semantic.ndim != 3:
        raise CellgenError(f"semantic {semantic.shape} and cell {cell.shape} masks must both be (N, H, W)")
    out = np.zeros((len(semantic), 3, *semantic.shape[1:]), np.float32)
    for i in range(len(semantic)):
        out[i, 0] = find_boundaries(cell[i], mode="inner")
        out[i, 1] = semantic[i] == 255
        out[i, 2] = semantic[i] == 128
    return out


def _resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).numpy()


def _resize_labels(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of (N, H, W) label maps (pixel centres, no new labels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = x.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return x[:, rows][:, :, cols]


# -- sets --------------------------------------------------------------------------------------
def _spread(n: int, k: int | None) -> np.ndarray:
    """``k`` evenly spaced indices of ``n`` (all when ``k`` is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def set_features(path, backbone, what: str, *, indices=None, size=None, batch_size: int = 16,
                 progress: bool = False) -> np.ndarray:
    """Features of a benchmark set's clean images (``what='images'``) or masks (``'masks'``).

    ``size`` (H, W) resamples first (see the module notes); default: the set's own size.
    """
    from tqdm import tqdm

    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(path) as ds:
        idx = np.arange(ds.n) if indices is None else np.asarray(indices, int)
        size = tuple(size or ds.image_size)
        if what == "images" and not ds.has_images:
            raise CellgenError(f"{path} is a masks-only set: no images to compare")
        out = []
        for start in tqdm(range(0, len(idx), batch_size), desc=f"{backbone.metric} {what} {Path(path).name}",
                          unit="batch", disable=not progress):
            chunk = np.sort(idx[start:start + batch_size])
            if what == "images":
                rgb = _resize_images(images_to_rgb(ds.images(chunk)), size)
            elif what == "masks":
                sem = _resize_labels(ds.masks_array("semantic", chunk), size)
                cell = _resize_labels(ds.masks_array("cell", chunk), size)
                rgb = masks_to_rgb(sem, cell)
            else:
                raise CellgenError(f"what must be 'images' or 'masks', got {what!r}")
            feats = backbone.features(rgb, batch_size=batch_size)
            # keep the caller's order even though HDF5 reads need sorted indices
            order = np.argsort(np.argsort(idx[start:start + batch_size]))
            out.append(feats[order])
        return np.concatenate(out) if out else np.zeros((0, backbone.feature_dim))


def _fd_entry(a: np.ndarray, b: np.ndarray) -> dict:
    entry = {"n_generated": int(len(a)), "n_reference": int(len(b)), "fd": None,
             "reference_split_half": None}
    if len(a) >= 2 and len(b) >= 2:
        entry["fd"] = fd_from_features(a, b)
    if len(b) >= 4:
        # two disjoint halves of the reference: the distance sampling noise alone gives at
        # about this many images (a floor to read the generated value against)
        entry["reference_split_half"] = fd_from_features(b[0::2], b[1::2])
    return entry


def quality_report(generated, reference, *, backbone, what=("images", "masks"),
                   max_images: int | None = None, batch_size: int = 16, progress: bool = False) -> dict:
    """Fréchet distances between ``generated`` and ``reference`` sets, overall and per tier.

    Tiers are the ones stored in each set (measured on its masks); both sets must use the
    same tier scheme. ``max_images`` takes that many evenly spaced images of each set.
    A tier with fewer than 2 images on either side gets ``fd: null``.
    """
    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(generated) as g, BenchmarkSet(reference) as r:
        if g.tier_scheme != r.tier_scheme:
            raise CellgenError(f"{generated} and {reference} use different tier schemes "
                               f"({g.tier_scheme.to_json()} vs {r.tier_scheme.to_json()}); tiers would not match")
        gi, ri = _spread(g.n, max_images), _spread(r.n, max_images)
        g_tiers, r_tiers = np.asarray(g.metadata["tier"])[gi], np.asarray(r.metadata["tier"])[ri]
        names = list(r.tier_scheme.names)
        size = tuple(r.image_size)
        sets = {
            "generated": {"path": str(generated), "n_images": g.n, "image_size": list(g.image_size),
                          "pixel_size_um": g.pixel_size_um, "field_of_view_um": g.image_size[0] * g.pixel_size_um,
                          "has_images": g.has_images},
            "reference": {"path": str(reference), "n_images": r.n, "image_size": list(r.image_size),
                          "pixel_size_um": r.pixel_size_um, "field_of_view_um": r.image_size[0] * r.pixel_size_um,
                          "has_images": r.has_images},
        }
        both_images = g.has_images and r.has_images
    result = {
        "metric": backbone.metric, "backbone": backbone.name, "feature_dim": backbone.feature_dim,
        "weights": backbone.weights, "weights_sha256": backbone.weights_sha256,
        "comparable_with_inception_fid": backbone.name == "inception",
        "compared_at_size": list(size), "sets": sets, "tiers": names, "results": {},
    }
    for kind in what:
        if kind == "images" and not both_images:
            result["results"][kind] = None  # a masks-only set has nothing to compare
            continue
        fg = set_features(generated, backbone, kind, indices=gi, size=size, batch_size=batch_size, progress=progress)
        fr = set_features(reference, backbone, kind, indices=ri, size=size, batch_size=batch_size, progress=progress)
        per = {"all": _fd_entry(fg, fr)}
        for t in names:
            per[t] = _fd_entry(fg[g_tiers == t], fr[r_tiers == t])
        result["results"][kind] = per
    return result


def report_rows(result: dict, digits: int = 2):
    """``(kind, tier, n_generated, n_reference, fd, split_half)`` rows of a :func:`quality_report`
    result, distances formatted to ``digits`` ("-" where undefined); ``kind`` alone (the rest
    None) when one of the sets has no such data."""
    for kind, per in result["results"].items():
        if per is None:
            yield kind, None, None, None, None, None
            continue
        for tier, e in per.items():
            fd = "-" if e["fd"] is None else f"{e['fd']:.{digits}f}"
            half = "-" if e["reference_split_half"] is None else f"{e['reference_split_half']:.{digits}f}"
            yield kind, tier, e["n_generated"], e["n_reference"], fd, half


def report_table(result: dict) -> list[str]:
    """The lines of the table ``cellgen eval quality`` prints for a :func:`quality_report` result."""
    lines = [f"{'':8}{'tier':8}{'n gen':>7}{'n ref':>7}{result['metric']:>16}{'ref split-half':>16}"]
    for kind, tier, n_gen, n_ref, fd, floor in report_rows(result):
        if tier is None:
            lines.append(f"{kind:8}(no images in one of the sets)")
        else:
            lines.append(f"{kind:8}{tier:8}{n_gen:>7}{n_ref:>7}{fd:>16}{floor:>16}")
    return lines


def write_report(result: dict, out_dir) -> Path:
    """``out_dir/quality.json`` (written atomically) for a :func:`quality_report` result."""
    import json

    from cellgen.fileio import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "quality.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return out / "quality.json"
