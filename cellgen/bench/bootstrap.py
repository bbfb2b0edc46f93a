"""Percentile bootstrap confidence intervals of pooled segmentation metrics.

Images are resampled with replacement; each resample is pooled as
:mod:`cellgen.bench.metrics` pools a tier (counts summed, then turned into ratios), all
resamples at once as one matrix product of resample weights and per-image count vectors.
Conventions: docs/metrics.md.

Public API: :func:`bootstrap_ci` (records, metric, n_boot=1000, seed=0, level=0.95) -> (low, high).
"""

from __future__ import annotations

import numpy as np

# the record layouts and ratio formulas are metrics'; this module only resamples them
from cellgen.bench.metrics import (
    _INST_ARRAY_FIELDS,
    _INST_SCALAR_FIELDS,
    _PIXEL_FIELDS,
    PIXEL_CLASSES,
    InstanceCounts,
    PixelTotals,
    _check_same_thresholds,
    _instance_ratios,
    _pixel_ratios,
)

__all__ = ["bootstrap_ci"]



def _record_matrix(records):
    """(kind, n_images x n_features float64 matrix, unpack(batch matrix) -> record)."""
    first = records[0]
    if isinstance(first, InstanceCounts):
        if not all(isinstance(r, InstanceCounts) for r in records):
            raise TypeError("bootstrap_ci records must all be of one kind")
        thr = _check_same_thresholds(records)
        T = thr.size
        cols = [np.stack([np.asarray(getattr(r, f), dtype=np.float64) for r in records]) for f in _INST_ARRAY_FIELDS]
        cols += [np.array([[float(getattr(r, f))] for r in records]) for f in _INST_SCALAR_FIELDS]
        X = np.concatenate(cols, axis=1)

        def unpack(S):
            kw = {}
            for k, f in enumerate(_INST_ARRAY_FIELDS):
                kw[f] = S[:, k * T : (k + 1) * T]
            base = len(_INST_ARRAY_FIELDS) * T
            for k, f in enumerate(_INST_SCALAR_FIELDS):
                kw[f] = S[:, base + k]
            return _instance_ratios(InstanceCounts(thresholds=thr, **kw, n_images=len(records)))

        return thr, X, unpack
    if isinstance(first, PixelTotals):
        if not all(isinstance(r, PixelTotals) for r in records):
            raise TypeError("bootstrap_ci records must all be of one kind")
        X = np.concatenate(
            [np.stack([np.asarray(getattr(r, f), dtype=np.float64) for r in records]) for f in _PIXEL_FIELDS],
            axis=1,
        )

        def unpack(S):
            kw = {f: S[:, 2 * k : 2 * k + 2] for k, f in enumerate(_PIXEL_FIELDS)}
            return _pixel_ratios(PixelTotals(**kw))

        return None, X, unpack
    raise TypeError(f"bootstrap_ci needs InstanceCounts or PixelTotals records, got {type(first).__name__}")


def _select(metrics: dict, name: str, thresholds) -> np.ndarray:
    """Pick a (B,) vector: a scalar metric ``name`` or ``name@t`` / ``name@class``."""
    base, _, sub = name.partition("@")
    if base not in metrics or base.startswith("_") or base == "thresholds":
        raise KeyError(f"unknown metric {name!r}; choose from {sorted(k for k in metrics if not k.startswith('_'))}")
    v = np.asarray(metrics[base], dtype=np.float64)
    if not sub:
        if v.ndim != 1:
            raise KeyError(f"metric {base!r} is per threshold/class; write e.g. {base}@0.5 or {base}@object")
        return v
    if v.ndim != 2:
        raise KeyError(f"metric {base!r} is a scalar; drop the '@{sub}'")
    if thresholds is None:
        if sub not in PIXEL_CLASSES:
            raise KeyError(f"unknown class {sub!r}; choose from {PIXEL_CLASSES}")
        return v[:, PIXEL_CLASSES.index(sub)]
    try:
        t = float(sub)
    except ValueError:
        raise KeyError(f"bad threshold {sub!r} in metric {name!r}") from None
    hit = np.flatnonzero(np.isclose(thresholds, t, rtol=0, atol=1e-9))
    if hit.size == 0:
        raise KeyError(f"threshold {t} not among {list(np.asarray(thresholds))}")
    return v[:, hit[0]]


def bootstrap_ci(
    records,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI over images of a pooled metric.

    ``records``: per-image :class:`InstanceCounts` (metric names from
    :func:`instance_metrics`, e.g. ``"mean_ap"``, ``"pq"``, ``"seg"``, ``"f1@0.5"``,
    ``"ap@0.75"``) or per-image :class:`PixelTotals` (names from :func:`pixel_metrics`,
    e.g. ``"mIoU"``, ``"aAcc"``, ``"Dice@object"``). Images are resampled with replacement
    ``n_boot`` times (``numpy.random.default_rng(seed)``, index matrix of shape
    (n_boot, n_images)); each resample is pooled (counts summed, one matrix product) and the
    metric recomputed. Returns the (1-level)/2 and (1+level)/2 percentiles (linear
    interpolation, NaN resamples ignored).
    """
    records = list(records)
    if not records:
        raise ValueError("bootstrap_ci needs at least one record")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    thr, X, unpack = _record_matrix(records)
    n = len(records)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    W = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    W = W.reshape(n_boot, n).astype(np.float64)
    vals = _select(unpack(W @ X), metric, thr)
    if np.all(np.isnan(vals)):
        return (float("nan"), float("nan"))
    q = 100.0 * np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    lo, hi = np.nanpercentile(vals, q)
    return (float(lo), float(hi))
