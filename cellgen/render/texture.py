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
* :func:`compare`: all of them for rendered vs reference images, with ratios, and bootstrap
  intervals over images for the background and spectrum ratios.

Images are (N, 2, H, W) float in [0, 1] (channel 0 nucleus, 1 cytoplasm) or uint16 at full
scale 65535; masks are the exact (N, H, W) semantic (0 / 128 / 255) and cell id maps.

Public API: the functions above, :data:`CHANNELS`.
"""

from __future__ import annotations

import warnings

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


def background_moments(images, cell) -> np.ndarray:
    """(N, C, 3) per image and channel: count, sum and sum of squares of the background pixels
    (cell id 0); :func:`background_std` pools them, :func:`compare` resamples them."""
    x = _as_float(images)
    bg = _as_masks(cell, len(x)) == 0
    out = np.zeros((len(x), x.shape[1], 3))
    for i in range(len(x)):
        for c in range(x.shape[1]):
            v = x[i, c][bg[i]]
            out[i, c] = v.size, v.sum(), np.square(v).sum()
    return out


def _pooled_std(moments: np.ndarray) -> np.ndarray:
    n, s1, s2 = moments.sum(0).T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        return np.sqrt(np.maximum(s2 / n - mean**2, 0.0))


def background_std(images, cell) -> np.ndarray:
    """(C,) standard deviation of the background pixels (cell id 0), pooled over images."""
    return _pooled_std(background_moments(images, cell))


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


def radial_power_spectrum(images, n_bands: int | None = None, per_image: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(band edges in cycles/pixel (n_bands + 1,), power (C, n_bands)) averaged over images,
    or (N, C, n_bands), one row per image, with ``per_image``.

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
    one_hot = np.zeros((int(valid.sum()), n_bands))
    one_hot[np.arange(len(one_hot)), band[valid]] = 1.0
    one_hot /= np.maximum(one_hot.sum(0), 1.0)
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.zeros((len(x), x.shape[1], n_bands))
    for c in range(x.shape[1]):
        ch = x[:, c] - x[:, c].mean(axis=(-2, -1), keepdims=True)
        spec = np.abs(np.fft.fft2(ch * window)) ** 2 / (h * w)
        power[:, c] = spec[:, valid] @ one_hot
    return edges, (power if per_image else power.mean(0))


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
    """Every statistic of this module for one set of images (JSON-ready but for the ``_`` keys,
    the per-cell and per-image parts that :func:`compare` resamples)."""
    cb = checkerboard_amplitude(images, cell)
    edges, band_power = radial_power_spectrum(images, per_image=True)
    power = band_power.mean(0)
    moments = background_moments(images, cell)
    means = cell_means(images, semantic, cell)
    return {
        "checkerboard": {name: {"median": float(np.nanmedian(cb[:, c])), "max": float(np.nanmax(cb[:, c]))}
                         for c, name in enumerate(CHANNELS)}
        | {"median_worst_channel": float(np.nanmedian(np.nanmax(cb, 1)))},
        "background_std": {name: float(v) for name, v in zip(CHANNELS, _pooled_std(moments))},
        "cell_means": {name: _summary(v) for name, v in means.items()},
        "power_spectrum": {"band_edges": edges.tolist(),
                           **{name: power[c].tolist() for c, name in enumerate(CHANNELS)}},
        "n_images": int(len(moments)),
        "_cell_means_raw": means,
        "_band_power": band_power,
        "_background_moments": moments,
    }


def _resampled_ratios(rendered: dict, reference: dict, paired: bool, n_resamples: int, seed: int):
    """Bootstrap draws over images of the background-std and band-power ratios:
    ((R, C), (R, C, B)). ``paired``: the two sets are images of the same masks, resampled together."""
    bp_r, bp_f = rendered["_band_power"], reference["_band_power"]
    mo_r, mo_f = rendered["_background_moments"], reference["_background_moments"]
    if paired and len(bp_r) != len(bp_f):
        raise CellgenError(f"paired statistics need as many rendered as reference images, got {len(bp_r)} "
                           f"and {len(bp_f)}")
    rng = np.random.default_rng(seed)
    bg, spec = [], []
    for _ in range(n_resamples):
        i = rng.integers(0, len(bp_r), len(bp_r))
        j = i if paired else rng.integers(0, len(bp_f), len(bp_f))
        with np.errstate(invalid="ignore", divide="ignore"):
            bg.append(_pooled_std(mo_r[i]) / _pooled_std(mo_f[j]))
            spec.append(bp_r[i].mean(0) / bp_f[j].mean(0))
    return np.array(bg), np.array(spec)


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 (a statistic the reference does not have cannot be matched)."""
    return float(a) / float(b) if b else float("nan")


def compare(rendered: dict, reference: dict, *, paired: bool = False, level: float = 0.95,
            n_resamples: int = 1000, seed: int = 0) -> dict:
    """Ratios rendered / reference of :func:`image_statistics` results (1.0 is a perfect match).

    Background std and power-spectrum ratios come with a bootstrap interval over images
    (``interval``, at ``level``): with a few dozen images a band's ratio moves by 10-20%
    from sampling alone, and the interval says how far. ``paired``: both sets show the same
    masks in the same order (rendered from the reference's masks), resampled together.
    """
    if not 0 < level < 1:
        raise CellgenError(f"level must lie in (0, 1), got {level}")
    bg_draws, spec_draws = _resampled_ratios(rendered, reference, paired, n_resamples, seed)
    # a resample without background pixels or power has no ratio; it does not vote
    bg_draws[~np.isfinite(bg_draws)] = np.nan
    spec_draws[~np.isfinite(spec_draws)] = np.nan
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    with warnings.catch_warnings():  # all-NaN columns give NaN bounds, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        bg_iv, spec_iv = np.nanpercentile(bg_draws, q, axis=0), np.nanpercentile(spec_draws, q, axis=0)
    out = {"background_std": {}, "cell_means": {}, "power_spectrum": {},
           "interval": {"level": level, "n_resamples": n_resamples, "paired": paired,
                        "n_images": [rendered["n_images"], reference["n_images"]],
                        "background_std": {}, "power_spectrum": {}}}
    for c, name in enumerate(CHANNELS):
        out["background_std"][name] = _ratio(rendered["background_std"][name], reference["background_std"][name])
        out["interval"]["background_std"][name] = bg_iv[:, c].tolist()
        r, f = rendered["cell_means"][name], reference["cell_means"][name]
        out["cell_means"][name] = {"median": _ratio(r["median"], f["median"]), "std": _ratio(r["std"], f["std"]),
                                   "ks": _ks(rendered["_cell_means_raw"][name], reference["_cell_means_raw"][name])}
        pr, pf = np.asarray(rendered["power_spectrum"][name]), np.asarray(reference["power_spectrum"][name])
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(pf > 0, pr / np.where(pf > 0, pf, 1.0), np.nan)
        error = np.abs(ratio - 1.0)
        worst = int(np.nanargmax(error)) if np.isfinite(error).any() else 0
        out["power_spectrum"][name] = {"ratio_per_band": ratio.tolist(),
                                       "worst_band_error": float(abs(ratio[worst] - 1.0)), "worst_band": worst}
        out["interval"]["power_spectrum"][name] = spec_iv[:, c].T.tolist()
    return out


def public(stats: dict) -> dict:
    """``stats`` without the raw per-cell and per-image arrays (for JSON)."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}
