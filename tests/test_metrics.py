"""Tests of cellgen.bench.metrics: hand-computed cases, properties, and agreement with a
slow, obvious reference implementation written here (per-object boolean masks)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from cellgen.bench import metrics as M
from cellgen.bench.bootstrap import bootstrap_ci
from cellgen.errors import InvalidMaskError

THR = M.THRESHOLDS


# --------------------------------------------------------------------------- generators


def random_disks(rng, shape=(96, 96), n=30, rmin=3, rmax=9):
    """Sequentially painted disks (later ones overwrite), random large uint32 ids."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.uint32)
    ids = rng.choice(10**6 - 1, size=n, replace=False) + 1
    disks = []
    for k in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(rmin, rmax)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = ids[k]
        disks.append((cy, cx, r))
    return lab, disks


def perturbed_prediction(rng, truth_disks, shape=(96, 96)):
    """A prediction with jitter, misses, false positives, splits and merges."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.uint32)
    nid = iter(rng.permutation(np.arange(1, 5000)))
    merged_id = None
    for cy, cx, r in truth_disks:
        u = rng.uniform()
        if u < 0.1:  # missed
            continue
        if u < 0.55:  # jittered
            cy2, cx2 = cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5)
            r2 = max(1.0, r * rng.uniform(0.75, 1.25))
        else:  # nearly exact
            cy2, cx2, r2 = cy + rng.normal(0, 0.2), cx + rng.normal(0, 0.2), r
        disk = (yy - cy2) ** 2 + (xx - cx2) ** 2 <= r2 * r2
        if u < 0.2:  # split along a line
            lab[disk & (xx < cx2)] = next(nid)
            lab[disk & (xx >= cx2)] = next(nid)
        elif u < 0.3:  # merge with the previous merge candidate
            if merged_id is None:
                merged_id = next(nid)
            lab[disk] = merged_id
        else:
            lab[disk] = next(nid)
    for _ in range(rng.integers(1, 5)):  # false positives
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 6)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = next(nid)
    return lab


def voronoi_labels(rng, shape=(80, 80), n=25, maxdist=9.0, seeds=None):
    """Nearest-seed labels within ``maxdist``; returns labels and the seeds."""
    if seeds is None:
        seeds = rng.uniform(0, shape[0], size=(n, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    near = d2.argmin(-1)
    lab = (near + 1).astype(np.uint32)
    lab[d2.min(-1) > maxdist**2] = 0
    return lab, seeds


def random_pair(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "disks":
        truth, disks = random_disks(rng, n=int(rng.integers(15, 40)))
        pred = perturbed_prediction(rng, disks)
    else:
        truth, seeds = voronoi_labels(rng, n=int(rng.integers(15, 40)))
        pred, _ = voronoi_labels(rng, seeds=seeds + rng.normal(0, 2.0, seeds.shape), maxdist=rng.uniform(7, 11))
        pred = np.where(pred > 0, pred * 7 + 1000, 0).astype(np.uint32)
    return truth, pred


# --------------------------------------------------------------------------- reference


def ref_overlap(true, pred):
    tids = [i for i in np.unique(true) if i != 0]
    pids = [j for j in np.unique(pred) if j != 0]
    tmasks = [true == i for i in tids]
    pmasks = [pred == j for j in pids]
    inter = np.zeros((len(tids), len(pids)))
    iou = np.zeros((len(tids), len(pids)))
    for a, tm in enumerate(tmasks):
        for b, pm in enumerate(pmasks):
            i = np.logical_and(tm, pm).sum()
            u = np.logical_or(tm, pm).sum()
            inter[a, b] = i
            iou[a, b] = i / u
    ta = np.array([m.sum() for m in tmasks], float)
    pa = np.array([m.sum() for m in pmasks], float)
    return inter, iou, ta, pa


def ref_overlap_fast(true, pred):
    """Independent vectorised overlap (np.add.at on a dense matrix) for many objects."""
    tids, tinv = np.unique(np.concatenate([[0], true.ravel()]), return_inverse=True)
    pids, pinv = np.unique(np.concatenate([[0], pred.ravel()]), return_inverse=True)
    inter = np.zeros((tids.size, pids.size))
    np.add.at(inter, (tinv[1:], pinv[1:]), 1)
    ta = inter.sum(1)[1:]
    pa = inter.sum(0)[1:]
    inter = inter[1:, 1:]
    iou = inter / (ta[:, None] + pa[None, :] - inter)
    return inter, iou, ta, pa


def ref_tp(iou, thr):
    """TP = size of a maximum matching among pairs with IoU >= thr, and its IoU sum."""
    if iou.size == 0:
        return 0, 0.0
    elig = csr_matrix((iou >= thr).astype(np.int8))
    match = maximum_bipartite_matching(elig, perm_type="column")
    rows = np.flatnonzero(match >= 0)
    return len(rows), float(sum(iou[r, match[r]] for r in rows))


def ref_ratio(num, den, both_empty):
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def ref_scores(inter, iou, ta, pa, thresholds=THR):
    nt, npr = iou.shape
    out = {k: [] for k in ("tp", "fp", "fn", "precision", "recall", "f1", "ap")}
    empty = nt == 0 and npr == 0
    for t in thresholds:
        tp, _ = ref_tp(iou, t)
        fp, fn = npr - tp, nt - tp
        out["tp"].append(tp)
        out["fp"].append(fp)
        out["fn"].append(fn)
        out["precision"].append(ref_ratio(tp, tp + fp, empty))
        out["recall"].append(ref_ratio(tp, tp + fn, empty))
        out["f1"].append(ref_ratio(2 * tp, 2 * tp + fp + fn, empty))
        out["ap"].append(ref_ratio(tp, tp + fp + fn, empty))
    out = {k: np.array(v) for k, v in out.items()}
    out["mean_ap"] = out["ap"].mean()
    tp, isum = ref_tp(iou, 0.5)
    fp, fn = npr - tp, nt - tp
    den = tp + fp / 2 + fn / 2
    out["pq"] = 1.0 if den == 0 else isum / den
    out["mean_matched_iou"] = isum / tp if tp else math.nan
    # CTC SEG, one truth object (row) at a time
    segs = []
    for a in range(nt):
        hits = np.flatnonzero(inter[a] > 0.5 * ta[a])
        assert len(hits) <= 1
        segs.append(iou[a, hits[0]] if len(hits) else 0.0)
    out["seg"] = float(np.mean(segs)) if segs else math.nan
    n_split = sum(int(np.count_nonzero(inter[a] >= 0.5 * pa) >= 2) for a in range(nt))
    n_merged = sum(int(np.count_nonzero(inter[:, b] >= 0.5 * ta) >= 2) for b in range(npr))
    out["n_split"], out["n_merged"] = n_split, n_merged
    out["n_true"], out["n_pred"] = nt, npr
    return out


def assert_matches_reference(got, ref):
    for k in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    for k in ("precision", "recall", "f1", "ap"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
    for k in ("mean_ap", "pq", "mean_matched_iou", "seg"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, err_msg=k, equal_nan=True)
    for k in ("n_split", "n_merged", "n_true", "n_pred"):
        assert got[k] == ref[k], k


def scores(true, pred, thresholds=THR):
    return M.instance_metrics(M.instance_counts(true, pred, thresholds))


# --------------------------------------------------------------------------- hand cases


def two_squares():
    t = np.zeros((12, 12), np.uint32)
    t[1:5, 1:5] = 3
    t[6:10, 6:10] = 8
    return t


def test_empty_prediction():
    t = two_squares()
    m = scores(t, np.zeros_like(t))
    np.testing.assert_array_equal(m["tp"], 0)
    np.testing.assert_array_equal(m["fp"], 0)
    np.testing.assert_array_equal(m["fn"], 2)
    for k in ("precision", "recall", "f1", "ap"):
        np.testing.assert_array_equal(m[k], 0.0)
    assert m["mean_ap"] == 0.0 and m["pq"] == 0.0 and m["rq"] == 0.0
    assert math.isnan(m["sq"]) and math.isnan(m["mean_matched_iou"])
    assert m["seg"] == 0.0
    assert (m["n_true"], m["n_pred"], m["n_split"], m["n_merged"]) == (2, 0, 0, 0)


def test_empty_truth():
    t = two_squares()
    m = scores(np.zeros_like(t), t)
    np.testing.assert_array_equal(m["fp"], 2)
    np.testing.assert_array_equal(m["fn"], 0)
    for k in ("precision", "recall", "f1", "ap"):
        np.testing.assert_array_equal(m[k], 0.0)
    assert m["pq"] == 0.0 and math.isnan(m["seg"])
    assert (m["n_true"], m["n_pred"]) == (0, 2)


def test_both_empty():
    z = np.zeros((7, 9), np.uint32)
    m = scores(z, z)
    for k in ("precision", "recall", "f1", "ap"):
        np.testing.assert_array_equal(m[k], 1.0)
    assert m["mean_ap"] == 1.0
    assert m["pq"] == 1.0 and m["sq"] == 1.0 and m["rq"] == 1.0
    assert math.isnan(m["mean_matched_iou"]) and math.isnan(m["seg"])
    assert M.iou_matrix(z, z).shape == (0, 0)
    px = M.pixel_metrics(M.pixel_totals(z, z))
    assert px["aAcc"] == 1.0 and px["mIoU"] == 1.0 and px["mDice"] == 1.0
    assert math.isnan(px["IoU"][1]) and px["IoU"][0] == 1.0


def test_perfect_match_any_permutation():
    rng = np.random.default_rng(1)
    t, _ = random_disks(rng, n=20)
    ids = np.unique(t)[1:]
    new = rng.choice(2**32 - 2, size=ids.size, replace=False) + 1
    lut = dict(zip(ids.tolist(), new.tolist()))
    p = np.vectorize(lambda v: lut.get(v, 0), otypes=[np.uint64])(t).astype(np.uint32)
    m = scores(t, p)
    n = ids.size
    np.testing.assert_array_equal(m["tp"], n)
    np.testing.assert_array_equal(m["ap"], 1.0)
    assert m["pq"] == 1.0 and m["seg"] == 1.0 and m["mean_matched_iou"] == 1.0
    assert m["n_split"] == 0 and m["n_merged"] == 0
    iou = M.iou_matrix(t, p)
    assert sorted(iou.max(1)) == [1.0] * n
    assert np.count_nonzero(iou == 1.0) == n


def test_split_exact_halves_tie():
    t = np.zeros((6, 10), np.uint32)
    t[1:5, 1:9] = 1  # 32 px
    p = np.zeros_like(t)
    p[1:5, 1:5] = 5  # 16 px, IoU 0.5
    p[1:5, 5:9] = 9  # 16 px, IoU 0.5
    np.testing.assert_allclose(M.iou_matrix(t, p), [[0.5, 0.5]])
    m = scores(t, p)
    # IoU >= 0.5 matches, one-to-one: one of the two halves
    np.testing.assert_array_equal(m["tp"], [1] + [0] * 9)
    np.testing.assert_array_equal(m["fp"], [1] + [2] * 9)
    np.testing.assert_array_equal(m["fn"], [0] + [1] * 9)
    np.testing.assert_allclose(m["ap"], [0.5] + [0.0] * 9)
    np.testing.assert_allclose(m["precision"][0], 0.5)
    np.testing.assert_allclose(m["recall"][0], 1.0)
    np.testing.assert_allclose(m["f1"][0], 2 / 3)
    np.testing.assert_allclose(m["pq"], 0.5 / (1 + 0.5))
    assert m["mean_matched_iou"] == 0.5
    assert m["seg"] == 0.0  # SEG needs strictly more than half of R
    assert (m["n_split"], m["n_merged"]) == (1, 0)


def test_split_unequal():
    t = np.zeros((6, 10), np.uint32)
    t[1:5, 1:9] = 1  # 32 px
    p = np.zeros_like(t)
    p[1:5, 1:6] = 2  # 20 px: IoU 0.625
    p[1:5, 6:9] = 3  # 12 px: IoU 0.375
    m = scores(t, p)
    np.testing.assert_array_equal(m["tp"], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    assert m["seg"] == 0.625
    np.testing.assert_allclose(m["pq"], 0.625 / (1 + 0.5))
    assert (m["n_split"], m["n_merged"]) == (1, 0)


def test_merge():
    t = np.zeros((5, 8), np.uint32)
    t[0:3, 0:3] = 2  # 9 px
    t[0:3, 3:6] = 4  # 9 px
    p = np.zeros_like(t)
    p[0:3, 0:6] = 1  # 18 px
    np.testing.assert_allclose(M.iou_matrix(t, p), [[0.5], [0.5]])
    m = scores(t, p)
    np.testing.assert_array_equal(m["tp"], [1] + [0] * 9)
    np.testing.assert_array_equal(m["fn"], [1] + [2] * 9)
    assert m["seg"] == 0.5  # each truth has > half of itself inside the merged object
    assert (m["n_split"], m["n_merged"]) == (0, 1)


@pytest.mark.parametrize(
    "n,k,iou",
    [
        (10, 1, 9 / 11),  # 0.818: matches 0.5..0.8
        (10, 2, 8 / 12),  # 0.667: 0.5..0.65
        (10, 3, 7 / 13),  # 0.538: 0.5 only
        (10, 4, 6 / 14),  # 0.429: none
        (10, 5, 5 / 15),  # 0.333: none, and SEG 0 (exactly half of R covered)
        (4, 1, 12 / 20),  # exactly 0.6
        (7, 1, 6 / 8),  # exactly 0.75
        (31, 9, 22 / 40),  # exactly 0.55
    ],
)
def test_shifted_square(n, k, iou):
    t = np.zeros((n + 2, n + k + 2), np.uint16)
    t[1 : n + 1, 1 : n + 1] = 1
    p = np.zeros_like(t)
    p[1 : n + 1, 1 + k : n + 1 + k] = 2
    assert M.iou_matrix(t, p)[0, 0] == pytest.approx(iou, abs=1e-15)
    want = [1 if iou >= th - 1e-12 else 0 for th in [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]]
    m = scores(t, p)
    np.testing.assert_array_equal(m["tp"], want)
    np.testing.assert_allclose(m["ap"], want)
    assert m["mean_ap"] == pytest.approx(sum(want) / 10)
    if iou >= 0.5:
        assert m["pq"] == pytest.approx(iou)
    else:
        assert m["pq"] == 0.0
    # SEG looks at |R & S| > |R|/2, not at IoU: k=4 gives IoU 0.43 but 60% of R covered
    assert m["seg"] == (pytest.approx(iou) if (n - k) / n > 0.5 else 0.0)


def test_shifted_diagonal():
    t = np.zeros((14, 14), np.uint32)
    t[1:11, 1:11] = 1
    p = np.zeros_like(t)
    p[2:12, 2:12] = 1
    iou = 81 / 119
    assert M.iou_matrix(t, p)[0, 0] == pytest.approx(iou)
    np.testing.assert_array_equal(scores(t, p)["tp"], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_pixel_metrics_by_hand():
    t = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]], np.uint32)
    p = np.array([[0, 0, 2], [0, 2, 2], [2, 2, 0]], np.uint32)
    tot = M.pixel_totals(t, p)
    np.testing.assert_array_equal(tot.intersect, [3, 3])
    np.testing.assert_array_equal(tot.union, [6, 6])
    np.testing.assert_array_equal(tot.pred_area, [4, 5])
    np.testing.assert_array_equal(tot.label_area, [5, 4])
    m = M.pixel_metrics(tot)
    assert m["aAcc"] == pytest.approx(6 / 9)
    np.testing.assert_allclose(m["IoU"], [0.5, 0.5])
    np.testing.assert_allclose(m["Acc"], [3 / 5, 3 / 4])
    np.testing.assert_allclose(m["Recall"], [3 / 5, 3 / 4])
    np.testing.assert_allclose(m["Precision"], [3 / 4, 3 / 5])
    np.testing.assert_allclose(m["Dice"], [2 / 3, 2 / 3])
    np.testing.assert_allclose(m["Fscore"], [2 / 3, 2 / 3])
    assert m["mIoU"] == pytest.approx(0.5)
    assert m["mAcc"] == pytest.approx(0.675)
    assert m["mRecall"] == pytest.approx(0.675)
    assert m["mPrecision"] == pytest.approx(0.675)
    assert m["mDice"] == pytest.approx(2 / 3)
    assert m["mFscore"] == pytest.approx(2 / 3)


def test_pixel_metrics_nan_class_is_skipped():
    t = np.zeros((4, 4), np.uint32)
    p = np.zeros_like(t)
    p[0, :2] = 1
    m = M.pixel_metrics(M.pixel_totals(t, p))
    # object class: I=0, label_area=0 -> Acc NaN; IoU = 0/2 = 0
    assert math.isnan(m["Acc"][1]) and m["IoU"][1] == 0.0
    assert m["mAcc"] == pytest.approx(14 / 16)
    assert m["mIoU"] == pytest.approx((14 / 16 + 0.0) / 2)
    assert m["Precision"][1] == 0.0 and math.isnan(m["Fscore"][1])
    assert m["mFscore"] == pytest.approx(m["Fscore"][0])


def test_pixel_metrics_pooled_is_sum_then_ratio():
    pairs = [random_pair(s, "disks") for s in range(3)]
    tots = [M.pixel_totals(t, p) for t, p in pairs]
    pooled = M.pool_pixel_totals(tots)
    assert pooled.n_images == 3
    big_t = np.concatenate([t for t, _ in pairs], axis=1)
    big_p = np.concatenate([p for _, p in pairs], axis=1)
    whole = M.pixel_totals(big_t, big_p)
    for f in ("intersect", "union", "pred_area", "label_area"):
        np.testing.assert_array_equal(getattr(pooled, f), getattr(whole, f))
    a, b = M.pixel_metrics(pooled), M.pixel_metrics(whole)
    for k in a:
        np.testing.assert_allclose(a[k], b[k])


# --------------------------------------------------------------------------- reference agreement


@pytest.mark.parametrize("kind", ["disks", "voronoi"])
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_reference(seed, kind):
    t, p = random_pair(seed, kind)
    inter, iou, ta, pa = ref_overlap(t, p)
    assert iou.shape[0] >= 10 and iou.shape[1] >= 10
    np.testing.assert_allclose(M.iou_matrix(t, p), iou, rtol=0, atol=1e-12)
    assert_matches_reference(scores(t, p), ref_scores(inter, iou, ta, pa))


def test_reference_cases_are_not_trivial():
    """The random pairs exercise splits, merges, misses and partial matches."""
    tot = M.pool_instance_counts([M.instance_counts(*random_pair(s, "disks")) for s in range(5)])
    m = M.instance_metrics(tot)
    assert m["n_split"] > 0 and m["n_merged"] > 0
    assert 0.2 < m["mean_ap"] < 0.9
    assert m["tp"][0] > m["tp"][-1] > 0


def test_pixel_metrics_agree_with_reference():
    for seed in range(3):
        t, p = random_pair(seed, "voronoi")
        got = M.pixel_metrics(M.pixel_totals(t, p))
        tb, pb = t > 0, p > 0
        vals = {k: [] for k in ("IoU", "Acc", "Dice", "Precision", "Fscore")}
        for c in (False, True):
            tc, pc = tb == c, pb == c
            i, u = (tc & pc).sum(), (tc | pc).sum()
            prec, rec = i / pc.sum(), i / tc.sum()
            vals["IoU"].append(i / u)
            vals["Acc"].append(rec)
            vals["Dice"].append(2 * i / (tc.sum() + pc.sum()))
            vals["Precision"].append(prec)
            vals["Fscore"].append(2 * prec * rec / (prec + rec))
        for k, v in vals.items():
            np.testing.assert_allclose(got[k], v, atol=1e-12)
            np.testing.assert_allclose(got["m" + k], np.mean(v), atol=1e-12)
        assert got["aAcc"] == pytest.approx((tb == pb).mean())


def test_many_objects_sparse_path():
    """Thousands of ids on each side (sparse counting path) against np.add.at."""
    rng = np.random.default_rng(7)
    t = rng.integers(0, 3000, size=(64, 64)).astype(np.uint32)
    p = rng.integers(0, 3000, size=(64, 64)).astype(np.uint32)
    p[:32] = t[:32]  # half the objects partly agree
    inter, iou, ta, pa = ref_overlap_fast(t, p)
    assert iou.shape[0] * iou.shape[1] > (1 << 22)
    np.testing.assert_allclose(M.iou_matrix(t, p), iou, atol=1e-12)
    assert_matches_reference(scores(t, p), ref_scores(inter, iou, ta, pa))


def brute_force_tp(iou, thr):
    """Maximum total-IoU one-to-one matching over eligible pairs, by enumeration."""
    nt, npr = iou.shape
    n = max(nt, npr)
    w = np.zeros((n, n))
    w[:nt, :npr] = np.where(iou >= thr, iou, 0.0)
    best, best_tp = -1.0, 0
    for perm in itertools.permutations(range(n)):
        s = sum(w[i, perm[i]] for i in range(n))
        if s > best + 1e-12:
            best, best_tp = s, sum(w[i, perm[i]] > 0 for i in range(n))
    return best_tp


@pytest.mark.parametrize("seed", range(6))
def test_low_threshold_matching_is_optimal(seed):
    """Below 0.5 an object can have several eligible partners: the assignment matters."""
    rng = np.random.default_rng(100 + seed)
    t = np.zeros((20, 20), np.uint32)
    p = np.zeros_like(t)
    for lab, n in ((t, 5), (p, 6)):
        for k in range(n):
            y, x = rng.integers(0, 14, 2)
            h, w = rng.integers(4, 9, 2)
            lab[y : y + h, x : x + w] = k + 1
    thresholds = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    got = scores(t, p, thresholds)
    _, iou, _, _ = ref_overlap(t, p)
    want = [brute_force_tp(iou, th) for th in thresholds]
    np.testing.assert_array_equal(got["tp"], want)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("seed", range(3))
def test_symmetry(seed):
    t, p = random_pair(seed, "disks")
    a, b = scores(t, p), scores(p, t)
    np.testing.assert_array_equal(a["tp"], b["tp"])
    np.testing.assert_array_equal(a["fp"], b["fn"])
    np.testing.assert_array_equal(a["fn"], b["fp"])
    np.testing.assert_allclose(a["precision"], b["recall"])
    np.testing.assert_allclose(a["recall"], b["precision"])
    for k in ("f1", "ap"):
        np.testing.assert_allclose(a[k], b[k])
    for k in ("mean_ap", "pq", "sq", "rq", "mean_matched_iou"):
        assert a[k] == pytest.approx(b[k])
    assert (a["n_split"], a["n_merged"]) == (b["n_merged"], b["n_split"])
    np.testing.assert_array_equal(M.iou_matrix(t, p), M.iou_matrix(p, t).T)


@pytest.mark.parametrize("kind", ["disks", "voronoi"])
def test_bounds(kind):
    for seed in range(3):
        t, p = random_pair(seed, kind)
        m = scores(t, p)
        for k in ("precision", "recall", "f1", "ap", "mean_ap", "pq", "sq", "rq", "mean_matched_iou", "seg"):
            v = np.asarray(m[k], float)
            assert np.all((v >= 0) & (v <= 1)), k
        px = M.pixel_metrics(M.pixel_totals(t, p))
        for k, v in px.items():
            v = np.asarray(v, float)
            assert np.all((v >= 0) & (v <= 1)), k
        iou = M.iou_matrix(t, p)
        assert iou.min() >= 0 and iou.max() <= 1
        # AP is non-increasing in the threshold
        assert np.all(np.diff(m["tp"]) <= 0)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint64, np.uint32])
def test_relabel_invariance(dtype):
    rng = np.random.default_rng(11)
    t, p = random_pair(0, "disks")
    base = scores(t, p)

    def remap(lab, big):
        ids = np.unique(lab)[1:]
        top = int(np.iinfo(dtype).max)
        lo, hi = (top // 2, top) if big else (1, 3 * ids.size + 5)
        new: set[int] = set()
        while len(new) < ids.size:
            new.add(int(rng.integers(lo, hi, dtype=np.uint64)))
        out = np.zeros(lab.shape, dtype)
        for i, n in zip(ids, rng.permutation(sorted(new))):
            out[lab == i] = n
        return out

    for big in (False, True):
        t2, p2 = remap(t, big), remap(p, big)
        got = scores(t2, p2)
        for k in base:
            np.testing.assert_allclose(got[k], base[k], err_msg=k, equal_nan=True)
        # rows follow ascending ids: same multiset of IoUs
        np.testing.assert_allclose(np.sort(M.iou_matrix(t2, p2).ravel()), np.sort(M.iou_matrix(t, p).ravel()))


def test_pool_of_one_equals_single():
    t, p = random_pair(2, "voronoi")
    c = M.instance_counts(t, p)
    a, b = M.instance_metrics(c), M.instance_metrics(M.pool_instance_counts([c]))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], equal_nan=True, err_msg=k)
    px = M.pixel_totals(t, p)
    a, b = M.pixel_metrics(px), M.pixel_metrics(M.pool_pixel_totals([px]))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], equal_nan=True, err_msg=k)


def test_pool_equals_concatenated_image():
    pairs = [random_pair(s, "disks") for s in range(3)] + [
        (np.zeros((96, 96), np.uint32), np.zeros((96, 96), np.uint32))
    ]
    pooled = M.pool_instance_counts([M.instance_counts(t, p) for t, p in pairs])
    assert pooled.n_images == 4
    off = 0
    ts, ps = [], []
    for t, p in pairs:  # make ids disjoint across images
        ts.append(np.where(t > 0, t.astype(np.int64) + off, 0))
        ps.append(np.where(p > 0, p.astype(np.int64) + off, 0))
        off += 10**7
    whole = M.instance_counts(np.concatenate(ts, 1), np.concatenate(ps, 1))
    a, b = M.instance_metrics(pooled), M.instance_metrics(whole)
    for k in a:
        if k == "n_images":
            continue
        np.testing.assert_allclose(a[k], b[k], err_msg=k, equal_nan=True)
    # pooled mAP is not the mean of per-image mAPs in general; check the definition
    ap = pooled.tp / (pooled.tp + pooled.fp + pooled.fn)
    assert a["mean_ap"] == pytest.approx(ap.mean())


def test_pool_rejects_mixed_thresholds():
    t, p = random_pair(0, "disks")
    with pytest.raises(ValueError):
        M.pool_instance_counts([M.instance_counts(t, p), M.instance_counts(t, p, [0.5, 0.7])])


def test_input_validation():
    t = np.zeros((4, 4), np.uint32)
    with pytest.raises(InvalidMaskError):
        M.instance_counts(t, np.zeros((4, 5), np.uint32))
    with pytest.raises(InvalidMaskError):
        M.instance_counts(t, np.zeros((4, 4), np.float32))
    with pytest.raises(InvalidMaskError):
        M.pixel_totals(t, -np.ones((4, 4), np.int32))
    with pytest.raises(InvalidMaskError):
        M.iou_matrix(np.zeros((1, 4, 4), np.uint32), np.zeros((1, 4, 4), np.uint32))


def test_thresholds_constant():
    np.testing.assert_array_equal(M.THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert M.THRESHOLDS.size == 10


# --------------------------------------------------------------------------- bootstrap


@pytest.fixture(scope="module")
def tier():
    pairs = [random_pair(s, "disks" if s % 2 else "voronoi") for s in range(12)]
    inst = [M.instance_counts(t, p) for t, p in pairs]
    pix = [M.pixel_totals(t, p) for t, p in pairs]
    return inst, pix


def test_bootstrap_deterministic(tier):
    inst, pix = tier
    a = bootstrap_ci(inst, "mean_ap", seed=5)
    assert a == bootstrap_ci(inst, "mean_ap", seed=5)
    assert a != bootstrap_ci(inst, "mean_ap", seed=6)
    assert bootstrap_ci(pix, "mIoU", seed=1) == bootstrap_ci(pix, "mIoU", seed=1)


@pytest.mark.parametrize(
    "metric", ["mean_ap", "pq", "seg", "f1@0.5", "ap@0.75", "precision@0.9", "n_split"]
)
def test_bootstrap_ci_contains_point(tier, metric):
    inst, _ = tier
    m = M.instance_metrics(M.pool_instance_counts(inst))
    base, _, sub = metric.partition("@")
    point = m[base] if not sub else m[base][list(np.round(m["thresholds"], 2)).index(float(sub))]
    lo, hi = bootstrap_ci(inst, metric)
    assert lo <= point <= hi
    assert lo < hi


@pytest.mark.parametrize("metric", ["mIoU", "aAcc", "mDice", "Dice@object", "IoU@background"])
def test_bootstrap_pixel_ci_contains_point(tier, metric):
    _, pix = tier
    m = M.pixel_metrics(M.pool_pixel_totals(pix))
    base, _, sub = metric.partition("@")
    point = m[base] if not sub else m[base][M.PIXEL_CLASSES.index(sub)]
    lo, hi = bootstrap_ci(pix, metric)
    assert lo <= point <= hi and lo < hi


def test_bootstrap_width_shrinks_with_more_images(tier):
    inst, pix = tier
    lo1, hi1 = bootstrap_ci(inst, "mean_ap")
    lo8, hi8 = bootstrap_ci(inst * 8, "mean_ap")
    assert hi8 - lo8 < 0.6 * (hi1 - lo1)
    lo1, hi1 = bootstrap_ci(pix, "mIoU")
    lo8, hi8 = bootstrap_ci(pix * 8, "mIoU")
    assert hi8 - lo8 < 0.6 * (hi1 - lo1)


@pytest.mark.parametrize("metric", ["mean_ap", "pq", "seg", "rq", "f1@0.5", "recall@0.85"])
def test_bootstrap_matches_slow_loop(tier, metric):
    """Same resamples drawn by hand, pooled with pool_instance_counts one by one."""
    inst, _ = tier
    B, n = 200, len(inst)
    idx = np.random.default_rng(3).integers(0, n, size=(B, n))
    base, _, sub = metric.partition("@")
    vals = []
    for row in idx:
        m = M.instance_metrics(M.pool_instance_counts([inst[i] for i in row]))
        vals.append(m[base] if not sub else m[base][np.flatnonzero(np.isclose(m["thresholds"], float(sub)))[0]])
    want = np.nanpercentile(vals, [2.5, 97.5])
    got = bootstrap_ci(inst, metric, n_boot=B, seed=3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_pixel_matches_slow_loop(tier):
    _, pix = tier
    B, n = 200, len(pix)
    idx = np.random.default_rng(4).integers(0, n, size=(B, n))
    vals = [M.pixel_metrics(M.pool_pixel_totals([pix[i] for i in row]))["mFscore"] for row in idx]
    np.testing.assert_allclose(
        bootstrap_ci(pix, "mFscore", n_boot=B, seed=4), np.nanpercentile(vals, [2.5, 97.5]), atol=1e-12
    )


def test_bootstrap_bad_names(tier):
    inst, pix = tier
    for bad in ("nope", "ap", "ap@0.42", "mean_ap@0.5", "thresholds"):
        with pytest.raises(KeyError):
            bootstrap_ci(inst, bad, n_boot=10)
    with pytest.raises(KeyError):
        bootstrap_ci(pix, "IoU@cytoplasm", n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_ci([], "mean_ap")


def test_bootstrap_single_image_is_degenerate(tier):
    inst, _ = tier
    lo, hi = bootstrap_ci(inst[:1], "pq")
    assert lo == hi == pytest.approx(M.instance_metrics(inst[0])["pq"])
