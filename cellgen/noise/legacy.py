"""Camera noise with physical parameters: photon shot noise, read noise, gain, offset, PSF.

Model, per pixel of a clean image ``x`` in [0, 1] (1 = peak signal):

    expected electrons  e = photons * blur_psf(x) + background_photons
    shot noise          e' ~ Poisson(e)                 (if ``poisson``)
    read noise          e'' = e' + Normal(0, read_sigma) (electrons rms)
    digitisation        ADU = clip(round(gain * e'' + offset), 0, 2**bit_depth - 1)

The result is stored as uint16 ADU. The measured SNR compares the noisy ADU with the
noise-free expectation ``gain * e + offset``:
``SNR_dB = 10 log10( mean((gain * e)^2) / mean((ADU - gain * e - offset)^2) )``, per channel.

Public API: :class:`NoiseParams`, :data:`PRESETS`, :func:`get_preset`, :func:`apply_noise`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from cellgen.errors import CellgenError


@dataclass(frozen=True)
class NoiseParams:
    photons: float = 1000.0  # photo-electrons at peak signal (x = 1)
    poisson: bool = True
    read_sigma: float = 0.0  # electrons rms
    background_photons: float = 0.0
    gain: float = 1.0  # ADU per electron
    offset: float = 100.0  # ADU
    psf_sigma_px: float = 0.0
    bit_depth: int = 16

    def __post_init__(self):
        if not self.photons > 0:
            raise CellgenError(f"photons at peak must be positive, got {self.photons}")
        if self.read_sigma < 0 or self.background_photons < 0 or self.psf_sigma_px < 0:
            raise CellgenError("read_sigma, background_photons and psf_sigma_px must be >= 0")
        if not self.gain > 0:
            raise CellgenError(f"gain must be positive, got {self.gain}")
        if not 8 <= self.bit_depth <= 16:
            raise CellgenError(f"bit_depth must be 8..16 (stored as uint16), got {self.bit_depth}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NoiseParams":
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as err:
            raise CellgenError(f"unreadable noise parameters {text!r}: {err}") from None


# Peak photon counts span a bright widefield image (~2000 e-) down to a starved one (~40 e-);
# read noise of 2-8 e- rms covers sCMOS and older CCD cameras.
PRESETS: dict[str, NoiseParams | None] = {
    "clean": None,
    "mild": NoiseParams(photons=2000, read_sigma=2.0, background_photons=5),
    "moderate": NoiseParams(photons=400, read_sigma=4.0, background_photons=5),
    "severe": NoiseParams(photons=60, read_sigma=8.0, background_photons=5),
    # single-mechanism variants, as in the reference paper's noisy sets
    "gaussian": NoiseParams(photons=400, poisson=False, read_sigma=20.0),
    "poisson": NoiseParams(photons=100, poisson=True, read_sigma=0.0),
}


def get_preset(name: str) -> NoiseParams | None:
    try:
        return PRESETS[name]
    except KeyError:
        raise CellgenError(f"unknown noise preset '{name}'; choose from: {', '.join(PRESETS)}") from None


def variant_seed(image_seed: int, variant: str) -> np.random.SeedSequence:
    """Per-image, per-variant noise seed: independent of which other variants are written."""
    return np.random.SeedSequence([int(image_seed), zlib.crc32(variant.encode()), 0x401CE])


def as_unit_float(image) -> np.ndarray:
    """A float64 copy of a float image in [0, 1] or of a uint16 one at full scale 65535."""
    x = np.asarray(image)
    if x.dtype == np.uint16:
        x = x.astype(np.float64) / 65535.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float64)
    else:
        raise CellgenError(f"noise needs a float image in [0, 1] or uint16, got {x.dtype}")
    if x.ndim not in (2, 3):
        raise CellgenError(f"noise needs an (H, W) or (C, H, W) image, got shape {np.shape(image)}")
    if not np.isfinite(x).all():
        raise CellgenError("noise needs a finite image (it holds NaN or infinity)")
    return x


def apply_noise(image: np.ndarray, params: NoiseParams, seed) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint16 ADU image and its measured SNR in dB per channel.

    ``image`` is (C, H, W) or (H, W), float in [0, 1] or uint16 full-scale (divided by 65535).
    ``seed`` is an int or a :class:`numpy.random.SeedSequence`.
    """
    x = as_unit_float(image)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if x.ndim != 3:
        raise CellgenError(f"noise needs an (H, W) or (C, H, W) image, got shape {np.shape(image)}")
    rng = np.random.Generator(np.random.PCG64(seed))
    if params.psf_sigma_px > 0:
        x = ndi.gaussian_filter(x, (0, params.psf_sigma_px, params.psf_sigma_px))
    electrons = params.photons * np.clip(x, 0.0, None) + params.background_photons
    noisy = rng.poisson(electrons).astype(np.float64) if params.poisson else electrons.copy()
    if params.read_sigma > 0:
        noisy += rng.normal(0.0, params.read_sigma, noisy.shape)
    full = 2**params.bit_depth - 1
    adu = np.clip(np.round(params.gain * noisy + params.offset), 0, full)
    signal = params.gain * electrons
    error = adu - signal - params.offset
    power_s = (signal**2).mean(axis=(1, 2))
    power_n = (error**2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        snr = 10.0 * np.log10(power_s / np.maximum(power_n, 1e-12))
    adu = adu.astype(np.uint16)
    return (adu[0], snr[:1]) if squeeze else (adu, snr.astype(np.float32))


