"""Bench scores along the noise axis: per SNR tier, and per density tier x SNR tier.

Every record carries the SNR tier of its image and variant (``snr_tier``, from the set's
stored thresholds, see :mod:`cellgen.noise.tiers`; ``clean`` for clean images). Scores are
pooled like the density summary (counts summed over the images of a cell, then ratios),
over all variants whose images fall in the tier, with 95% bootstrap CIs over images.

Outputs: ``snr.csv`` (one row per compartment x SNR tier x density tier, density ``all``
included) and ``density_x_snr.png`` (a heat map of density x SNR and the score against SNR
tier, one line per density tier).

Public API: :func:`summarise_snr`, :func:`write_noise_axis`, :func:`plot_density_snr`,
:func:`format_snr_table`, :func:`read_snr_rows`, :func:`fill_snr_tiers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellgen.bench import metrics
from cellgen.bench.bootstrap import bootstrap_ci
from cellgen.fileio import atomic_path, read_csv_rows, write_csv_rows

HEADLINE = ("mIoU", "mDice", "f1@0.5", "mean_ap", "pq")


def _point(pix, inst) -> dict:
    p = metrics.pixel_metrics(metrics.pool_pixel_totals(pix))
    m = metrics.instance_metrics(metrics.pool_instance_counts(inst))
    at = np.isclose(np.asarray(m["thresholds"]), 0.5)
    return {"mIoU": float(p["mIoU"]), "mDice": float(p["mDice"]), "f1@0.5": float(np.asarray(m["f1"])[at][0]),
            "mean_ap": float(m["mean_ap"]), "pq": float(m["pq"])}


def fill_snr_tiers(records, data) -> bool:
    """Give records made before SNR tiers their tier from the set; False when it cannot be read."""
    missing = [r for r in records if "snr_tier" not in r]
    if not missing:
        return True
    from cellgen import noise
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.errors import CellgenError

    try:
        with BenchmarkSet(data) as ds:
            tiers = {v: noise.snr_tiers_of(ds, v) for v in {r["variant"] for r in missing}}
    except (CellgenError, OSError, KeyError):
        return False
    for r in missing:
        r["snr_tier"] = str(tiers[r["variant"]][r["index"]])
    return True


def summarise_snr(records, density_tiers, snr_tiers, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (compartment, SNR tier, density tier incl. ``all``) that has images."""
    rows = []
    comps = [c for c in ("cell", "nucleus") if any(c in r["scores"] for r in records)]
    for comp in comps:
        for snr in snr_tiers:
            for tier in [*density_tiers, "all"]:
                sel = [r for r in records if comp in r["scores"] and r.get("snr_tier") == snr
                       and (tier == "all" or r["tier"] == tier)]
                if not sel:
                    continue
                pix = [r["scores"][comp][0] for r in sel]
                inst = [r["scores"][comp][1] for r in sel]
                row = dict(compartment=comp, snr_tier=snr, tier=tier, n_images=len(sel),
                           variants=" ".join(sorted({r["variant"] for r in sel})), **_point(pix, inst))
                for name in HEADLINE:
                    lo, hi = bootstrap_ci(pix if name in ("mIoU", "mDice") else inst, name,
                                                  n_boot=n_boot, seed=seed)
                    row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
                rows.append(row)
    return rows


def plot_density_snr(rows, path, density_tiers, snr_tiers, metric: str = "f1@0.5", title: str = ""):
    """Heat map density x SNR (top) and score against SNR tier per density tier (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in ("cell", "nucleus") if any(r["compartment"] == c for r in rows)]
    snr_used = [s for s in snr_tiers if any(r["snr_tier"] == s for r in rows)]
    cols = [*[t for t in density_tiers if any(r["tier"] == t for r in rows)], "all"]
    fig, axes = plt.subplots(2, len(comps), figsize=(max(4.8, 1.2 * len(cols) + 2) * len(comps), 7.5), squeeze=False)
    for c_i, comp in enumerate(comps):
        cell = {(r["snr_tier"], r["tier"]): r for r in rows if r["compartment"] == comp}
        grid = np.array([[cell[(s, t)][metric] * 100 if (s, t) in cell else np.nan for t in cols] for s in snr_used])
        ax = axes[0, c_i]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i, s in enumerate(snr_used):
            for j, t in enumerate(cols):
                if (s, t) in cell:
                    v = grid[i, j]
                    ax.text(j, i, f"{v:.0f}\nn={cell[(s, t)]['n_images']}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(snr_used)), snr_used)
        ax.set_xlabel("density tier")
        ax.set_ylabel("SNR tier")
        ax.set_title(f"{comp}: {metric} (%)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[1, c_i]
        x = np.arange(len(snr_used))
        for t in cols:
            y = np.array([cell[(s, t)][metric] * 100 if (s, t) in cell else np.nan for s in snr_used])
            lo = np.array([cell[(s, t)][metric + "_ci_low"] * 100 if (s, t) in cell else np.nan for s in snr_used])
            hi = np.array([cell[(s, t)][metric + "_ci_high"] * 100 if (s, t) in cell else np.nan for s in snr_used])
            ax.errorbar(x, y, yerr=np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0)), marker="o", capsize=2,
                        label=t, lw=2.2 if t == "all" else 1.2, color="black" if t == "all" else None)
        ax.set_xticks(x, snr_used)
        ax.set_ylim(0, 100)
        ax.set_xlabel("SNR tier (noisiest left)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(title="density", fontsize=7)
    fig.suptitle(f"{title}: score by density x SNR tier (95% bootstrap CI)" if title else
                 "score by density x SNR tier (95% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_noise_axis(out_dir, records, run: dict, density_tiers, n_boot: int = 1000, label: str = "") -> list[dict]:
    """Write ``snr.csv`` and ``density_x_snr.png`` into a results folder; returns the rows
    (none when the records' SNR tiers cannot be known)."""
    from cellgen import noise
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.errors import CellgenError

    records = [dict(r) for r in records]
    if not fill_snr_tiers(records, run.get("data", "")):
        return []
    try:
        with BenchmarkSet(run.get("data", "")) as ds:
            snr_names = list(noise.set_snr_scheme(ds).all_names)
    except (CellgenError, OSError):
        snr_names = list(noise.DEFAULT_SNR_TIERS.all_names)
    snr_names += sorted({r["snr_tier"] for r in records} - set(snr_names))
    rows = summarise_snr(records, density_tiers, snr_names, n_boot=n_boot)
    if not rows:
        return []
    out = Path(out_dir)
    write_csv_rows(out / "snr.csv", rows)
    plot_density_snr(rows, out / "density_x_snr.png", list(density_tiers), snr_names, title=label)
    return rows


def format_snr_table(rows, metric: str = "f1@0.5") -> str:
    """Compact text: one line per compartment x SNR tier, the metric per density tier and all."""
    if not rows:
        return ""
    tiers = list(dict.fromkeys(r["tier"] for r in rows))
    lines = [f"{'compartment':<12}{'SNR tier':<15}" + "".join(f"{t:>12}" for t in tiers) + f"   ({metric}, %)"]
    for comp in dict.fromkeys(r["compartment"] for r in rows):
        for snr in dict.fromkeys(r["snr_tier"] for r in rows if r["compartment"] == comp):
            cells = {r["tier"]: r for r in rows if r["compartment"] == comp and r["snr_tier"] == snr}
            lines.append(f"{comp:<12}{snr:<15}" + "".join(
                f"{100 * cells[t][metric]:>12.1f}" if t in cells else f"{'-':>12}" for t in tiers))
    return "\n".join(lines)


def read_snr_rows(out_dir) -> list[dict]:
    """The rows of a results folder's ``snr.csv`` (none if it has none), numbers as floats."""
    rows = read_csv_rows(Path(out_dir) / "snr.csv")
    for r in rows:
        for k, v in r.items():
            if k not in ("compartment", "snr_tier", "tier", "variants"):
                r[k] = float(v)
    return rows
