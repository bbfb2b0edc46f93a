"""Noise variants of a clean image: classic presets, a physical camera chain, CellPose 3.

* :mod:`cellgen.noise.legacy` — the classic model (photons, Poisson, read noise, gain,
  offset) behind ``gaussian``, ``poisson``, ``mild``, ``moderate``, ``severe``;
* :mod:`cellgen.noise.camera` — optics -> photons -> QE -> Poisson -> dark + CIC -> full well
  -> EM gain -> read noise -> ADC, with presets ``ccd-icx285``, ``emccd-ixon888``,
  ``scmos-orca-fusion`` (:mod:`cellgen.noise.optics` for PSF, bleaching, haze, flat field);
* :mod:`cellgen.noise.cellpose3` — CellPose 3's training degradations;
* :mod:`cellgen.noise.tiers` — SNR tiers; :mod:`cellgen.noise.ptc` — photon-transfer curves;
* :mod:`cellgen.noise.variants` — names (``ccd-icx285@200``) to parameters.

Public API: :func:`apply_noise` (any variant's parameters), :func:`get_preset` (any name),
:func:`variant_seed`, and the names re-exported below.
"""

from __future__ import annotations

import numpy as np

from cellgen.errors import CellgenError
from cellgen.noise import legacy
from cellgen.noise.camera import CAMERAS, Acquisition, CameraParams, acquire
from cellgen.noise.cellpose3 import RECIPES as CELLPOSE3_RECIPES
from cellgen.noise.cellpose3 import CellPose3Params, cellpose_diameter, degrade
from cellgen.noise.legacy import PRESETS, NoiseParams, variant_seed
from cellgen.noise.optics import OpticsParams
from cellgen.noise.tiers import CLEAN_TIER, DEFAULT_SNR_TIERS, SNRTierScheme
from cellgen.noise.variants import describe, is_classic, ladder, params_from_json, resolve, resolve_all, variant_names

__all__ = [
    "Acquisition", "CAMERAS", "describe", "CELLPOSE3_RECIPES", "CLEAN_TIER", "CameraParams", "CellPose3Params",
    "DEFAULT_SNR_TIERS", "NoiseParams", "OpticsParams", "PRESETS", "SNRTierScheme", "apply_noise",
    "get_preset", "is_classic", "ladder", "params_from_json", "resolve", "resolve_all", "variant_names",
    "variant_seed",
]


def get_preset(name: str):
    """Parameters of any named variant: classic preset, camera, ``NAME@PHOTONS``, cellpose3."""
    return resolve(name)


def apply_noise(image, params, seed, *, pixel_size_um: float | None = None,
                cell: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint16 image and its SNR in dB per channel, for any variant's parameters.

    ``image`` is (C, H, W) or (H, W), float in [0, 1] or uint16 full scale; ``seed`` an int or
    :class:`numpy.random.SeedSequence`. ``pixel_size_um`` is needed by camera variants with PSF
    blur or haze; ``cell`` (the cell instance map) gives CellPose 3 variants the cell diameter.
    Classic presets ignore both and keep their bytes.
    """
    if isinstance(params, NoiseParams):
        return legacy.apply_noise(image, params, seed)
    x = legacy.as_unit_float(image)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if isinstance(params, Acquisition):
        adu, snr = acquire(x, params, seed, pixel_size_um)
    elif isinstance(params, CellPose3Params):
        diameter = cellpose_diameter(cell) if cell is not None else 30.0
        adu, snr = degrade(x, params, seed, diameter)
    else:
        raise CellgenError(f"not noise parameters: {type(params).__name__}")
    return (adu[0], snr[:1]) if squeeze else (adu, snr)


def snr_scheme_for(params: dict, scheme: SNRTierScheme | None = None) -> SNRTierScheme | None:
    """The SNR tier scheme a set with these noisy variants records: ``scheme`` when given, the
    default when any variant is not a classic preset, else None (such sets keep their old bytes)."""
    if scheme is not None:
        return scheme
    if any(not is_classic(p) for p in params.values()):
        return DEFAULT_SNR_TIERS
    return None


def set_snr_scheme(ds) -> SNRTierScheme:
    """The SNR tiers of an open set: its stored ``snr_tier_scheme``, or the default for sets without."""
    text = ds.attrs.get("snr_tier_scheme")
    return SNRTierScheme.from_json(text) if text else DEFAULT_SNR_TIERS


def snr_tiers_of(ds, variant: str) -> np.ndarray:
    """Per-image SNR tier of one variant of an open set (``clean`` for the clean images).

    The tier is a function of the stored ``snr_db`` and the stored thresholds, so it is never
    stored a second time and can never disagree with them.
    """
    scheme = set_snr_scheme(ds)
    snr = ds.snr_db(variant)
    return np.array([scheme.assign(row) for row in snr], dtype=object)


def snr_tier_of(ds, index: int, variant: str) -> str:
    """SNR tier of one image of one variant of an open set (``clean`` for clean images)."""
    if variant == CLEAN_TIER:
        return CLEAN_TIER
    return set_snr_scheme(ds).assign(ds.snr_db(variant)[int(index)])
