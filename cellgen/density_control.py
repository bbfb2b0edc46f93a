"""Measuring and steering cell density of generated masks.

The reference paper moves density with the truncation psi but notes that the direction of
change depends on the seed. This module measures that (psi sweeps, the fraction of seeds
whose density changes monotonically with psi), draws (seed, psi) until the measured density
falls in a requested range, and fits a density direction in W: a unit vector ``d`` such that
``w + alpha * d`` changes the cell count in the same direction for (nearly) every seed.

Everything works on a generator object with ``w_from_seeds(seeds)``,
``truncate(w, psi)`` and ``label_maps_from_w(w)`` (see :mod:`cellgen.gen.generator`).

Public API: :func:`masks_from_scores`, :func:`measure_ws`, :func:`psi_sweep`,
:func:`monotonic_fraction`, :func:`fit_density_direction`, :func:`direction_sweep`,
:func:`targeted_draws`, :func:`draw_acceptance`, :func:`plot_sweep`, :func:`sweep_report`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellgen import density
from cellgen.errors import CellgenError
from cellgen.masks import Masks, instances_from_label_map


def masks_from_scores(scores: np.ndarray) -> list[Masks]:
    """Exact masks from a batch of generated label-map scores (N, 4, H, W)."""
    return [instances_from_label_map(s) for s in np.asarray(scores)]


def measure_ws(gen, ws, pixel_size_um: float, measure: str = "count", batch_size: int = 16, *, seeds=None,
               noise_mode: str = "random") -> np.ndarray:
    """Density measure of the masks generated from each w (N,); ``seeds`` (one per w) give
    each image its noise in noise mode ``random``."""
    out = []
    for start in range(0, len(ws), batch_size):
        chunk = None if seeds is None else list(seeds)[start:start + batch_size]
        scores = gen.label_maps_from_w(ws[start:start + batch_size], noise_mode=noise_mode, seeds=chunk)
        for m in masks_from_scores(scores):
            out.append(density.measure(m.cell, pixel_size_um)[measure])
    return np.asarray(out, dtype=float)


def monotonic_fraction(values: np.ndarray) -> float:
    """Fraction of rows (seeds) whose values never go both up and down along the sweep."""
    diffs = np.diff(np.asarray(values, float), axis=1)
    mono = np.all(diffs >= 0, axis=1) | np.all(diffs <= 0, axis=1)
    return float(mono.mean()) if mono.size else float("nan")


def psi_sweep(gen, seeds, psis, pixel_size_um: float, measure: str = "count", noise_mode: str = "random") -> np.ndarray:
    """Measured density for every (seed, psi): shape (len(seeds), len(psis)); a seed keeps
    its noise across psi (only w moves)."""
    seeds = list(seeds)
    w = gen.w_from_seeds(seeds)
    table = np.zeros((len(seeds), len(psis)))
    for j, psi in enumerate(psis):
        table[:, j] = measure_ws(gen, gen.truncate(w, psi), pixel_size_um, measure, seeds=seeds, noise_mode=noise_mode)
    return table


@dataclass
class DensityDirection:
    direction: np.ndarray  # (w_dim,) unit vector in W
    r2: float  # fit quality of the linear model count ~ w on the fitting seeds
    n_fit: int

    def apply(self, w: np.ndarray, alpha: float) -> np.ndarray:
        return w + alpha * self.direction.astype(w.dtype)


def fit_density_direction(gen, seeds, pixel_size_um: float, psi: float = 1.0, measure: str = "count",
                          ridge: float = 1.0, noise_mode: str = "random") -> DensityDirection:
    """Ridge regression of the measured density on w (first layer's w) over many seeds."""
    seeds = list(seeds)
    if len(seeds) < 8:
        raise CellgenError("fitting a density direction needs at least 8 seeds")
    w = gen.truncate(gen.w_from_seeds(seeds), psi)
    y = measure_ws(gen, w, pixel_size_um, measure, seeds=seeds, noise_mode=noise_mode)
    x = np.asarray(w)[:, 0, :].astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean()
    coef = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    pred = xc @ coef
    r2 = 1.0 - float(((yc - pred) ** 2).sum() / max((yc**2).sum(), 1e-12))
    norm = np.linalg.norm(coef)
    if norm == 0:
        raise CellgenError("density does not vary over the fitting seeds; no direction can be fitted")
    return DensityDirection(coef / norm, r2, len(seeds))


def direction_sweep(gen, direction: DensityDirection, seeds, alphas, pixel_size_um: float,
                    psi: float = 1.0, measure: str = "count", noise_mode: str = "random") -> np.ndarray:
    """Measured density for every (seed, alpha) along the fitted direction."""
    seeds = list(seeds)
    w = gen.truncate(gen.w_from_seeds(seeds), psi)
    table = np.zeros((len(seeds), len(alphas)))
    for j, alpha in enumerate(alphas):
        table[:, j] = measure_ws(gen, direction.apply(np.asarray(w), alpha), pixel_size_um, measure, seeds=seeds,
                                 noise_mode=noise_mode)
    return table


def targeted_draws(gen, accept, n: int, psis, pixel_size_um: float, first_seed: int = 0,
                   max_draws: int = 10000, batch_size: int = 16, output_size: int | None = None,
                   noise_mode: str = "random"):
    """Draw (seed, psi) in a fixed order until ``n`` masks satisfy ``accept(measures)``.

    Masks are made at ``output_size`` (as the set will hold them), ``pixel_size_um`` is
    the pixel size there.

    Returns the accepted ``[(seed, psi, masks, measures)]`` and the number of draws, so the
    sampling can be reported and repeated exactly.
    """
    accepted, draws, seed = [], 0, first_seed
    while len(accepted) < n:
        seeds = list(range(seed, seed + batch_size))
        seed += batch_size
        w = gen.w_from_seeds(seeds)
        for psi in psis:
            scores = gen.label_maps_from_w(gen.truncate(w, psi), output_size=output_size, seeds=seeds,
                                           noise_mode=noise_mode)
            for s, m in zip(seeds, masks_from_scores(scores)):
                draws += 1
                measures = density.measure(m.cell, pixel_size_um)
                if accept(measures) and len(accepted) < n:
                    accepted.append((s, float(psi), m, measures))
        if draws >= max_draws and len(accepted) < n:
            raise CellgenError(f"only {len(accepted)} of {n} masks fell in the requested density range after "
                               f"{draws} draws; widen the range or add psi values")
    accepted.sort(key=lambda a: (a[0], a[1]))
    return accepted, draws


def draw_acceptance(tiers: density.TierScheme, tier: str | None = None, count: tuple[int, int] | None = None):
    """The test :func:`targeted_draws` applies to each draw's measures: its density ``tier``
    under ``tiers``, or a cell ``count`` in ``(low, high)`` (both ends included)."""
    if (tier is None) == (count is None):
        raise CellgenError("give exactly one of a tier or a count range")
    if tier is not None:
        if tier not in tiers.names:
            raise CellgenError(f"no density tier '{tier}'; choose from {', '.join(tiers.names)}")
        return lambda m: tiers.assign(m[tiers.measure]) == tier
    lo, hi = int(count[0]), int(count[1])
    if lo > hi:
        raise CellgenError(f"empty count range {lo}:{hi}")
    return lambda m: lo <= m["count"] <= hi


def sweep_report(gen, out_dir, seeds, psis, fit_seeds, alphas, pixel_size_um: float, measure: str = "count",
                 noise_mode: str = "random") -> dict:
    """Density vs psi per seed and along a fitted W density direction, written to ``out_dir``
    (``psi_sweep.json``, ``psi_sweep.png``, ``direction_sweep.png``); returns the JSON's dict."""
    import json
    from pathlib import Path

    from cellgen.fileio import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = psi_sweep(gen, seeds, psis, pixel_size_um, measure, noise_mode=noise_mode)
    direction = fit_density_direction(gen, fit_seeds, pixel_size_um, measure=measure, noise_mode=noise_mode)
    dtable = direction_sweep(gen, direction, seeds, alphas, pixel_size_um, measure=measure, noise_mode=noise_mode)
    result = {
        "generator_sha256": gen.sha256, "noise_mode": noise_mode, "measure": measure, "seeds": list(seeds),
        "psi": list(psis), "psi_table": table.tolist(), "psi_monotonic_fraction": monotonic_fraction(table),
        "direction_alphas": list(alphas), "direction_table": dtable.tolist(),
        "direction_monotonic_fraction": monotonic_fraction(dtable),
        "direction_fit_r2": direction.r2, "direction_fit_seeds": direction.n_fit,
    }
    with atomic_path(out / "psi_sweep.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    plot_sweep(psis, table, out / "psi_sweep.png", "psi", measure,
               f"psi: {100 * result['psi_monotonic_fraction']:.0f}% of seeds monotonic")
    plot_sweep(alphas, dtable, out / "direction_sweep.png", "alpha along density direction", measure,
               f"W direction: {100 * result['direction_monotonic_fraction']:.0f}% of seeds monotonic")
    return result


def plot_sweep(xs, table, path, xlabel: str, ylabel: str, title: str):
    """Density vs psi (or alpha): one thin line per seed, the median in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellgen.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for row in table:
        ax.plot(xs, row, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(xs, np.median(table, 0), color="black", lw=2, label="median over seeds")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
