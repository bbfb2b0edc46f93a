"""Scores per object crowding: which method breaks first as cells crowd.

Density tiers grade whole images; crowding also differs within one image. Here every true
object is put in a *stratum* by how crowded its cell is, and recall and the other
per-object scores are reported per stratum. Two families of strata:

- ``touching``: the number of other cells the cell touches (shares an 8-connected pixel
  border with): ``0``, ``1``, ``2``, ``3+``;
- ``nn``: the distance from the cell's centroid to the nearest other cell's centroid, in
  cell diameters: divided by the mean equivalent diameter (2·sqrt(area/π)) of the two
  cells, so two round cells that just touch are 1.0 apart whatever their size. Bins
  :data:`NN_EDGES`; a cell alone in its image falls in the last bin.

Strata always come from the *cell* masks; a nucleus takes its cell's stratum (cellgen's
nucleus ids are their cell's ids), so nucleus scores show how nucleus segmentation holds up
as the cells around it crowd. Crowding is measured on the whole truth even when border
objects are excluded from scoring.

Per stratum, for the true objects in it: ``recall@0.5`` (matched one-to-one at IoU >= 0.5,
the matching of :func:`cellgen.bench.metrics.instance_counts`), ``mean_matched_iou`` (over
those matches), ``split_rate`` (fraction split into >= 2 predictions) and ``merge_rate``
(fraction merged with another true object into one prediction). Counts pool over images by
summing, like every instance metric of the bench.

Public API: :func:`cell_strata`, :func:`crowding_counts`, :func:`pool_counts`,
:func:`crowding_rows`, :func:`write_crowding`, :func:`plot_crowding`, :data:`STRATA`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellgen.bench import metrics
from cellgen.fileio import atomic_path, read_csv_rows, write_csv_rows

#: nearest-neighbour distance bin edges, in cell diameters (1.0 = two round cells just touching);
#: fine around 1.0, where packed cells sit (simulated crowded images: 5-95 % at 0.83-1.33)
NN_EDGES = (0.85, 0.95, 1.05, 1.25, 1.5, 2.0)
TOUCHING = ("0", "1", "2", "3+")
NN_BINS = ("<0.85", "0.85-0.95", "0.95-1.05", "1.05-1.25", "1.25-1.5", "1.5-2", ">=2")
#: stratum names, family first; within a family ordered from sparse to crowded
STRATA = tuple(f"touching={t}" for t in TOUCHING) + tuple(f"nn={b}" for b in reversed(NN_BINS))
#: the poolable counts kept per stratum
FIELDS = ("n_true", "n_matched", "iou_sum", "n_split", "n_merged")
METRICS = ("recall@0.5", "mean_matched_iou", "split_rate", "merge_rate")
LABELS = {
    "recall@0.5": "recall at IoU 0.5",
    "mean_matched_iou": "mean matched IoU",
    "split_rate": "split rate",
    "merge_rate": "merge rate",
}


def _touching_pairs(cells: np.ndarray) -> np.ndarray:
    """(k, 2) unique id pairs (a < b) of different cells that are 8-neighbours somewhere."""
    pairs = []
    for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1, :], cells[1:, :]),
                 (cells[:-1, :-1], cells[1:, 1:]), (cells[:-1, 1:], cells[1:, :-1])):
        hit = (a != b) & (a != 0) & (b != 0)
        if hit.any():
            x, y = a[hit].astype(np.int64), b[hit].astype(np.int64)
            pairs.append(np.stack([np.minimum(x, y), np.maximum(x, y)], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def cell_strata(cells: np.ndarray) -> dict[int, tuple[str, str, float, int]]:
    """Cell id -> (touching stratum, nn stratum, nn distance in diameters, touching count)."""
    cells = np.asarray(cells)
    ids = np.unique(cells)
    ids = ids[ids != 0].astype(np.int64)
    if ids.size == 0:
        return {}
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[ids] = np.arange(ids.size)
    idx = lut[cells.astype(np.int64)]
    fg = cells != 0
    area = np.bincount(idx[fg], minlength=ids.size).astype(np.float64)
    ys, xs = np.nonzero(fg)
    cy = np.bincount(idx[fg], weights=ys, minlength=ids.size) / area
    cx = np.bincount(idx[fg], weights=xs, minlength=ids.size) / area
    diameter = 2.0 * np.sqrt(area / np.pi)

    pairs = _touching_pairs(cells)
    touching = np.bincount(lut[pairs.ravel()], minlength=ids.size) if pairs.size else np.zeros(ids.size, np.int64)

    if ids.size > 1:
        # cells per image are at most a few thousand: the dense distance matrix is fine
        d = np.hypot(cy[:, None] - cy[None, :], cx[:, None] - cx[None, :])
        d /= (diameter[:, None] + diameter[None, :]) / 2.0
        np.fill_diagonal(d, np.inf)
        nn = d.min(axis=1)
    else:
        nn = np.full(1, np.inf)
    out = {}
    for k, cid in enumerate(ids):
        t = TOUCHING[min(int(touching[k]), 3)]
        b = NN_BINS[int(np.searchsorted(NN_EDGES, nn[k], side="right"))]
        out[int(cid)] = (f"touching={t}", f"nn={b}", float(nn[k]), int(touching[k]))
    return out


def _empty() -> dict:
    return {s: {f: 0 for f in FIELDS} for s in STRATA}


def crowding_counts(cells_truth: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                    strata: dict | None = None, outcomes: metrics.ObjectOutcomes | None = None) -> dict:
    """Per-stratum counts of one image and compartment: {stratum: {n_true, n_matched, ...}}.

    ``cells_truth`` gives the strata (or pass ``strata`` from :func:`cell_strata`); ``truth``
    and ``pred`` are the compartment's label maps, matched as by the instance metrics (or
    pass their ``outcomes``). A true object whose id is not a cell of ``cells_truth`` is left out.
    """
    strata = cell_strata(cells_truth) if strata is None else strata
    out = _empty()
    res = metrics.object_outcomes(truth, pred) if outcomes is None else outcomes
    for k, oid in enumerate(res.true_ids):
        where = strata.get(int(oid))
        if where is None:
            continue
        matched = res.matched_pred[k] != 0
        for s in where[:2]:
            c = out[s]
            c["n_true"] += 1
            c["n_matched"] += int(matched)
            c["iou_sum"] += float(res.matched_iou[k]) if matched else 0.0
            c["n_split"] += int(res.split[k])
            c["n_merged"] += int(res.merged[k])
    return out


def pool_counts(records) -> dict:
    """Sum per-stratum counts of many images."""
    out = _empty()
    for rec in records:
        for s, c in rec.items():
            if s in out:
                for f in FIELDS:
                    out[s][f] += c.get(f, 0)
    return out


def _ratios(c: dict) -> dict:
    n, m = c["n_true"], c["n_matched"]
    nan = float("nan")
    return {
        "recall@0.5": m / n if n else nan,
        "mean_matched_iou": c["iou_sum"] / m if m else nan,
        "split_rate": c["n_split"] / n if n else nan,
        "merge_rate": c["n_merged"] / n if n else nan,
    }


def crowding_rows(records) -> list[dict]:
    """Rows of ``crowding.csv`` from bench records that carry a ``crowding`` entry.

    One row per (compartment, variant, stratum): ``family`` (touching / nn), ``stratum``,
    ``n_true`` and the four :data:`METRICS` (NaN where the stratum is empty).
    """
    keys = sorted({(comp, r["variant"]) for r in records for comp in r.get("crowding", {})},
                  key=lambda cv: (cv[0] != "cell", cv[1] != "clean", cv[1]))
    rows = []
    for comp, variant in keys:
        pooled = pool_counts(r["crowding"][comp] for r in records
                             if r["variant"] == variant and comp in r.get("crowding", {}))
        for s in STRATA:
            c = pooled[s]
            rows.append({"compartment": comp, "variant": variant, "family": s.split("=")[0], "stratum": s,
                         "n_true": int(c["n_true"]), **_ratios(c)})
    return rows


def write_crowding(results_dir, records, label: str | None = None) -> list[dict]:
    """Write ``crowding.csv`` and ``crowding.png`` into ``results_dir``; return the rows."""
    out = Path(results_dir)
    rows = crowding_rows(records)
    write_csv_rows(out / "crowding.csv", rows, ["compartment", "variant", "family", "stratum", "n_true", *METRICS])
    if rows:
        plot_crowding({label or out.name: rows}, out / "crowding.png")
    return rows


def read_crowding(results_dir) -> list[dict]:
    """Rows of a results folder's ``crowding.csv`` (numbers parsed); [] when it has none."""
    rows = read_csv_rows(Path(results_dir) / "crowding.csv")
    for r in rows:
        r["n_true"] = int(r["n_true"])
        for m in METRICS:
            r[m] = float(r[m]) if r[m] not in ("", "nan") else float("nan")
    return rows


def plot_crowding(by_label: dict[str, list[dict]], path, metric_names=METRICS, variants=None):
    """Crowding curves: each metric against touching neighbours and nearest-neighbour distance.

    One line per (method label, variant), one column pair per compartment; x runs from
    sparse to crowded, so the curve that drops first belongs to the method that breaks first.
    Points of strata with fewer than 5 true objects are left out as noise.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [c for c in ("cell", "nucleus") if any(r["compartment"] == c for rows in by_label.values() for r in rows)]
    series = []
    for label, rows in by_label.items():
        for v in dict.fromkeys(r["variant"] for r in rows):
            if variants is None or v in variants:
                series.append((label, v))
    families = (("touching", "touching neighbours"), ("nn", "nearest neighbour (cell diameters)"))
    fig, axes = plt.subplots(len(metric_names), 2 * len(comps), squeeze=False,
                             figsize=(3.3 * 2 * len(comps), 2.4 * len(metric_names) + 0.8))
    colours = plt.get_cmap("tab10")
    for c_i, comp in enumerate(comps):
        for f_i, (family, xlabel) in enumerate(families):
            names = [s for s in STRATA if s.startswith(family + "=")]
            for m_i, metric in enumerate(metric_names):
                ax = axes[m_i, 2 * c_i + f_i]
                for s_i, (label, variant) in enumerate(series):
                    rows = {r["stratum"]: r for r in by_label[label]
                            if r["compartment"] == comp and r["variant"] == variant}
                    y = np.array([rows[s][metric] if s in rows and rows[s]["n_true"] >= 5 else np.nan
                                  for s in names], dtype=float) * 100
                    name = label if len({v for _, v in series}) == 1 else f"{label}: {variant}"
                    if len(by_label) == 1:
                        name = variant
                    ax.plot(np.arange(len(names)), y, marker="o", ms=3.5, color=colours(s_i % 10),
                            linestyle="-" if variant == "clean" else "--", label=name)
                ax.set_xticks(np.arange(len(names)), [s.split("=", 1)[1] for s in names], fontsize=7,
                              rotation=0 if family == "touching" else 35)
                ax.set_ylim(-3, 103)
                ax.grid(alpha=0.3)
                if m_i == 0:
                    ax.set_title(f"{comp}: by {family}", fontsize=9)
                if m_i == len(metric_names) - 1:
                    ax.set_xlabel(xlabel + " →", fontsize=8)
                if 2 * c_i + f_i == 0:
                    ax.set_ylabel(f"{LABELS.get(metric, metric)} (%)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle("Scores per object crowding (" + " vs ".join(by_label) + "); x: sparse → crowded", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(max(len(labels), 1), 6), fontsize=8, frameon=False)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
