"""A camera in physical units, and an acquisition: optics -> photons -> camera -> ADU.

The chain, per pixel, in this order (units in brackets):

1. photons      ``p = photons * optics(x) + background_photons``            [photons/px]
2. QE           ``e = qe(lambda_channel) * p``                             [e-, expected]
3. Poisson      shot noise on the photo-electrons
4. dark + CIC   ``dark_current * exposure_s + clock_induced_charge``       [e-, Poisson too;
                a sum of independent Poisson counts is Poisson of the summed mean, so 3-4
                are drawn as one count]
5. full well    ``min(n, full_well)``                                       [e-]
6. EM gain      ``Gamma(shape=n, scale=em_gain)``, capped at ``em_full_well`` (EMCCD only)
7. read noise   ``+ Normal(0, read_noise)``; sCMOS: a fixed per-pixel map    [e- rms]
8. ADC          ``ADU = clip(round(e / adc_gain + offset), 0, 2**bit_depth - 1)``
                [adc_gain in e-/ADU]

Every draw comes from a per-pixel uniform or normal fixed by the seed (see
:mod:`cellgen.noise.sampling`), so the same seed gives the same bytes and a small change of
the clean image gives a small change of the noisy one.

SNR, as for the classic presets: the noise-free expectation ``s = E[e_out] / adc_gain`` (ADU
above the offset) against the error ``ADU - offset - s``:
``SNR_dB = 10 log10(mean(s^2) / mean(err^2))`` per channel.

Public API: :class:`CameraParams`, :data:`CAMERAS`, :class:`Acquisition`, :func:`acquire`,
:func:`read_noise_map`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from cellgen.errors import CellgenError
from cellgen.noise.optics import OpticsParams, apply_optics
from cellgen.noise.sampling import gamma_quantile, poisson_quantile, streams

# Excess noise factor squared of an EM register at high gain (Robbins & Hadwen 2003):
# the variance of a Gamma(n, G) output is n G^2 while a noiseless gain would give 0 extra.
EM_EXCESS_NOISE_F2 = 2.0


@dataclass(frozen=True)
class CameraParams:
    name: str
    kind: str  # "ccd", "emccd", "scmos"
    qe: tuple[tuple[float, float], ...]  # (wavelength nm, quantum efficiency e-/photon), interpolated
    read_noise_e: float  # e- rms (sCMOS: rms over the sensor's per-pixel map)
    full_well_e: float
    adc_gain_e_per_adu: float  # e- per ADU
    offset_adu: float
    bit_depth: int
    dark_current_e_per_s: float = 0.0  # e-/px/s
    clock_induced_charge_e: float = 0.0  # e-/px/frame
    em_gain: float = 1.0
    em_full_well_e: float = 0.0  # gain-register well (EMCCD); 0 = none
    read_noise_median_e: float = 0.0  # sCMOS: median of the per-pixel map (0 = uniform read noise)
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "qe", tuple((float(w), float(q)) for w, q in self.qe))
        if self.kind not in ("ccd", "emccd", "scmos"):
            raise CellgenError(f"camera kind must be ccd, emccd or scmos, got {self.kind!r}")
        if not self.qe or any(not 0 < q <= 1 for _, q in self.qe):
            raise CellgenError("quantum efficiency must be in (0, 1]")
        for name in ("read_noise_e", "dark_current_e_per_s", "clock_induced_charge_e", "em_full_well_e",
                     "read_noise_median_e"):
            if not getattr(self, name) >= 0:
                raise CellgenError(f"camera {name} must be >= 0, got {getattr(self, name)}")
        for name in ("full_well_e", "adc_gain_e_per_adu", "em_gain"):
            if not getattr(self, name) > 0:
                raise CellgenError(f"camera {name} must be positive, got {getattr(self, name)}")
        if not 8 <= self.bit_depth <= 16:
            raise CellgenError(f"bit_depth must be 8..16 (stored as uint16), got {self.bit_depth}")
        if self.read_noise_median_e and not 0 < self.read_noise_median_e < self.read_noise_e:
            raise CellgenError("an sCMOS read-noise median must lie below its rms")

    def qe_at(self, wavelength_nm: float) -> float:
        w = np.array([p[0] for p in self.qe])
        q = np.array([p[1] for p in self.qe])
        return float(np.interp(wavelength_nm, w, q))

    @property
    def max_adu(self) -> int:
        return 2**self.bit_depth - 1

    @property
    def system_gain_e_per_adu(self) -> float:
        """Photo-electrons per ADU seen in a photon-transfer curve (EM gain and its excess noise
        included): the slope of variance against mean is ``1 / system_gain``."""
        f2 = EM_EXCESS_NOISE_F2 if self.kind == "emccd" and self.em_gain > 1 else 1.0
        return self.adc_gain_e_per_adu / (f2 * self.em_gain)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["qe"] = [list(p) for p in self.qe]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CameraParams":
        return cls(**d)


# Values from microsim's detector library (tlambert03/microsim, schema/detectors/lib.py) with
# microsim's rule that the ADC range spans the well (adc_gain = well / (2**bits - 1)); QE points
# read off the QE curves microsim ships for each sensor.
CAMERAS: dict[str, CameraParams] = {
    "ccd-icx285": CameraParams(
        name="ccd-icx285", kind="ccd",
        qe=((400, 0.52), (450, 0.68), (500, 0.68), (550, 0.58), (600, 0.48)),
        read_noise_e=6.0, full_well_e=18000, adc_gain_e_per_adu=18000 / 4095, offset_adu=100, bit_depth=12,
        dark_current_e_per_s=0.0005, clock_induced_charge_e=1.0,
        source="Sony ICX285 interline CCD (CoolSNAP HQ2 / ORCA-ER class); microsim ICX285: read noise 6 e-, "
               "full well 18,000 e-, dark 0.0005 e-/px/s, clock-induced charge 1 e-, 12-bit, offset 100",
    ),
    "emccd-ixon888": CameraParams(
        name="emccd-ixon888", kind="emccd",
        qe=((400, 0.53), (450, 0.79), (500, 0.93), (550, 0.97), (600, 0.96), (650, 0.94)),
        read_noise_e=40.0, full_well_e=80000, adc_gain_e_per_adu=730000 / 65535, offset_adu=100, bit_depth=16,
        dark_current_e_per_s=0.0005, em_gain=300.0, em_full_well_e=730000,
        source="Andor iXon Ultra 888 BV EMCCD; microsim Andor_iXon_Ultra_888_BVF: read noise 40 e- (10 MHz), "
               "full well 80,000 e-, dark 0.0005 e-/px/s, 16-bit, offset 100, EM gain up to 1000. "
               "EM gain 300 here (a common working gain: 1000 saturates the gain register at ~730 e- in); "
               "gain-register well 730,000 e- (Andor specification), which the ADC range spans",
    ),
    "scmos-orca-fusion": CameraParams(
        name="scmos-orca-fusion", kind="scmos",
        qe=((404, 0.73), (452, 0.84), (500, 0.90), (548, 0.95), (604, 0.94), (652, 0.90)),
        read_noise_e=1.0, read_noise_median_e=0.7, full_well_e=15000, adc_gain_e_per_adu=15000 / 65535,
        offset_adu=100, bit_depth=16, dark_current_e_per_s=1.0,
        source="Hamamatsu ORCA-Fusion BT (C15440-20UP) sCMOS; microsim C15440_20UP: read noise 1.0 e- rms, "
               "full well 15,000 e-, dark 1.0 e-/px/s, 16-bit, offset 100; per-pixel read noise log-normal "
               "with the 0.7 e- median of Hamamatsu's specification (ultra-quiet scan)",
    ),
}


def read_noise_map(camera: CameraParams, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel read noise (e- rms) of the sensor: fixed by the camera, not by the image.

    sCMOS pixels each have their own amplifier; their read noise is close to log-normal. With
    median m and rms r, ``log sigma ~ Normal(log m, s)`` where ``r^2 = m^2 exp(2 s^2)``; the map
    is then scaled so its rms is exactly ``read_noise_e``. Other cameras: uniform.
    """
    if camera.kind != "scmos" or not camera.read_noise_median_e:
        return np.full(shape, camera.read_noise_e)
    s = np.sqrt(np.log(camera.read_noise_e / camera.read_noise_median_e))
    rng = np.random.Generator(np.random.PCG64([zlib.crc32(camera.name.encode()), *shape]))
    sigma = camera.read_noise_median_e * np.exp(s * rng.standard_normal(shape))
    return sigma * (camera.read_noise_e / np.sqrt(np.mean(sigma**2)))


@dataclass(frozen=True)
class Acquisition:
    """One noise variant on the camera chain: the camera, the optics in front of it, the light."""

    camera: CameraParams
    photons: float = 1000.0  # photons/px reaching the sensor at the clean image's peak (x = 1), per exposure
    background_photons: float = 0.0  # uniform photons/px (autofluorescence, stray light)
    exposure_s: float = 0.1
    optics: OpticsParams = field(default_factory=OpticsParams)

    def __post_init__(self):
        if not self.photons > 0 or not np.isfinite(self.photons):
            raise CellgenError(f"photons at peak must be a positive number, got {self.photons}")
        if self.background_photons < 0 or not self.exposure_s > 0:
            raise CellgenError("background_photons must be >= 0 and exposure_s > 0")

    def with_photons(self, photons: float) -> "Acquisition":
        return replace(self, photons=float(photons))

    def to_json(self) -> str:
        d = {"model": "camera", "camera": self.camera.to_dict(), "photons": self.photons,
             "background_photons": self.background_photons, "exposure_s": self.exposure_s,
             "optics": self.optics.to_dict()}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Acquisition":
        return cls(CameraParams.from_dict(d["camera"]), float(d["photons"]), float(d["background_photons"]),
                   float(d["exposure_s"]), OpticsParams.from_dict(d["optics"]))


def expected_electrons(x: np.ndarray, acq: Acquisition, pixel_size_um: float | None = None) -> np.ndarray:
    """Mean electrons per pixel before the well and the EM register: QE * photons + dark + CIC."""
    cam = acq.camera
    light = apply_optics(np.clip(x, 0.0, None), acq.optics, pixel_size_um)
    out = np.empty_like(light)
    for ch in range(light.shape[0]):
        wavelength = acq.optics.emission_nm[min(ch, len(acq.optics.emission_nm) - 1)]
        out[ch] = cam.qe_at(wavelength) * (acq.photons * light[ch] + acq.background_photons)
    return out + cam.dark_current_e_per_s * acq.exposure_s + cam.clock_induced_charge_e


def acquire(x: np.ndarray, acq: Acquisition, seed, pixel_size_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noisy (C, H, W) uint16 ADU and SNR (dB, per channel) of a (C, H, W) float image in [0, 1]."""
    cam = acq.camera
    rng = streams(seed, ("shot", "em", "read"))
    mean_e = expected_electrons(x, acq, pixel_size_um)
    # all draws are made before any value of the image is used: the streams never shift
    u_shot = rng["shot"].random(x.shape)
    u_em = rng["em"].random(x.shape) if cam.kind == "emccd" else None
    z_read = rng["read"].standard_normal(x.shape)

    n = np.minimum(poisson_quantile(u_shot, mean_e), cam.full_well_e)
    expected = np.minimum(mean_e, cam.full_well_e)
    if u_em is not None:
        n = gamma_quantile(u_em, n, cam.em_gain)
        expected = expected * cam.em_gain
        if cam.em_full_well_e:
            n = np.minimum(n, cam.em_full_well_e)
            expected = np.minimum(expected, cam.em_full_well_e)
    n = n + z_read * read_noise_map(cam, x.shape[1:])[None]
    adu = np.clip(np.round(n / cam.adc_gain_e_per_adu + cam.offset_adu), 0, cam.max_adu)
    signal = expected / cam.adc_gain_e_per_adu
    error = adu - cam.offset_adu - signal
    power_s = (signal**2).mean(axis=(1, 2))
    power_n = (error**2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        snr = 10.0 * np.log10(power_s / np.maximum(power_n, 1e-12))
    return adu.astype(np.uint16), snr.astype(np.float32)
