"""Crowding strata, nucleus-to-cell linkage and border exclusion on hand-built label maps."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from cellgen.bench import crowding, linkage
from cellgen.bench.border import drop_border_objects
from cellgen.bench.metrics import instance_counts, object_outcomes
from cellgen.errors import CellgenError


def _row_of_cells() -> np.ndarray:
    """Cells 1-2-3 side by side (1|2 and 2|3 touch), cell 4 alone; all 10x10 squares."""
    lab = np.zeros((40, 80), np.uint32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2
    lab[5:15, 25:35] = 3
    lab[25:35, 60:70] = 4
    return lab


def test_strata_count_touching_neighbours_and_nn_distance():
    s = crowding.cell_strata(_row_of_cells())
    assert {k: v[3] for k, v in s.items()} == {1: 1, 2: 2, 3: 1, 4: 0}
    assert [s[k][0] for k in (1, 2, 3, 4)] == ["touching=1", "touching=2", "touching=1", "touching=0"]
    # equal squares side by side: centroids one side apart, equivalent diameter 2*10/sqrt(pi)
    d = 10 / (2 * 10 / np.sqrt(np.pi))
    assert s[2][2] == pytest.approx(d) and s[2][1] == "nn=0.85-0.95"
    # cell 4: nearest centroid (cell 3 at (9.5, 29.5)) to (29.5, 64.5)
    assert s[4][2] == pytest.approx(np.hypot(20, 35) / (2 * 10 / np.sqrt(np.pi)))
    assert s[4][1] == "nn=>=2"
    # diagonal contact counts as touching (8-connectivity); one cell alone is in the last nn bin
    diag = np.zeros((20, 20), np.uint8)
    diag[2:6, 2:6], diag[6:10, 6:10] = 1, 2
    assert crowding.cell_strata(diag)[1][3] == 1
    assert crowding.cell_strata(diag[:, :6])[1][1] == "nn=>=2"
    assert crowding.cell_strata(np.zeros((5, 5), np.uint8)) == {}


def test_counts_per_stratum_for_merge_split_and_miss():
    truth = _row_of_cells()
    pred = truth.copy()
    pred[truth == 2] = 1  # cells 1 and 2 merged into one prediction
    pred[5:15, 25:30] = 7  # cell 3 split into two halves (ids 3, 7)
    c = crowding.crowding_counts(truth, truth, pred)
    assert c["touching=0"] == {"n_true": 1, "n_matched": 1, "iou_sum": 1.0, "n_split": 0, "n_merged": 0}
    # touching=1 holds cells 1 (merged, matched at IoU 0.5 exactly) and 3 (split: halves at IoU 0.5)
    assert c["touching=1"]["n_true"] == 2 and c["touching=1"]["n_merged"] == 1 and c["touching=1"]["n_split"] == 1
    assert c["touching=2"] == {"n_true": 1, "n_matched": 0, "iou_sum": 0.0, "n_split": 0, "n_merged": 1}
    # the per-object outcome agrees with the pooled instance counts
    inst = instance_counts(truth, pred, thresholds=[0.5])
    res = object_outcomes(truth, pred)
    assert int((res.matched_pred != 0).sum()) == int(inst.tp[0])
    assert int(res.split.sum()) == inst.n_split and res.merged.sum() == 2 and inst.n_merged == 1
    # every object is counted once per family
    for family in ("touching", "nn"):
        assert sum(v["n_true"] for k, v in c.items() if k.startswith(family)) == 4


def test_nucleus_takes_its_cell_stratum_and_rows_pool_images():
    cells = _row_of_cells()
    nuclei = np.zeros_like(cells)
    for k in (1, 2, 3, 4):
        ys, xs = np.nonzero(cells == k)
        nuclei[ys.min() + 3:ys.min() + 7, xs.min() + 3:xs.min() + 7] = k
    strata = crowding.cell_strata(cells)
    missed = nuclei.copy()
    missed[nuclei == 2] = 0  # the most crowded nucleus is missed
    rec = {"variant": "clean", "crowding": {"nucleus": crowding.crowding_counts(cells, nuclei, missed, strata)}}
    rows = crowding.crowding_rows([rec, rec])
    by = {r["stratum"]: r for r in rows}
    assert by["touching=2"]["n_true"] == 2 and by["touching=2"]["recall@0.5"] == 0.0
    assert by["touching=1"]["recall@0.5"] == 1.0 and by["touching=1"]["mean_matched_iou"] == 1.0
    assert np.isnan(by["touching=3+"]["recall@0.5"]) and by["touching=3+"]["n_true"] == 0
    assert [r["stratum"] for r in rows] == list(crowding.STRATA)


def test_write_crowding_csv_and_plot(tmp_path):
    truth = _row_of_cells()
    recs = [{"variant": v, "crowding": {"cell": crowding.crowding_counts(truth, truth, truth)}} for v in ("clean", "gaussian")]
    rows = crowding.write_crowding(tmp_path, recs, label="demo")
    with open(tmp_path / "crowding.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == len(rows) == 2 * len(crowding.STRATA)
    assert {"stratum", "family", "recall@0.5", "mean_matched_iou", "split_rate", "merge_rate"} <= set(read[0])
    assert crowding.read_crowding(tmp_path)[0]["n_true"] == rows[0]["n_true"]
    assert (tmp_path / "crowding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linkage_follows_containment_not_ids():
    cells = _row_of_cells()
    nuclei = np.zeros_like(cells)
    for k in (1, 2, 3, 4):
        ys, xs = np.nonzero(cells == k)
        nuclei[ys.min() + 3:ys.min() + 7, xs.min() + 3:xs.min() + 7] = k
    # independent ids (as Mesmer's two maps): cells renumbered, nuclei renumbered differently
    cell_pred = np.where(cells > 0, cells + 10, 0)
    nuc_pred = np.where(nuclei > 0, 5 - nuclei, 0)
    assert linkage.parent_cells(cell_pred, nuc_pred) == {4: 11, 3: 12, 2: 13, 1: 14}
    c = linkage.linkage_counts(cells, nuclei, cell_pred, nuc_pred)
    assert c == {"n_nuclei": 4, "n_detected": 4, "n_linked": 4}
    # nucleus of cell 2 predicted well but its cell swallowed by cell 1: detected, not linked
    merged = cell_pred.copy()
    merged[cells == 2] = 11
    c = linkage.linkage_counts(cells, nuclei, merged, nuc_pred)
    assert c == {"n_nuclei": 4, "n_detected": 4, "n_linked": 3}
    # a poorly segmented cell (IoU 0.4 with its true cell) still holds the right nucleus
    shrunk = cell_pred.copy()
    shrunk[(cells == 4) & ~((np.arange(80) >= 63) & (np.arange(80) < 67))[None, :]] = 0
    assert linkage.linkage_counts(cells, nuclei, shrunk, nuc_pred)["n_linked"] == 4
    # a nucleus outside every predicted cell is found but not linked
    gone = cell_pred.copy()
    gone[cells == 3] = 0
    assert linkage.linkage_counts(cells, nuclei, gone, nuc_pred) == {"n_nuclei": 4, "n_detected": 4, "n_linked": 3}
    m = linkage.linkage_metrics(linkage.pool_linkage([c, {"n_nuclei": 2, "n_detected": 0, "n_linked": 0}]))
    assert m["linkage"] == pytest.approx(3 / 4) and m["linkage_recall"] == pytest.approx(3 / 6) and m["linkage_n"] == 4
    assert np.isnan(linkage.linkage_metrics(dict.fromkeys(linkage.FIELDS, 0))["linkage"])


def test_border_band_drops_touching_objects_only():
    lab = np.zeros((20, 20), np.uint16)
    lab[0:4, 5:9] = 1  # touches the edge
    lab[3:6, 12:15] = 2  # within 3 px of the edge, not on it
    lab[8:12, 8:12] = 3  # interior
    assert np.array_equal(drop_border_objects(lab, 0), lab)
    assert set(np.unique(drop_border_objects(lab, 2))) == {0, 2, 3}
    out = drop_border_objects(lab, 4)
    assert set(np.unique(out)) == {0, 3} and out.dtype == lab.dtype
    assert np.array_equal(out[lab == 3], lab[lab == 3])
    with pytest.raises(CellgenError, match="exclude-border"):
        drop_border_objects(lab, -1)
