"""Fréchet distance between two sets of feature vectors, each fitted with a Gaussian.

``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Heusel et al. 2017). Pure numpy and
scipy: no network is needed to compare features.

Public API: :func:`feature_stats`, :func:`frechet_distance`, :func:`fd_from_features`.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from cellgen.errors import CellgenError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise CellgenError(f"a Fréchet distance needs at least 2 feature vectors, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _trace_sqrt_product_psd(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` through the symmetric ``S1^1/2 S2 S1^1/2`` (same eigenvalues), whose
    eigenvalues are real and >= 0 up to round-off: stable for singular covariances."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` for two Gaussians.

    ``scipy.linalg.sqrtm`` as in the standard FID code. Round-off leaves a small imaginary
    part on the square root: it is dropped when below 1e-3 of the largest real entry. With
    fewer samples than feature dimensions (small tiers) the covariances are singular and
    ``sqrtm`` of their product can fail outright (non-finite, a large imaginary part, or a
    large error estimate); then ``eps`` is added to both diagonals as is customary, and if
    that still fails the trace is taken through the symmetric form ``S1^1/2 S2 S1^1/2``,
    which has the same eigenvalues and is stable for singular matrices.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise CellgenError(f"mismatched Gaussian statistics: means {mu1.shape}, {mu2.shape}; "
                           f"covariances {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    tr_covmean = None
    for offset in (0.0, eps):
        a, b = s1 + offset * np.eye(len(s1)), s2 + offset * np.eye(len(s2))
        covmean, errest = linalg.sqrtm(a @ b, disp=False)
        if not np.all(np.isfinite(covmean)):
            continue
        scale = max(np.abs(covmean.real).max(), 1e-12)
        if np.iscomplexobj(covmean) and np.abs(covmean.imag).max() > 1e-3 * scale:
            continue
        if not np.isfinite(errest) or errest > 1e-3 * max(np.linalg.norm(a @ b), 1e-12):
            continue
        tr_covmean = float(np.trace(covmean.real))
        break
    if tr_covmean is None:
        tr_covmean = _trace_sqrt_product_psd(s1, s2)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    # the true distance is >= 0; round-off on identical sets can dip just below
    return max(value, 0.0)


def fd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two (N, D) feature sets (their Gaussian fits).

    With no more images than feature dimensions (the usual case per tier: 1280 or 2048
    dimensions) the covariances have rank < D, and the trace term has an exact closed form
    in sample space: ``tr sqrt(S_a S_b) = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1))`` for the
    centred feature matrices A, B (the nonzero eigenvalues of ``S_a S_b`` are the squared
    singular values of ``A B^T`` over that factor). It needs an SVD of an n_a x n_b matrix
    instead of ``sqrtm`` of a singular D x D product, which is both exact and fast; larger
    sets go through :func:`frechet_distance`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise CellgenError(f"a Fréchet distance needs at least 2 feature vectors of equal length per set, "
                           f"got shapes {a.shape} and {b.shape}")
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    ac, bc = a - a.mean(0), b - b.mean(0)
    diff = a.mean(0) - b.mean(0)
    tr_a, tr_b = (ac ** 2).sum() / (len(a) - 1), (bc ** 2).sum() / (len(b) - 1)
    tr_covmean = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    return max(float(diff @ diff + tr_a + tr_b - 2.0 * tr_covmean), 0.0)
