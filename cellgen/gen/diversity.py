"""Diversity and coverage of generated masks: pairwise layout overlap, precision and recall.

Two failure modes of a generator that distribution statistics (KS of counts and areas, a
Fréchet distance) barely see:

* **near-copies**: many seeds drawing nearly the same arrangement. Measured by the
  foreground IoU between the masks of every pair of images (foreground = cell > 0), and
  read against the same statistic of the training corpus, whose maps are independent
  layouts (:func:`pairwise_iou`, :func:`iou_summary`, :func:`closest_pairs`);
* **fidelity vs coverage**: improved precision and recall (Kynkäänniemi et al. 2019,
  "Improved Precision and Recall Metric for Assessing Generative Models"). Each set's
  manifold in feature space is the union of balls around its samples, each ball's radius
  the distance to the sample's k-th nearest neighbour in the same set. Precision is the
  fraction of generated samples inside the real manifold, recall the fraction of real
  samples inside the generated one (:func:`precision_recall`; the paper uses k = 3).

Public API on numpy arrays: :func:`foreground`, :func:`pairwise_iou`, :func:`iou_summary`,
:func:`closest_pairs`, :func:`knn_radii`, :func:`manifold_coverage`, :func:`precision_recall`.
"""

from __future__ import annotations

import numpy as np

from cellgen.errors import CellgenError


def foreground(cell_maps) -> np.ndarray:
    """(N, H, W) cell instance maps -> (N, H*W) bool foreground (cell > 0)."""
    cells = np.asarray(cell_maps)
    if cells.ndim != 3:
        raise CellgenError(f"need (N, H, W) cell maps, got shape {cells.shape}")
    return (cells > 0).reshape(len(cells), -1)


def pairwise_iou(fg: np.ndarray) -> np.ndarray:
    """(N, N) foreground IoU of every pair of (N, P) bool masks; 1 where both are empty."""
    fg = np.asarray(fg, bool)
    x = fg.astype(np.float64)
    inter = x @ x.T  # exact: integer counts well below 2^53
    area = x.sum(1)
    union = area[:, None] + area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return iou


def _upper(iou: np.ndarray) -> np.ndarray:
    iou = np.asarray(iou, float)
    if iou.ndim != 2 or iou.shape[0] != iou.shape[1]:
        raise CellgenError(f"need a square pairwise matrix, got shape {iou.shape}")
    return iou[np.triu_indices(len(iou), k=1)]


def iou_summary(iou: np.ndarray, threshold: float = 0.6) -> dict:
    """Mean, median, p90, max and the fraction of pairs above ``threshold`` over the pairs
    of different images (the upper triangle)."""
    v = _upper(iou)
    if v.size == 0:
        raise CellgenError("pairwise IoU needs at least 2 images")
    return {"n_images": int(len(iou)), "n_pairs": int(v.size), "mean": float(v.mean()),
            "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(v.max()),
            "threshold": float(threshold), "fraction_above": float((v > threshold).mean())}


def closest_pairs(iou: np.ndarray, n: int = 6) -> list[tuple[int, int, float]]:
    """The ``n`` pairs (i < j) of highest IoU, highest first, as (i, j, iou)."""
    iou = np.asarray(iou, float)
    i, j = np.triu_indices(len(iou), k=1)
    v = iou[i, j]
    order = np.argsort(-v, kind="stable")[:n]
    return [(int(i[k]), int(j[k]), float(v[k])) for k in order]


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of every sample to its k-th nearest other sample of the same set."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) <= k:
        raise CellgenError(f"k-NN radii with k = {k} need more than {k} samples of shape (N, D), got {x.shape}")
    d = _sq_dists(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])


def manifold_coverage(manifold: np.ndarray, queries: np.ndarray, k: int = 3) -> np.ndarray:
    """(M,) bool: which query samples lie within the k-NN ball of at least one manifold sample."""
    m = np.asarray(manifold, np.float64)
    q = np.asarray(queries, np.float64)
    if q.ndim != 2 or q.shape[1] != m.shape[1]:
        raise CellgenError(f"feature sets differ in shape: {m.shape} vs {q.shape}")
    radii = knn_radii(m, k)
    d = np.sqrt(_sq_dists(q, m))
    return (d <= radii[None, :]).any(axis=1)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``generated`` against ``real``
    feature sets (N, D): precision = share of generated samples in the real manifold, recall =
    share of real samples in the generated manifold."""
    precision = float(manifold_coverage(real, generated, k).mean())
    recall = float(manifold_coverage(generated, real, k).mean())
    return {"precision": precision, "recall": recall, "k": int(k), "n_real": int(len(real)),
            "n_generated": int(len(generated))}
