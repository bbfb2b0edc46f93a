"""Texture and intensity statistics of two-channel images, for judging a renderer.

* :func:`checkerboard_amplitude`: the 2x2 pattern left by stride-2 transposed convolutions.
  For a channel x, d = x[i, j] - x[i+1, j] - x[i, j+1] + x[i+1, j+1] (a 2x2 high-pass that a
  smooth ramp leaves at 0), averaged over each of the four (i mod 2, j mod 2) phases; the
  largest absolute phase mean divided by the mean of x over the cells. Content averages
  out over a phase, a fixed 2x2 pattern does not: a checker of amplitude a (x = m + a
  (-1)^(i+j)) scores 4a / m.
* :func:`background_std`: standard deviation of the pixels outside cells, pooled over images.
* :func:`cell_means`: each cell's mean intensity (nucleus channel over its nucleus,
  cytoplasm channel over its cytoplasm), the per-cell brightness distribution.
* :func:`radial_power_spectrum`: the radially averaged power spectrum (mean removed,
  periodic Hann window), in octave bands of spatial frequency.
* :func:`compare`: all of them for rendered vs reference images, with ratios.

Images are (N, 2, H, W) float in [0, 1] (channel 0 nucleus, 1 cytoplasm) or uint16 at full
scale 65535; masks are the exact (N, H, W) semantic (0 / 128 / 255) and cell id maps.

Public API: the functions above, :data:`CHANNELS`.
"""

from __future__ import annotations

import numpy as np

from cellgen.errors import CellgenError

CHANNELS = ("nucleus", "cytoplasm")


def _as_float(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise CellgenError(f"expected (N, C, H, W) images, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / 65535.0
    return x.astype(np.float64)


def _as_masks(a, n) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or len(a) != n:
        raise CellgenError(f"expected {n} (H, W) masks, got shape {a.shape}")
    return a


def checkerboard_channel(x: np.ndarray, cells: np.ndarray) -> float:
    """Checkerboard amplitude of one (H, W) channel, relative to its mean over ``cells`` (bool)."""
    x = np.asarray(x, np.float64)
    if x.shape[0] < 3 or x.shape[1] < 3:
        raise CellgenError(f"the checkerboard amplitude needs images of at least 3x3 pixels, got {x.shape}")
    d = x[:-1, :-1] - x[1:, :-1] - x[:-1, 1:] + x[1:, 1:]
    phase_means = [d[a::2, b::2].mean() for a in (0, 1) for b in (0, 1)]
    ref = x[cells].mean() if cells.any() else np.nan
    if not ref > 0:
        return float("nan")
    return float(np.max(np.abs(phase_means)) / ref)


def checkerboard_amplitude(images, cell) -> np.ndarray:
    """(N, C) checkerboard amplitudes (fractions; 0.01 is 1%) of each image's channels."""
    x = _as_float(images)
    cell = _as_masks(cell, len(x))
    return np.array([[checkerboard_channel(img[c], m > 0) for c in range(img.shape[0])]
                     for img, m in zip(x, cell)])


def background_std(images, cell) -> np.ndarray:
    """(C,) standard deviation of the background pixels (cell id 0), pooled over images."""
    x = _as_float(images)
    bg = _as_masks(cell, len(x)) == 0
    return np.array([x[:, c][bg].std() if bg.any() else np.nan for c in range(x.shape[1])])


def cell_means(images, semantic, cell) -> dict:
    """Per-cell mean intensity: ``nucleus`` (nucleus channel over the cell's nucleus) and
    ``cytoplasm`` (cytoplasm channel over the cell's cytoplasm), 1-D arrays over all cells."""
    x = _as_float(images)
    semantic, cell = _as_masks(semantic, len(x)), _as_masks(cell, len(x))
    out = {"nucleus": [], "cytoplasm": []}
    for img, sem, cel in zip(x, semantic, cell):
        ids = cel.ravel().astype(np.int64)
        n = int(ids.max(initial=0)) + 1
        for c, (name, value) in enumerate((("nucleus", 128), ("cytoplasm", 255))):
            sel = (sem.ravel() == value) & (ids > 0)
            counts = np.bincount(ids[sel], minlength=n)
            sums = np.bincount(ids[sel], weights=img[c].ravel()[sel], minlength=n)
            have = counts > 0
            have[0] = False
            out[name].append(sums[have] / counts[have])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def radial_power_spectrum(images, n_bands: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(band edges in cycles/pixel (n_bands + 1,), power (C, n_bands)) averaged over images.

    Bands are octaves ending at the Nyquist frequency 0.5 (0.25-0.5, 0.125-0.25, ...), the
    lowest starting at 1 / side. Power is the mean |FFT|^2 / pixels of the mean-free,
    Hann-windowed channel over the frequencies of the band.
    """
    x = _as_float(images)
    h, w = x.shape[-2:]
    side = min(h, w)
    if n_bands is None:
        n_bands = max(1, int(np.floor(np.log2(side))) - 1)
    edges = 0.5 / 2.0 ** np.arange(n_bands, -1, -1)
    edges[0] = min(edges[0], 1.0 / side)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    band = np.digitize(radius, edges) - 1  # band k: edges[k] <= r < edges[k + 1]
    band[radius >= 0.5] = n_bands - 1
    valid = (band >= 0) & (band < n_bands)
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((x.shape[1], n_bands))
    for c in range(x.shape[1]):
        ch = x[:, c] - x[:, c].mean(axis=(-2, -1), keepdims=True)
        spec = (np.abs(np.fft.fft2(ch * window)) ** 2).mean(0) / (h * w)
        power[c] = np.bincount(band[valid], weights=spec[valid], minlength=n_bands) / \
            np.maximum(np.bincount(band[valid], minlength=n_bands), 1)
    return edges, power


def _summary(v: np.ndarray) -> dict:
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "p10": float("nan"), "median": float("nan"),
                "p90": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "p10": float(np.percentile(v, 10)),
            "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def image_statistics(images, semantic, cell) -> dict:
    """Every statistic of this module for one set of images (JSON-ready)."""
    cb = checkerboard_amplitude(images, cell)
    edges, power = radial_power_spectrum(images)
    means = cell_means(images, semantic, cell)
    return {
        "checkerboard": {name: {"median": float(np.nanmedian(cb[:, c])), "max": float(np.nanmax(cb[:, c]))}
                         for c, name in enumerate(CHANNELS)}
        | {"median_worst_channel": float(np.nanmedian(np.nanmax(cb, 1)))},
        "background_std": {name: float(v) for name, v in zip(CHANNELS, background_std(images, cell))},
        "cell_means": {name: _summary(v) for name, v in means.items()},
        "power_spectrum": {"band_edges": edges.tolist(),
                           **{name: power[c].tolist() for c, name in enumerate(CHANNELS)}},
        "_cell_means_raw": means,
    }


def compare(rendered: dict, reference: dict) -> dict:
    """Ratios rendered / reference of :func:`image_statistics` results (1.0 is a perfect match)."""
    out = {"background_std": {}, "cell_means": {}, "power_spectrum": {}}
    for name in CHANNELS:
        out["background_std"][name] = rendered["background_std"][name] / reference["background_std"][name]
        r, f = rendered["cell_means"][name], reference["cell_means"][name]
        out["cell_means"][name] = {"median": r["median"] / f["median"], "std": r["std"] / f["std"],
                                   "ks": _ks(rendered["_cell_means_raw"][name], reference["_cell_means_raw"][name])}
        pr, pf = np.asarray(rendered["power_spectrum"][name]), np.asarray(reference["power_spectrum"][name])
        ratio = pr / pf
        out["power_spectrum"][name] = {"ratio_per_band": ratio.tolist(),
                                       "worst_band_error": float(np.max(np.abs(ratio - 1.0)))}
    return out


def public(stats: dict) -> dict:
    """``stats`` without the raw per-cell arrays (for JSON)."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}
