"""CellPose 3's training degradations (Stringer & Pachitariu 2025, Nat. Methods 22:592), as
noise variants, so scores compare with CellPose's image-restoration benchmarks.

The recipe follows ``cellpose.denoise.add_noise`` and the noise types of ``cellpose.denoise``'s
training command in cellpose 3.1.1.3 (our own implementation, numpy, seeded per image):

* every channel is first normalised to its 1st-99th percentiles (CellPose's ``normalize99``)
  and clamped at 0;
* with probability ``downsample`` the image is subsampled by an integer factor ``ds`` drawn
  from 2..``ds_max`` (every ds-th pixel) and brought back to full size bilinearly
  (half-pixel centres, as ``torch.nn.functional.interpolate(..., mode="bilinear")``); such an
  image is always blurred first;
* with probability ``blur`` (uniform-blur recipe) a Gaussian blur with
  ``sigma = diameter / 30 * (1 + (gblur - 1) * r)``, ``r ~ U(0, 1)`` (``r = ds / 2 / gblur``
  when downsampled), kernel half-width ``max(8, 2 * floor(sigma)) - 1``, zero padding;
* with probability ``poisson`` Poisson noise ``Poisson(scale * image) `` with
  ``scale = max(1, Gamma(alpha=4, rate=beta))``, ``beta`` 0.7 for denoising,
  0.1 for deblurring and 0.03 for upsampling;
* the result is normalised again to its 1st-99th percentiles.

``diameter`` is the cell diameter in pixels (CellPose's: ``median(sqrt(area)) / (sqrt(pi) / 2)``),
taken from the image's own masks. The stored image maps the renormalised result back onto the
clean image's 1st-99th percentile range, in uint16 like every variant. Its SNR compares it with
the clean image (blur counts as error).

Public API: :class:`CellPose3Params`, :data:`RECIPES`, :func:`degrade`, :func:`draw_settings`,
:func:`apply_settings`, :func:`cellpose_diameter`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from cellgen.errors import CellgenError
from cellgen.noise.sampling import poisson_quantile, streams


@dataclass(frozen=True)
class CellPose3Params:
    recipe: str  # "denoise", "deblur", "upsample" or "all" (one of the three per image, as CellPose's "all")
    poisson: float = 0.8  # probability of Poisson noise
    alpha: float = 4.0  # Gamma shape of the Poisson scale
    beta: float = 0.7  # Gamma rate of the Poisson scale
    blur: float = 0.0  # probability of blur
    gblur: float = 1.0
    downsample: float = 0.0  # probability of downsampling
    ds_max: int = 7

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), model="cellpose3"), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "CellPose3Params":
        return cls(**{k: v for k, v in d.items() if k != "model"})


# cellpose 3.1.1.3, denoise.py training noise types "poisson", "blur" and "downsample" (the ones
# behind the denoise_/deblur_/upsample_ models); "all" mixes them like the one-click models.
RECIPES = {
    "denoise": CellPose3Params("denoise", poisson=0.8, beta=0.7),
    "deblur": CellPose3Params("deblur", poisson=0.8, beta=0.1, blur=0.8, gblur=10.0),
    "upsample": CellPose3Params("upsample", poisson=0.8, beta=0.03, blur=0.8, gblur=5.0, downsample=0.8),
    "all": CellPose3Params("all"),
}


def cellpose_diameter(cell: np.ndarray) -> float:
    """CellPose's diameter of an instance map: median sqrt(area) / (sqrt(pi) / 2); 30 if empty."""
    counts = np.bincount(np.asarray(cell).ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 30.0
    return float(np.median(np.sqrt(counts)) / (np.sqrt(np.pi) / 2))


def _normalize99(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = np.percentile(img, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(img, 99, axis=(1, 2), keepdims=True)
    ok = (hi - lo) > 1e-3
    out = np.where(ok, (img - lo) / np.where(ok, hi - lo, 1.0), img)
    return out, lo, hi


def _gaussian_kernel(sigma: float) -> np.ndarray:
    half = max(8, int(sigma) * 2)
    r = np.arange(-half + 1, half, dtype=np.float64)
    k = np.exp(-(r**2) / (2 * sigma**2))
    return k / k.sum()


def _upsample_bilinear(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and edge clamping (align_corners=False)."""
    out = small
    for axis, size in ((1, shape[0]), (2, shape[1])):
        n_in = out.shape[axis]
        src = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (src - i0).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out


def draw_settings(params: CellPose3Params, seed, diameter_px: float = 30.0) -> dict:
    """The per-image choices of one degradation: recipe, downsampling factor, blur sigma (0 =
    none) and Poisson scale (0 = none). Drawn in a fixed order from the seed alone."""
    if not diameter_px > 0:
        raise CellgenError(f"cell diameter must be positive, got {diameter_px}")
    choice = streams(seed, ("choice", "shot"))["choice"]
    pick, r_ds, ds_factor, r_blur, r_sigma, r_pois, scale = (
        choice.integers(3), choice.random(), choice.integers(2, max(params.ds_max, 2) + 1), choice.random(),
        choice.random(), choice.random(), choice.gamma(params.alpha, 1.0 / params.beta))
    if params.recipe == "all":
        params = RECIPES[("denoise", "deblur", "upsample")[pick]]
    ds = int(ds_factor) if r_ds < params.downsample else 1
    sigma = 0.0
    if ds > 1 or r_blur < params.blur:
        r = ds / 2.0 / params.gblur if ds > 1 else r_sigma
        sigma = diameter_px / 30.0 * params.gblur * (1 / params.gblur + (1 - 1 / params.gblur) * r)
    return {"recipe": params.recipe, "downsample": ds, "sigma": float(sigma),
            "poisson_scale": max(1.0, float(scale)) if r_pois < params.poisson else 0.0}


def apply_settings(x: np.ndarray, settings: dict, u_shot: np.ndarray | None = None) -> np.ndarray:
    """The degraded, renormalised float image (C, H, W) for fixed per-image ``settings``."""
    img, _, _ = _normalize99(np.asarray(x, np.float64))
    img = np.clip(img, 0.0, None)  # CellPose clamps its normalised training images at 0
    h, w = img.shape[1:]
    if settings["sigma"] > 0:
        k = _gaussian_kernel(settings["sigma"])
        img = ndi.convolve1d(img, k, axis=1, mode="constant", cval=0.0)
        img = ndi.convolve1d(img, k, axis=2, mode="constant", cval=0.0)
    ds = settings["downsample"]
    if ds > 1:
        img = _upsample_bilinear(img[:, ::ds, ::ds], (h, w))
    if settings["poisson_scale"] > 0:
        if u_shot is None:
            raise CellgenError("Poisson noise needs the per-pixel uniforms")
        img = poisson_quantile(u_shot, settings["poisson_scale"] * np.clip(img, 0.0, None))
    return _normalize99(img)[0]


def degrade(x: np.ndarray, params: CellPose3Params, seed, diameter_px: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Degraded (C, H, W) uint16 image (clean image's scale, 0..65535) and SNR (dB per channel)."""
    settings = draw_settings(params, seed, diameter_px)
    u_shot = streams(seed, ("choice", "shot"))["shot"].random(x.shape)
    img = apply_settings(x, settings, u_shot)
    _, lo, hi = _normalize99(np.asarray(x, np.float64))
    out = np.clip(np.round((lo + img * (hi - lo)) * 65535.0), 0, 65535)
    clean = np.asarray(x, np.float64) * 65535.0
    err = out - clean
    with np.errstate(divide="ignore"):
        snr = 10.0 * np.log10((clean**2).mean(axis=(1, 2)) / np.maximum((err**2).mean(axis=(1, 2)), 1e-12))
    return out.astype(np.uint16), snr.astype(np.float32)
