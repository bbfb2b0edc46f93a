"""Noise variants by name: the classic presets, camera presets, photon ladders, CellPose 3.

Names accepted wherever variants are named (``--variants``):

* ``clean``; the classic presets ``gaussian``, ``poisson``, ``mild``, ``moderate``, ``severe``
  (their parameters and bytes never change);
* a camera preset, ``ccd-icx285``, ``emccd-ixon888``, ``scmos-orca-fusion``
  (:data:`DEFAULT_PHOTONS` photons at the peak);
* ``NAME@PHOTONS`` for any of the above but clean: the same variant with that many photons
  at the peak, e.g. ``scmos-orca-fusion@50`` (a photon ladder is a list of these);
* ``cellpose3`` (CellPose 3's degradations, one recipe per image) or ``cellpose3-denoise``,
  ``cellpose3-deblur``, ``cellpose3-upsample``.

Public API: :func:`resolve`, :func:`resolve_all`, :func:`ladder`, :func:`params_from_json`,
:func:`is_classic`, :func:`variant_names`, :func:`describe`.
"""

from __future__ import annotations

import json
from dataclasses import replace

from cellgen.errors import CellgenError
from cellgen.noise.camera import CAMERAS, Acquisition
from cellgen.noise.cellpose3 import RECIPES, CellPose3Params
from cellgen.noise.legacy import PRESETS, NoiseParams
from cellgen.noise.optics import OpticsParams

DEFAULT_PHOTONS = 1000.0
CELLPOSE3 = "cellpose3"
CLEAN = "clean"


def variant_names() -> list[str]:
    return [*PRESETS, *CAMERAS, CELLPOSE3, *(f"{CELLPOSE3}-{r}" for r in RECIPES if r != "all")]


def _photons(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CellgenError(f"variant '{name}': photons after '@' must be a positive number, got {text!r}")
    return value


def resolve(name: str, optics: OpticsParams | None = None):
    """Parameters of a named variant (None for clean). ``optics`` applies to camera variants."""
    base, at, photons = name.partition("@")
    if base == CLEAN:
        if at:
            raise CellgenError("the clean variant has no photon count")
        return None
    if base in PRESETS:
        params = PRESETS[base]
        return replace(params, photons=_photons(photons, name)) if at else params
    if base in CAMERAS:
        acq = Acquisition(CAMERAS[base], photons=_photons(photons, name) if at else DEFAULT_PHOTONS,
                          optics=optics or OpticsParams())
        return acq
    if base == CELLPOSE3 or base.startswith(CELLPOSE3 + "-"):
        recipe = "all" if base == CELLPOSE3 else base[len(CELLPOSE3) + 1:]
        if recipe in RECIPES and recipe != "all" or base == CELLPOSE3:
            if at:
                raise CellgenError(f"variant '{name}': CellPose 3 degradations draw their own photon scale")
            return RECIPES[recipe]
    raise CellgenError(f"unknown noise preset '{name}'; choose from: {', '.join([CLEAN, *variant_names()])} "
                       "(or NAME@PHOTONS)")


def resolve_all(names, optics: OpticsParams | None = None) -> dict:
    """Noisy variants (clean left out) by name, in order; a repeated name counts once."""
    out = {}
    for name in names:
        params = resolve(name, optics)
        if params is not None:
            out[name] = params
    return out


def ladder(base: str, photons) -> list[str]:
    """Variant names of a photon ladder on one camera (or classic preset)."""
    if base not in CAMERAS and base not in PRESETS or base == CLEAN:
        raise CellgenError(f"a photon ladder needs a camera ({', '.join(CAMERAS)}) or a noise preset, got '{base}'")
    values = [float(p) for p in photons]
    names = [f"{base}@{p:g}" for p in values]
    for n in names:
        resolve(n)
    return names


def is_classic(params) -> bool:
    """True for the classic preset model, whose set layout predates SNR tiers."""
    return isinstance(params, NoiseParams)


def params_from_json(text: str):
    """The parameters a set stores for a variant (``noisy/<variant>/images`` attribute ``params``)."""
    try:
        d = json.loads(text)
    except ValueError as err:
        raise CellgenError(f"unreadable noise parameters {text!r}: {err}") from None
    model = d.get("model") if isinstance(d, dict) else None
    try:
        if model == "camera":
            return Acquisition.from_dict(d)
        if model == CELLPOSE3:
            return CellPose3Params.from_dict(d)
    except (KeyError, TypeError, ValueError) as err:
        raise CellgenError(f"unreadable noise parameters {text!r}: {err}") from None
    return NoiseParams.from_json(text)


def describe(params) -> str:
    """One line on what a variant's parameters are (for listings; the JSON has everything)."""
    if params is None:
        return "noise-free"
    if isinstance(params, NoiseParams):
        read = f", read noise {params.read_sigma:g} e-" if params.read_sigma else ""
        return (f"classic: {params.photons:g} photons at peak, {'Poisson' if params.poisson else 'no shot noise'}"
                f"{read}, background {params.background_photons:g}, gain {params.gain:g} ADU/e-, "
                f"offset {params.offset:g}")
    if isinstance(params, Acquisition):
        o = params.optics
        optics = []
        if o.na:
            optics.append(f"Gaussian PSF NA {o.na:g} at {'/'.join(f'{w:g}' for w in o.emission_nm)} nm")
        if o.psf_file:
            optics.append(f"PSF file {o.psf_file}")
        for name, value in (("bleached", o.bleached_fraction), ("haze", o.haze_fraction),
                            ("vignetting", o.vignetting)):
            if value:
                optics.append(f"{name} {value:g}")
        return (f"camera {params.camera.name}: {params.photons:g} photons/px at peak, background "
                f"{params.background_photons:g}, exposure {params.exposure_s:g} s; optics: "
                f"{', '.join(optics) or 'none'}")
    if isinstance(params, CellPose3Params):
        return f"CellPose 3 degradations, recipe '{params.recipe}'"
    return type(params).__name__
