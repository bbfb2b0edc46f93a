"""Optics and illumination applied to a clean image before the camera sees it.

All quantities are relative intensities (1 = the clean image's peak); the camera turns them
into photons. In order:

1. PSF blur: a Gaussian approximation of the widefield PSF, lateral standard deviation
   ``sigma = 0.21 * lambda_em / NA`` (Zhang, Zerubia & Olivo-Marin 2007, Appl. Opt. 46:1819,
   paraxial widefield), in pixels ``sigma_px = 0.21 * emission_nm / 1000 / (na * pixel_size_um)``;
   or a measured/computed PSF from a file (2-D ``.npy`` or ``.tif``, normalised to sum 1).
2. Photobleaching: the fluorophore signal loses ``bleached_fraction`` (the background does not).
3. Out-of-focus haze: ``haze_fraction`` of the blurred signal again, spread with a wide
   Gaussian (``haze_sigma_um``), the light of planes above and below the focus.
4. Flat field (vignetting): ``1 - vignetting * (r / r_corner)^2``, so the corners receive
   ``1 - vignetting`` of the centre's light.

Public API: :class:`OpticsParams`, :func:`apply_optics`, :func:`psf_sigma_px`, :func:`flat_field`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellgen.errors import CellgenError

#: Gaussian widefield PSF: lateral sigma = PSF_SIGMA_FACTOR * wavelength / NA
PSF_SIGMA_FACTOR = 0.21


@dataclass(frozen=True)
class OpticsParams:
    na: float = 0.0  # numerical aperture; 0 = no PSF blur
    emission_nm: tuple[float, ...] = (461.0, 520.0)  # per channel (nucleus: Hoechst; cytoplasm: GFP-like)
    psf_file: str = ""  # a 2-D PSF image instead of the Gaussian
    psf_sha256: str = ""  # recorded with the file, checked when it is read again
    bleached_fraction: float = 0.0  # fraction of the fluorophore signal lost (0..1)
    haze_fraction: float = 0.0  # out-of-focus light, relative to the in-focus signal
    haze_sigma_um: float = 10.0
    vignetting: float = 0.0  # fraction of light lost in the corners (0..1)

    def __post_init__(self):
        object.__setattr__(self, "emission_nm", tuple(float(w) for w in self.emission_nm))
        if self.na < 0 or self.na > 1.7:
            raise CellgenError(f"numerical aperture must be in 0..1.7, got {self.na}")
        if any(not w > 0 for w in self.emission_nm):
            raise CellgenError(f"emission wavelengths must be positive (nm), got {list(self.emission_nm)}")
        for name in ("bleached_fraction", "vignetting"):
            if not 0 <= getattr(self, name) < 1:
                raise CellgenError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.haze_fraction < 0 or not self.haze_sigma_um > 0:
            raise CellgenError("haze_fraction must be >= 0 and haze_sigma_um > 0")
        if self.psf_file and self.na:
            raise CellgenError("give either a PSF file or a numerical aperture, not both")

    @property
    def is_identity(self) -> bool:
        return not (self.na or self.psf_file or self.bleached_fraction or self.haze_fraction or self.vignetting)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["emission_nm"] = list(self.emission_nm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OpticsParams":
        return cls(**dict(d, emission_nm=tuple(d.get("emission_nm", cls.emission_nm))))

    def with_psf_file(self, path) -> "OpticsParams":
        """These optics with a PSF file, its sha256 recorded so a set names the exact file."""
        data = Path(path).read_bytes() if Path(path).is_file() else None
        if data is None:
            raise CellgenError(f"no such PSF file: {path}")
        load_psf(path)  # refuse an unreadable file now, not mid-set
        return OpticsParams(**dict(self.to_dict(), psf_file=str(Path(path).resolve()),
                                   psf_sha256=hashlib.sha256(data).hexdigest(), emission_nm=self.emission_nm))


def psf_sigma_px(na: float, emission_nm: float, pixel_size_um: float) -> float:
    """Lateral sigma (pixels) of the Gaussian widefield PSF approximation."""
    if not na > 0 or not pixel_size_um > 0:
        raise CellgenError("the PSF needs a positive numerical aperture and pixel size")
    return PSF_SIGMA_FACTOR * emission_nm / 1000.0 / (na * pixel_size_um)


def load_psf(path, sha256: str = "") -> np.ndarray:
    """A 2-D PSF from ``.npy`` or ``.tif``, normalised to sum 1 (a 3-D stack: its middle plane)."""
    path = Path(path)
    if not path.is_file():
        raise CellgenError(f"no such PSF file: {path}")
    if sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise CellgenError(f"PSF file {path} changed since it was recorded (sha256 differs)")
    try:
        if path.suffix.lower() == ".npy":
            psf = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            psf = tifffile.imread(path)
        else:
            raise CellgenError(f"PSF file must be .npy or .tif, got {path.name}")
    except (ValueError, OSError) as err:
        raise CellgenError(f"cannot read PSF file {path}: {err}") from None
    psf = np.asarray(psf, np.float64)
    if psf.ndim == 3:
        psf = psf[psf.shape[0] // 2]
    if psf.ndim != 2 or min(psf.shape) < 1 or not np.isfinite(psf).all() or (psf < 0).any() or psf.sum() <= 0:
        raise CellgenError(f"PSF file {path} must hold a finite, non-negative 2-D (or 3-D) image")
    return psf / psf.sum()


def flat_field(shape: tuple[int, int], vignetting: float) -> np.ndarray:
    """Relative illumination, 1 at the centre and ``1 - vignetting`` in the corners."""
    h, w = shape
    yy = (np.arange(h) - (h - 1) / 2.0)[:, None]
    xx = (np.arange(w) - (w - 1) / 2.0)[None, :]
    r2 = (yy**2 + xx**2) / max(((h - 1) / 2.0) ** 2 + ((w - 1) / 2.0) ** 2, 1e-12)
    return 1.0 - vignetting * r2


def apply_optics(x: np.ndarray, optics: OpticsParams, pixel_size_um: float | None) -> np.ndarray:
    """Relative light at each pixel of a (C, H, W) clean image in [0, 1]."""
    if optics.is_identity:
        return x
    c = x.shape[0]
    out = np.empty_like(x)
    psf = load_psf(optics.psf_file, optics.psf_sha256) if optics.psf_file else None
    need_px = optics.na or optics.haze_fraction
    if need_px and not (pixel_size_um and pixel_size_um > 0):
        raise CellgenError("PSF blur and haze need the image's pixel size")
    for ch in range(c):
        img = x[ch]
        if psf is not None:
            img = ndi.convolve(img, psf, mode="reflect")
        elif optics.na:
            wavelength = optics.emission_nm[min(ch, len(optics.emission_nm) - 1)]
            img = ndi.gaussian_filter(img, psf_sigma_px(optics.na, wavelength, pixel_size_um), mode="reflect")
        img = img * (1.0 - optics.bleached_fraction)
        if optics.haze_fraction:
            img = img + optics.haze_fraction * ndi.gaussian_filter(img, optics.haze_sigma_um / pixel_size_um,
                                                                   mode="reflect")
        out[ch] = img
    if optics.vignetting:
        out *= flat_field(x.shape[1:], optics.vignetting)[None]
    return out
