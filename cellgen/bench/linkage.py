"""Nucleus-to-cell linkage: is each nucleus assigned to the right cell?

cellgen's truth links them by id (a nucleus carries its cell's id). A method that outputs
both compartments links them too: a predicted nucleus belongs to the predicted cell that
holds more than half of its pixels. That rule covers every method alike: CellProfiler's
secondary objects and the watershed baseline share their nucleus's id and contain it, Mesmer's
whole-cell and nuclear maps have independent ids, and stored predictions may do either.

For each true nucleus whose true cell is scored: it is *detected* when a predicted nucleus
matches it one-to-one at IoU >= 0.5, and *linked* when, moreover, that predicted nucleus
belongs to a predicted cell whose best-overlapping true cell (highest IoU) is its own cell.
A nucleus outside every predicted cell, or in a cell that mostly is a neighbour (e.g. two
cells merged into one: only one of the two nuclei can be right) is not linked. The cell
need not be segmented well (IoU 0.4 still links): that is what the cell scores measure. Then

- ``linkage`` = linked / detected: of the nuclei a method found, the fraction it put in the
  right cell (NaN when none was found);
- ``linkage_recall`` = linked / true nuclei: found *and* put in the right cell.

Counts pool over images by summing. Public API: :func:`parent_cells`,
:func:`linkage_counts`, :func:`linkage_from_outcomes`, :func:`pool_linkage`, :func:`linkage_metrics`.
"""

from __future__ import annotations

import numpy as np

from cellgen.bench import metrics

FIELDS = ("n_nuclei", "n_detected", "n_linked")


def parent_cells(cell: np.ndarray, nucleus: np.ndarray) -> dict[int, int]:
    """Nucleus id -> id of the cell holding more than half of its pixels (0 if no such cell)."""
    cell = np.asarray(cell).astype(np.int64, copy=False)
    nucleus = np.asarray(nucleus).astype(np.int64, copy=False)
    inside = nucleus != 0
    nuc, cel = nucleus[inside], cell[inside]
    if nuc.size == 0:
        return {}
    pairs, counts = np.unique(np.stack([nuc, cel]), axis=1, return_counts=True)
    area = dict(zip(*np.unique(nuc, return_counts=True)))
    out = {int(n): 0 for n in area}
    for (n, c), k in zip(pairs.T, counts):
        if c != 0 and 2 * k > area[n]:
            out[int(n)] = int(c)
    return out


def linkage_counts(cell_true, nucleus_true, cell_pred, nucleus_pred) -> dict:
    """{n_nuclei, n_detected, n_linked} of one image (see the module text)."""
    return linkage_from_outcomes(cell_pred, nucleus_pred, metrics.object_outcomes(cell_true, cell_pred),
                                 metrics.object_outcomes(nucleus_true, nucleus_pred))


def linkage_from_outcomes(cell_pred, nucleus_pred, cells: metrics.ObjectOutcomes,
                          nuclei: metrics.ObjectOutcomes) -> dict:
    """:func:`linkage_counts` from the predictions and both compartments' matchings."""
    scored = set(cells.true_ids.tolist())
    owner = dict(zip(cells.pred_ids.tolist(), cells.best_true.tolist()))  # predicted cell -> true cell
    parent = parent_cells(cell_pred, nucleus_pred)
    n = detected = linked = 0
    for nid, pn in zip(nuclei.true_ids.tolist(), nuclei.matched_pred.tolist()):
        if nid not in scored:  # its cell is not scored (e.g. excluded at the border)
            continue
        n += 1
        if pn == 0:
            continue
        detected += 1
        linked += int(owner.get(parent.get(pn, 0), 0) == nid)
    return {"n_nuclei": n, "n_detected": detected, "n_linked": linked}


def pool_linkage(records) -> dict:
    out = dict.fromkeys(FIELDS, 0)
    for rec in records:
        for f in FIELDS:
            out[f] += int(rec.get(f, 0))
    return out


def linkage_metrics(counts: dict) -> dict:
    """``linkage`` and ``linkage_recall`` (NaN on an empty denominator) and ``linkage_n``."""
    nan = float("nan")
    return {
        "linkage": counts["n_linked"] / counts["n_detected"] if counts["n_detected"] else nan,
        "linkage_recall": counts["n_linked"] / counts["n_nuclei"] if counts["n_nuclei"] else nan,
        "linkage_n": int(counts["n_detected"]),
    }
