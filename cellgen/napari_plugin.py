"""The napari plugin (manifest: ``cellgen/napari.yaml``): open cellgen sets, sample data, and
a widget that draws new samples with the shipped models.

Nothing here imports napari at module level. Readers and sample-data functions return
napari's layer-data tuples ``(data, kwargs, layer_type)``, so they run, and are tested,
without napari; napari turns them into layers. A set opens as one image layer per channel
and variant (noise variants hidden) plus ``cells`` and ``nuclei`` labels layers, all at
the set's pixel size in micrometres, with images stacked along a leading ``image`` axis.
Every layer's ``metadata`` holds the set's provenance (``metadata["cellgen"]``) and the
per-image table (``metadata["per_image"]``: seed, psi, tier, count, density measures).
Large sets are read lazily (dask, one image per chunk) when dask is installed.

Public API: :func:`get_reader`, :func:`read_set`, :func:`set_layers`, :func:`simulated_sample`,
:func:`generated_sample`, :func:`draw_samples`, :func:`make_sample_widget`.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np

from cellgen.datasets.h5 import CHANNELS, CLEAN, FORMAT, BenchmarkSet
from cellgen.errors import CellgenError

COLORMAPS = {"nucleus": "blue", "cytoplasm": "green"}
LABEL_LAYERS = {"cell": "cells", "nucleus": "nuclei"}
ANY_PSI = "any (use psi)"
TIER_PSIS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # the grid searched when a tier is asked for


def _is_cellgen_set(path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except (OSError, ValueError):
        return False


def get_reader(path):
    """napari reader hook: a reader for cellgen ``.h5`` sets, ``None`` for anything else."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith((".h5", ".hdf5")) and _is_cellgen_set(p) for p in paths):
        return None
    return read_set


def read_set(path) -> list[tuple]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [layer for p in paths for layer in set_layers(p)]


class _SetArray:
    """Array-like view of one dataset of an open set, for dask to read image by image."""

    def __init__(self, read, shape, dtype):
        self._read, self.shape, self.dtype, self.ndim = read, tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        return self._read(key)


def _array(read, shape, dtype, lazy: bool):
    if lazy:
        try:
            import dask.array as da
        except ImportError:
            lazy = False
        else:
            view = _SetArray(read, shape, dtype)
            return da.from_array(view, chunks=(1,) + tuple(shape[1:]), asarray=False, fancy=False)
    return np.asarray(read(slice(None)))


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _set_metadata(ds: BenchmarkSet) -> dict:
    attrs = ds.attrs
    info = {"path": str(ds.path), "pixel_size_um": ds.pixel_size_um, "variants": list(ds.variants),
            "compartments": ds.compartments, "tier_scheme": json.loads(ds.tier_scheme.to_json())}
    for key in ("cellgen_version", "command", "generator_sha256", "renderer_sha256", "recipe"):
        if key in attrs:
            info[key] = attrs[key]
    per_image = {column: [_plain(v) for v in values] for column, values in ds.metadata.items()}
    return {"cellgen": info, "per_image": per_image}


def set_layers(path, lazy: bool = True) -> list[tuple]:
    """Layer-data tuples for a set: images per channel and variant, then cell and nucleus labels.

    With ``lazy`` the file stays open and images are read when napari shows them.
    """
    ds = BenchmarkSet(path)
    try:
        px = ds.pixel_size_um
        common = {"scale": (1.0, px, px), "axis_labels": ("image", "y", "x"),
                  "units": ("pixel", "micrometer", "micrometer"), "metadata": _set_metadata(ds)}
        stem = Path(path).stem
        n, (h, w) = ds.n, ds.image_size
        layers = []
        for k, variant in enumerate(ds.variants):
            data = _array(lambda key, v=variant: ds.images(key, v), (n, len(CHANNELS), h, w), np.uint16, lazy)
            tag = "" if variant == CLEAN else f" [{variant}]"
            # one layer per channel, each named by a plain string: napari's widget results
            # replace layers of the same name, which does not work with channel_axis names
            for c, channel in enumerate(CHANNELS):
                layers.append((data[:, c], dict(common, name=f"{stem} {channel}{tag}", colormap=COLORMAPS[channel],
                                                blending="additive", visible=k == 0), "image"))
        for kind in ("cell", "nucleus"):
            if kind in ds.compartments:
                data = _array(lambda key, kd=kind: ds.masks_array(kd, key), (n, h, w), np.uint32, lazy)
                layers.append((data, dict(common, name=f"{stem} {LABEL_LAYERS[kind]}", opacity=0.5,
                                          visible=kind == "cell" or "cell" not in ds.compartments), "labels"))
    except BaseException:
        ds.close()
        raise
    if not lazy:
        ds.close()
    return layers


def simulated_sample() -> list[tuple]:
    """napari sample data: six procedural images from sparse to crowded (no model needed)."""
    from cellgen.pipeline import simulate_graded_set
    from cellgen.simulate import SimulationConfig

    with tempfile.TemporaryDirectory(prefix="cellgen-napari-") as tmp:
        path = Path(tmp) / "simulated.h5"
        # 6, 18 and 36 cells in 128 x 128 um: one pair per default tier (700 and 1600 cells/mm^2)
        simulate_graded_set(path, SimulationConfig(size=256, touching=0.8), [(6, 2), (18, 2), (36, 2)], seed=0,
                            variants=["poisson"], progress=False)
        return set_layers(path, lazy=False)


def generated_sample() -> list[tuple]:
    """napari sample data: the shipped models at psi -1, 0 and 1 (two seeds each)."""
    return draw_samples(psi=(-1.0, 0.0, 1.0), n=2, name="generated")


def draw_samples(psi=1.0, tier: str = ANY_PSI, n: int = 4, first_seed: int = 0, generator=None, renderer=None,
                 name: str | None = None) -> list[tuple]:
    """Draw ``n`` images with the contour generator and renderer (default: the shipped ones).

    With ``tier`` = ``low``/``medium``/``high`` (the default tier scheme) seeds and psi in
    {-1, -0.5, 0, 0.5, 1} are drawn until ``n`` masks fall in that tier; otherwise seeds
    ``first_seed ...`` are drawn at each given ``psi``. The images go through the same
    path as ``cellgen sample`` (exact masks, tiers, Poisson noise variant).
    """
    from cellgen.defaults import default_checkpoint
    from cellgen.density import TierScheme
    from cellgen.gen.generator import ContourGenerator
    from cellgen.pipeline import generated_set, matched_size
    from cellgen.render.renderer import Renderer

    psis = [float(p) for p in (psi if isinstance(psi, (list, tuple)) else [psi])]
    if not all(math.isfinite(p) for p in psis) or int(n) < 1:
        raise CellgenError(f"psi must be finite and n at least 1, got psi {psis} and n {n}")
    gen = ContourGenerator.load(generator or default_checkpoint("generator"))
    rend = Renderer.load(renderer or default_checkpoint("renderer"))
    size = matched_size(gen, rend)
    pixel_size = gen.pixel_size_at(size)
    tiers = TierScheme.parse("cells_per_mm2", "700,1600")
    if tier and tier != ANY_PSI:
        from cellgen.density_control import targeted_draws

        if tier not in tiers.names:
            raise CellgenError(f"unknown density tier '{tier}'; choose from {', '.join(tiers.names)}")
        accepted, _ = targeted_draws(gen, lambda m: tiers.assign(m[tiers.measure]) == tier, int(n), TIER_PSIS,
                                     pixel_size, first_seed=int(first_seed), max_draws=100 * int(n),
                                     output_size=size)
        pairs = [(a[0], a[1]) for a in accepted]
    else:
        pairs = [(s, p) for s in range(int(first_seed), int(first_seed) + int(n)) for p in psis]
    with tempfile.TemporaryDirectory(prefix="cellgen-napari-") as tmp:
        label = name or (f"tier {tier}" if tier and tier != ANY_PSI else "psi " + ",".join(f"{p:g}" for p in psis))
        path = Path(tmp) / f"{label}.h5"
        generated_set(path, gen, pairs, renderer=rend, pixel_size_um=pixel_size, size=size, batch_size=4,
                      variants=["poisson"], tiers=tiers, progress=False)
        return set_layers(path, lazy=False)


def make_sample_widget():
    """napari widget: draw samples at a chosen psi or density tier with the shipped models."""
    from typing import List

    from magicgui import magicgui
    from napari.types import LayerDataTuple

    def draw(psi=1.0, tier=ANY_PSI, n=4, first_seed=0):
        return draw_samples(psi=psi, tier=tier, n=n, first_seed=first_seed)

    # real types, not the strings this module's annotations become: magicgui builds the form
    # from them, and napari adds the returned layers to the viewer
    draw.__annotations__ = {"psi": float, "tier": str, "n": int, "first_seed": int, "return": List[LayerDataTuple]}
    return magicgui(draw, call_button="Draw samples",
                    psi={"min": -3.0, "max": 3.0, "step": 0.1, "tooltip": "truncation psi (used when tier is 'any')"},
                    tier={"choices": [ANY_PSI, "low", "medium", "high"],
                          "tooltip": "draw until the measured density falls in this tier (psi in -1..1)"},
                    n={"min": 1, "max": 64, "tooltip": "images to draw"},
                    first_seed={"min": 0, "max": 2**31 - 1})
