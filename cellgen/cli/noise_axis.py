"""The noise-axis options the set-making commands share: ``--photons`` (a photon ladder on a
camera preset), optics in front of camera variants, ``--snr-thresholds``."""

from __future__ import annotations

import functools

import click

from cellgen.cli.options import parse_floats, parse_list
from cellgen.errors import CellgenError

DEFAULT_CAMERA = "scmos-orca-fusion"

_AXIS_OPTIONS = [
    click.option("--photons", default=None, metavar="LIST",
                 help="Photon ladder, e.g. 50,100,200,500,1000: one variant CAMERA@P per level (photons/px at "
                      "the clean image's peak), added to --variants; images get SNR tiers."),
    click.option("--camera", default=DEFAULT_CAMERA, show_default=True,
                 help="Camera preset of the --photons ladder (see 'cellgen noise cameras')."),
    click.option("--na", type=click.FloatRange(0, 1.7, min_open=True), default=None,
                 help="Camera variants: Gaussian PSF blur from this numerical aperture (sigma = 0.21 lambda / NA)."),
    click.option("--emission-nm", default="461,520", show_default=True,
                 help="Camera variants: emission wavelength per channel (nucleus, cytoplasm), nm."),
    click.option("--psf-file", type=click.Path(dir_okay=False), default=None,
                 help="Camera variants: a 2-D PSF (.npy or .tif) instead of the Gaussian."),
    click.option("--haze", type=click.FloatRange(0), default=0.0, show_default=True,
                 help="Camera variants: out-of-focus haze, relative to the in-focus signal."),
    click.option("--vignetting", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help="Camera variants: fraction of light lost in the corners (flat field)."),
    click.option("--bleaching", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                 help="Camera variants: fraction of the fluorophore signal bleached."),
    click.option("--snr-thresholds", default=None, metavar="DB,DB,...",
                 help="SNR tier boundaries in dB [default 10,15,20 when a variant is not a classic preset]."),
]
_AXIS_KEYS = ("photons", "camera", "na", "emission_nm", "psf_file", "haze", "vignetting", "bleaching",
              "snr_thresholds")


def noise_variant_args(variants: str, photons=None, camera=DEFAULT_CAMERA, na=None, emission_nm="461,520",
                       psf_file=None, haze=0.0, vignetting=0.0, bleaching=0.0, snr_thresholds=None) -> dict:
    """``variants`` and ``snr_tiers`` for :func:`cellgen.pipeline.write_set` from the options."""
    from cellgen import noise

    names = parse_list(variants)
    if photons:
        names += [n for n in noise.ladder(camera, parse_floats(photons, "--photons")) if n not in names]
    optics = noise.OpticsParams(na=na or 0.0, emission_nm=tuple(parse_floats(emission_nm, "--emission-nm")),
                                haze_fraction=haze, vignetting=vignetting, bleached_fraction=bleaching)
    if psf_file:
        optics = optics.with_psf_file(psf_file)
    params = noise.resolve_all(names, optics)
    if not optics.is_identity and not any(isinstance(p, noise.Acquisition) for p in params.values()):
        raise CellgenError("optics options (--na, --psf-file, --haze, --vignetting, --bleaching) apply to "
                           "camera variants; name one in --variants or give --photons")
    scheme = noise.SNRTierScheme.parse(snr_thresholds) if snr_thresholds else None
    return {"variants": params if not optics.is_identity else names, "snr_tiers": scheme}


def noise_axis_options(command):
    """Add the noise-axis options to a set-making command; it receives ``noise_args`` (kwargs for
    the pipeline: ``variants`` and ``snr_tiers``) in place of ``variants`` and those options."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        axis = {k: kwargs.pop(k) for k in _AXIS_KEYS}
        kwargs["noise_args"] = noise_variant_args(kwargs.pop("variants"), **axis)
        return command(*args, **kwargs)

    for option in reversed(_AXIS_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
