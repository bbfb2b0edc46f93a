"""Segmentation metrics with pinned definitions (pure numpy/scipy).

Inputs are instance label maps: 2-D integer arrays, 0 = background, any positive ids (not
necessarily contiguous). Truth comes first, prediction second, everywhere. The formulas and
every edge-case convention are written down in ``docs/metrics.md``.

Each image gives a small record of counts; records of many images are *pooled* by summing
counts and only then turning them into ratios (MMSegmentation style for pixel metrics; the
same for instance metrics). A record of one image, turned into metrics directly, gives the
per-image values.

Public API
----------
Pixel metrics (two classes: background = label 0, object = label > 0):

- :func:`pixel_totals` (true, pred) -> :class:`PixelTotals` of one image
- :func:`pool_pixel_totals` (records) -> :class:`PixelTotals` summed over images
- :func:`pixel_metrics` (totals) -> dict: aAcc, mIoU, mAcc, mDice, mFscore, mPrecision,
  mRecall and per-class IoU, Acc, Dice, Fscore, Precision, Recall

Instance metrics:

- :func:`iou_matrix` (true, pred) -> dense (n_true, n_pred) IoU matrix, ids ascending
- :func:`instance_counts` (true, pred, thresholds=THRESHOLDS) -> :class:`InstanceCounts`
- :func:`pool_instance_counts` (records) -> :class:`InstanceCounts` summed over images
- :func:`instance_metrics` (counts) -> dict: per-threshold tp/fp/fn/precision/recall/f1/ap,
  mean_ap, pq, sq, rq, mean_matched_iou, seg, n_split, n_merged, n_true, n_pred
- :func:`object_outcomes` (true, pred) -> :class:`ObjectOutcomes`: per-object match, IoU,
  split and merge flags (for breakdowns by object, e.g. :mod:`cellgen.bench.crowding`)

Confidence intervals over images of these records: :func:`cellgen.bench.bootstrap.bootstrap_ci`.

Constants: :data:`THRESHOLDS` (0.5, 0.55, ..., 0.95), :data:`PIXEL_CLASSES`
("background", "object"), :data:`PQ_THRESHOLD` (0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellgen.errors import InvalidMaskError

__all__ = [
    "THRESHOLDS",
    "PQ_THRESHOLD",
    "PIXEL_CLASSES",
    "PixelTotals",
    "pixel_totals",
    "pool_pixel_totals",
    "pixel_metrics",
    "InstanceCounts",
    "iou_matrix",
    "instance_counts",
    "pool_instance_counts",
    "instance_metrics",
    "ObjectOutcomes",
    "object_outcomes",
]

#: IoU thresholds of the DSB 2018 / COCO-style sweep: 0.5, 0.55, ..., 0.95 (10 values).
THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 0.96, 0.05), 2)
THRESHOLDS.setflags(write=False)
#: IoU threshold of panoptic quality and of the mean matched IoU.
PQ_THRESHOLD: float = 0.5
#: class order of the per-class pixel metrics
PIXEL_CLASSES: tuple[str, str] = ("background", "object")


# --------------------------------------------------------------------------- input checks


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true = _check_labels(true, "truth")
    pred = _check_labels(pred, "prediction")
    if true.shape != pred.shape:
        raise InvalidMaskError(
            f"truth and prediction shapes differ: {true.shape} vs {pred.shape}"
        )
    return true, pred


def _check_labels(lab, what: str) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InvalidMaskError(f"{what} label map must be an integer array, got dtype {lab.dtype}")
    if lab.ndim != 2:
        raise InvalidMaskError(f"{what} label map must be 2-D, got shape {lab.shape}")
    if lab.size and np.issubdtype(lab.dtype, np.signedinteger) and lab.min() < 0:
        raise InvalidMaskError(f"{what} label map has negative ids")
    return lab


# --------------------------------------------------------------------------- pixel metrics


@dataclass
class PixelTotals:
    """Per-class pixel counts, class order :data:`PIXEL_CLASSES` (background, object).

    Summable over images (:func:`pool_pixel_totals`); arrays are int64 of shape (2,).
    """

    intersect: np.ndarray
    union: np.ndarray
    pred_area: np.ndarray
    label_area: np.ndarray
    n_images: int = 1


_PIXEL_FIELDS = ("intersect", "union", "pred_area", "label_area")


def pixel_totals(true: np.ndarray, pred: np.ndarray) -> PixelTotals:
    """Per-class intersect, union, pred_area and label_area of one image (MMSeg ``intersect_and_union``)."""
    true, pred = _check_pair(true, pred)
    t = true.ravel() > 0
    p = pred.ravel() > 0
    n = t.size
    label_obj = int(np.count_nonzero(t))
    pred_obj = int(np.count_nonzero(p))
    both_obj = int(np.count_nonzero(t & p))
    both_bg = n - label_obj - pred_obj + both_obj
    intersect = np.array([both_bg, both_obj], dtype=np.int64)
    label_area = np.array([n - label_obj, label_obj], dtype=np.int64)
    pred_area = np.array([n - pred_obj, pred_obj], dtype=np.int64)
    union = pred_area + label_area - intersect
    return PixelTotals(intersect, union, pred_area, label_area)


def pool_pixel_totals(records) -> PixelTotals:
    """Sum :class:`PixelTotals` over images (MMSeg ``total_intersect_and_union``)."""
    records = list(records)
    if not records:
        raise ValueError("pool_pixel_totals needs at least one record")
    out = {f: np.sum([np.asarray(getattr(r, f)) for r in records], axis=0) for f in _PIXEL_FIELDS}
    return PixelTotals(**out, n_images=int(sum(r.n_images for r in records)))


def _div_nan(num, den):
    """num / den with 0/0 -> NaN (torch semantics of MMSeg); no warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    cnt = ok.sum(axis=-1)
    s = np.where(ok, x, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def _pixel_ratios(t: PixelTotals) -> dict:
    """Vectorised over any leading dims; class axis last."""
    i = np.asarray(t.intersect, dtype=np.float64)
    u = np.asarray(t.union, dtype=np.float64)
    pa = np.asarray(t.pred_area, dtype=np.float64)
    la = np.asarray(t.label_area, dtype=np.float64)
    iou = _div_nan(i, u)
    acc = _div_nan(i, la)
    dice = _div_nan(2.0 * i, pa + la)
    precision = _div_nan(i, pa)
    recall = acc
    fscore = _div_nan(2.0 * precision * recall, precision + recall)  # beta = 1
    out = {"aAcc": _div_nan(i.sum(axis=-1), la.sum(axis=-1))}
    per_class = {
        "IoU": iou,
        "Acc": acc,
        "Dice": dice,
        "Fscore": fscore,
        "Precision": precision,
        "Recall": recall,
    }
    for k, v in per_class.items():
        out["m" + k] = _nanmean_last(v)
    out.update(per_class)
    return out


def pixel_metrics(totals: PixelTotals) -> dict:
    """Pixel metrics (fractions in [0, 1]) from one image's or pooled :class:`PixelTotals`.

    Keys: ``aAcc, mIoU, mAcc, mDice, mFscore, mPrecision, mRecall`` (floats; m* = nanmean
    over the two classes) and per-class arrays ``IoU, Acc, Dice, Fscore, Precision, Recall``
    in :data:`PIXEL_CLASSES` order. A 0/0 ratio is NaN, as in MMSegmentation.
    """
    return _unbox(_pixel_ratios(totals))


# --------------------------------------------------------------------------- overlap table


def _relabel(flat: np.ndarray):
    """Contiguous ids (0 = background, 1..n) of a flat label array, its sorted ids and areas."""
    if flat.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(0, np.int64)
    mx = int(flat.max())
    if mx <= max(1 << 20, 4 * flat.size):
        flat_i = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat_i, minlength=mx + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        lut = np.zeros(mx + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat_i], ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inv = inv.astype(np.intp, copy=False)
    if ids[0] == 0:
        return inv, ids[1:], counts[1:].astype(np.int64)
    return inv + 1, ids, counts.astype(np.int64)


@dataclass
class _Overlap:
    """Sparse overlap table: one row per (truth, pred) pair that shares >= 1 pixel."""

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray  # (n_true,)
    pred_area: np.ndarray  # (n_pred,)
    ti: np.ndarray  # 0-based truth index of each pair
    pj: np.ndarray  # 0-based pred index of each pair
    inter: np.ndarray  # pixels shared
    iou: np.ndarray  # float64


def _overlap(true: np.ndarray, pred: np.ndarray) -> _Overlap:
    true, pred = _check_pair(true, pred)
    mt = int(true.max(initial=0))
    mp = int(pred.max(initial=0))
    if (mt + 1) * (mp + 1) <= max(1 << 22, 2 * true.size):
        # ids small enough to index a table directly: one pass, no relabelling of pixels
        fg = true != 0
        fg |= pred != 0
        if np.count_nonzero(fg) * 2 < fg.size:
            # mostly background (typical of cell images): counting only pixels where either map
            # has an object is about twice as fast, and (0, 0) pairs are never used
            key = true[fg].astype(np.intp)
            pv = pred[fg]
        else:
            key = true.astype(np.intp).ravel()
            pv = pred.ravel()
        key *= mp + 1  # in place: one temporary instead of three
        key += pv.astype(np.intp, copy=False)  # uint64 + int64 would promote to float
        table = np.bincount(key, minlength=(mt + 1) * (mp + 1)).reshape(mt + 1, mp + 1)
        tarea_all, parea_all = table.sum(1), table.sum(0)
        trows = np.flatnonzero(tarea_all[1:]) + 1
        pcols = np.flatnonzero(parea_all[1:]) + 1
        sub = table[np.ix_(trows, pcols)]
        ti, pj = np.nonzero(sub)
        inter = sub[ti, pj].astype(np.int64)
        tarea, parea = tarea_all[trows].astype(np.int64), parea_all[pcols].astype(np.int64)
        union = tarea[ti] + parea[pj] - inter
        iou = inter / union if inter.size else np.zeros(0, np.float64)
        return _Overlap(trows.astype(np.int64), pcols.astype(np.int64), tarea, parea,
                        ti.astype(np.intp), pj.astype(np.intp), inter, iou.astype(np.float64))
    t, tids, tarea = _relabel(true.ravel())
    p, pids, parea = _relabel(pred.ravel())
    nt, npr = tids.size, pids.size
    stride = npr + 1
    nbins = (nt + 1) * stride
    if nbins <= max(1 << 22, 2 * t.size):
        table = np.bincount(t * stride + p, minlength=nbins).reshape(nt + 1, stride)[1:, 1:]
        ti, pj = np.nonzero(table)
        inter = table[ti, pj].astype(np.int64)
    else:  # very many objects: count only the pixels where both are foreground
        both = (t > 0) & (p > 0)
        keys, inter = np.unique(t[both] * stride + p[both], return_counts=True)
        ti, pj = np.divmod(keys, stride)
        ti, pj = ti - 1, pj - 1
        inter = inter.astype(np.int64)
    ti = ti.astype(np.intp, copy=False)
    pj = pj.astype(np.intp, copy=False)
    union = tarea[ti] + parea[pj] - inter
    iou = inter / union if inter.size else np.zeros(0, np.float64)
    return _Overlap(tids, pids, tarea, parea, ti, pj, inter, iou.astype(np.float64))


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Dense IoU matrix, shape (n_true, n_pred); rows/columns follow ascending object ids."""
    ov = _overlap(true, pred)
    m = np.zeros((ov.true_ids.size, ov.pred_ids.size), dtype=np.float64)
    m[ov.ti, ov.pj] = ov.iou
    return m


def _match(ov: _Overlap, threshold: float) -> np.ndarray:
    """Indices (into the pair table) of the optimal one-to-one matching at ``threshold``.

    Eligible pairs have IoU >= threshold; among them the matching maximises total IoU
    (``linear_sum_assignment``). When no object has two eligible partners (always the case
    above 0.5) the eligible pairs are the matching and no assignment problem is solved.
    """
    cand = np.flatnonzero(ov.iou >= threshold)
    if cand.size == 0:
        return cand
    r, c = ov.ti[cand], ov.pj[cand]
    if np.bincount(r).max() <= 1 and np.bincount(c).max() <= 1:
        return cand
    ur, rinv = np.unique(r, return_inverse=True)
    uc, cinv = np.unique(c, return_inverse=True)
    w = np.zeros((ur.size, uc.size), dtype=np.float64)
    w[rinv, cinv] = ov.iou[cand]
    idx = np.full((ur.size, uc.size), -1, dtype=np.intp)
    idx[rinv, cinv] = cand
    rows, cols = linear_sum_assignment(w, maximize=True)
    sel = idx[rows, cols]
    return np.sort(sel[sel >= 0])


# --------------------------------------------------------------------------- instance metrics


@dataclass
class InstanceCounts:
    """Poolable instance-level counts of one image (or summed over images).

    ``tp``, ``fp``, ``fn`` are per threshold (shape (T,)); the ``pq_*`` fields are the
    matching at IoU :data:`PQ_THRESHOLD`; ``seg_sum`` is the sum over truth objects of the
    CTC SEG Jaccard, to be divided by ``n_true``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int
    pq_tp: int
    pq_fp: int
    pq_fn: int
    pq_iou_sum: float
    seg_sum: float
    n_split: int
    n_merged: int
    n_images: int = 1


_INST_ARRAY_FIELDS = ("tp", "fp", "fn")
_INST_SCALAR_FIELDS = (
    "n_true",
    "n_pred",
    "pq_tp",
    "pq_fp",
    "pq_fn",
    "pq_iou_sum",
    "seg_sum",
    "n_split",
    "n_merged",
)


def instance_counts(
    true: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS
) -> InstanceCounts:
    """Instance counts of one image; the overlap table is computed once and reused.

    Matching at threshold t: one-to-one, pairs with IoU >= t, maximising total IoU.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    ov = _overlap(true, pred)
    nt, npr = ov.true_ids.size, ov.pred_ids.size

    cache: dict[float, np.ndarray] = {}

    def matched(thr: float) -> np.ndarray:
        key = float(thr)
        if key not in cache:
            cache[key] = _match(ov, key)
        return cache[key]

    lowest = float(thresholds.min(initial=1.0))
    if thresholds.size > 1 and lowest >= 0.5:
        # a subset of a conflict-free matching is conflict-free: when the pairs eligible at the
        # lowest threshold are one-to-one, tp at every higher threshold is a count of IoUs
        base = matched(lowest)
        eligible = np.flatnonzero(ov.iou >= lowest)
        if base.size == eligible.size:
            ious = np.sort(ov.iou[base])
            tp = (ious.size - np.searchsorted(ious, thresholds, side="left")).astype(np.int64)
        else:
            tp = np.array([matched(t).size for t in thresholds], dtype=np.int64)
    else:
        tp = np.array([matched(t).size for t in thresholds], dtype=np.int64)
    pq_sel = matched(PQ_THRESHOLD)
    pq_tp = int(pq_sel.size)

    area_t = ov.true_area[ov.ti]
    area_p = ov.pred_area[ov.pj]
    twice = 2 * ov.inter
    # CTC SEG: |R ∩ S| > 0.5 |R|  (at most one S per R)
    seg_sum = float(ov.iou[twice > area_t].sum())
    # split: >= 2 preds with at least half of their own pixels inside one truth object
    in_t = twice >= area_p
    n_split = int(np.count_nonzero(np.bincount(ov.ti[in_t], minlength=nt) >= 2))
    # merge: >= 2 truths with at least half of their own pixels inside one pred object
    in_p = twice >= area_t
    n_merged = int(np.count_nonzero(np.bincount(ov.pj[in_p], minlength=npr) >= 2))

    return InstanceCounts(
        thresholds=thresholds,
        tp=tp,
        fp=npr - tp,
        fn=nt - tp,
        n_true=nt,
        n_pred=npr,
        pq_tp=pq_tp,
        pq_fp=npr - pq_tp,
        pq_fn=nt - pq_tp,
        pq_iou_sum=float(ov.iou[pq_sel].sum()),
        seg_sum=seg_sum,
        n_split=n_split,
        n_merged=n_merged,
    )


def _check_same_thresholds(records) -> np.ndarray:
    thr = np.asarray(records[0].thresholds, dtype=np.float64)
    for r in records[1:]:
        other = np.asarray(r.thresholds, dtype=np.float64)
        if other.shape != thr.shape or not np.array_equal(other, thr):
            raise ValueError("cannot pool instance counts computed at different thresholds")
    return thr


def pool_instance_counts(records) -> InstanceCounts:
    """Sum :class:`InstanceCounts` over images (all computed at the same thresholds)."""
    records = list(records)
    if not records:
        raise ValueError("pool_instance_counts needs at least one record")
    thr = _check_same_thresholds(records)
    out = {f: np.sum([np.asarray(getattr(r, f)) for r in records], axis=0) for f in _INST_ARRAY_FIELDS}
    for f in _INST_SCALAR_FIELDS:
        vals = [getattr(r, f) for r in records]
        out[f] = float(sum(vals)) if f in ("pq_iou_sum", "seg_sum") else int(sum(vals))
    return InstanceCounts(thresholds=thr.copy(), **out, n_images=int(sum(r.n_images for r in records)))


def _ratio(num, den, empty):
    """num / den; where den == 0 the value ``empty`` (broadcast), no warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    num, den, empty = np.broadcast_arrays(num, den, np.asarray(empty, dtype=np.float64))
    out = np.array(empty, dtype=np.float64, copy=True)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _instance_ratios(c: InstanceCounts) -> dict:
    """Vectorised over leading dims: per-threshold arrays have the threshold axis last."""
    tp = np.asarray(c.tp, dtype=np.float64)
    fp = np.asarray(c.fp, dtype=np.float64)
    fn = np.asarray(c.fn, dtype=np.float64)
    both_empty = (tp + fp + fn) == 0
    # 0/0 -> 1.0 when truth and prediction are both empty, else 0.0
    empty = np.where(both_empty, 1.0, 0.0)
    precision = _ratio(tp, tp + fp, empty)
    recall = _ratio(tp, tp + fn, empty)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, empty)
    ap = _ratio(tp, tp + fp + fn, empty)

    ptp = np.asarray(c.pq_tp, dtype=np.float64)
    pfp = np.asarray(c.pq_fp, dtype=np.float64)
    pfn = np.asarray(c.pq_fn, dtype=np.float64)
    isum = np.asarray(c.pq_iou_sum, dtype=np.float64)
    den = ptp + 0.5 * (pfp + pfn)
    pq_empty = den == 0
    pq = _ratio(isum, den, 1.0)
    rq = _ratio(ptp, den, 1.0)
    mmi = _ratio(isum, ptp, np.nan)
    sq = np.where(pq_empty, 1.0, mmi)
    seg = _ratio(c.seg_sum, c.n_true, np.nan)
    return {
        "thresholds": np.asarray(c.thresholds, dtype=np.float64),
        "tp": np.asarray(c.tp),
        "fp": np.asarray(c.fp),
        "fn": np.asarray(c.fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ap": ap,
        "mean_ap": ap.mean(axis=-1),
        "pq": pq,
        "sq": sq,
        "rq": rq,
        "mean_matched_iou": mmi,
        "seg": seg,
        "n_true": np.asarray(c.n_true),
        "n_pred": np.asarray(c.n_pred),
        "n_split": np.asarray(c.n_split),
        "n_merged": np.asarray(c.n_merged),
        "n_images": np.asarray(c.n_images),
    }


def instance_metrics(counts: InstanceCounts) -> dict:
    """Ratios from one image's or pooled :class:`InstanceCounts`.

    Per-threshold arrays (shape (T,)): ``thresholds, tp, fp, fn, precision, recall, f1, ap``
    (ap = DSB 2018 TP/(TP+FP+FN)). Scalars: ``mean_ap`` (mean of ``ap`` over thresholds),
    ``pq, sq, rq, mean_matched_iou`` (matching at IoU 0.5), ``seg`` (CTC SEG),
    ``n_true, n_pred, n_split, n_merged, n_images``. Conventions: docs/metrics.md.
    """
    return _unbox(_instance_ratios(counts))


def _unbox(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        a = np.asarray(v)
        if a.ndim == 0:
            out[k] = int(a) if np.issubdtype(a.dtype, np.integer) else float(a)
        else:
            out[k] = a
    return out


@dataclass
class ObjectOutcomes:
    """What happened to each object of one image, by the rules of :func:`instance_counts`.

    Truth arrays (one entry per truth object, ids ascending): ``true_ids``, ``matched_pred``
    (id of the prediction matched at IoU >= ``threshold``, 0 if none), ``matched_iou`` (NaN
    if unmatched), ``split`` and ``merged`` (the object is split, or has >= 50 % of its pixels
    in a merging prediction). Prediction arrays: ``pred_ids``, ``matched_true`` (0 if
    unmatched), ``best_true`` (the true object it overlaps with the highest IoU, 0 if none).
    """

    true_ids: np.ndarray
    matched_pred: np.ndarray
    matched_iou: np.ndarray
    split: np.ndarray
    merged: np.ndarray
    pred_ids: np.ndarray
    matched_true: np.ndarray
    best_true: np.ndarray


def object_outcomes(true: np.ndarray, pred: np.ndarray, threshold: float = PQ_THRESHOLD) -> ObjectOutcomes:
    """Per-object matching, split and merge flags of one image (for per-object breakdowns)."""
    ov = _overlap(true, pred)
    nt, npr = ov.true_ids.size, ov.pred_ids.size
    sel = _match(ov, float(threshold))
    matched_pred = np.zeros(nt, np.int64)
    matched_iou = np.full(nt, np.nan)
    matched_true = np.zeros(npr, np.int64)
    matched_pred[ov.ti[sel]] = ov.pred_ids[ov.pj[sel]]
    matched_iou[ov.ti[sel]] = ov.iou[sel]
    matched_true[ov.pj[sel]] = ov.true_ids[ov.ti[sel]]
    twice = 2 * ov.inter
    in_t = twice >= ov.pred_area[ov.pj]
    split = np.bincount(ov.ti[in_t], minlength=nt) >= 2
    in_p = twice >= ov.true_area[ov.ti]
    merging = np.bincount(ov.pj[in_p], minlength=npr) >= 2
    merged = np.zeros(nt, bool)
    merged[ov.ti[in_p & merging[ov.pj]]] = True
    best_true = np.zeros(npr, np.int64)
    if ov.iou.size:
        order = np.lexsort((ov.iou, ov.pj))  # by prediction, highest IoU last
        last = order[np.r_[ov.pj[order][1:] != ov.pj[order][:-1], True]]
        best_true[ov.pj[last]] = ov.true_ids[ov.ti[last]]
    return ObjectOutcomes(ov.true_ids, matched_pred, matched_iou, split, merged, ov.pred_ids, matched_true, best_true)
