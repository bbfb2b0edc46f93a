"""Photon-transfer curve (PTC) of a simulated camera: a check that the chain has the gain and
read noise its preset says.

Flat fields are taken in pairs at increasing light, from dark up to about 60% of the smaller
of the full well and the ADC range. For each pair, the signal is the mean ADU above the offset
and the temporal variance is ``var(A - B) / 2`` (the difference cancels any fixed pattern).
A weighted least-squares line (weights ``1 / var^2``: a sample variance scatters in proportion
to itself) through variance against signal gives

    variance = read_adu^2 + 1/12 + signal / K

where K is the system gain in photo-electrons per ADU and 1/12 ADU^2 the quantisation noise.
For CCD and sCMOS cameras K is the ADC gain; an EMCCD multiplies each electron by G with an
excess noise factor F^2 = 2, so its ADC gain is ``K * F^2 * G``. Read noise in electrons is
``read_adu * adc_gain``.

Public API: :class:`PTCResult`, :func:`photon_transfer`, :func:`write_ptc`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path
from cellgen.noise.camera import CAMERAS, EM_EXCESS_NOISE_F2, Acquisition, CameraParams, acquire


@dataclass
class PTCResult:
    camera: str
    system_gain_e_per_adu: float  # photo-electrons per ADU (slope^-1)
    adc_gain_e_per_adu: float  # fitted ADC gain (EMCCD: given the EM gain and F^2 = 2)
    read_noise_e: float
    read_noise_adu: float
    full_well_e: float
    preset: dict = field(default_factory=dict)
    points: list = field(default_factory=list)  # [photons, signal ADU, variance ADU^2]

    @property
    def gain_error(self) -> float:
        return self.adc_gain_e_per_adu / self.preset["adc_gain_e_per_adu"] - 1.0

    @property
    def read_noise_error(self) -> float:
        return self.read_noise_e / self.preset["read_noise_e"] - 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gain_error"] = self.gain_error
        d["read_noise_error"] = self.read_noise_error
        return d


def _camera(camera) -> CameraParams:
    if isinstance(camera, CameraParams):
        return camera
    try:
        return CAMERAS[camera]
    except KeyError:
        raise CellgenError(f"unknown camera '{camera}'; choose from: {', '.join(CAMERAS)}") from None


def light_levels(camera: CameraParams, n_levels: int = 12, wavelength_nm: float = 520.0) -> np.ndarray:
    """Photons per pixel: 0 (dark) then geometric steps up to ~60% of what the camera can record."""
    gain = camera.em_gain if camera.kind == "emccd" else 1.0
    out_max = min(camera.full_well_e * gain, (camera.max_adu - camera.offset_adu) * camera.adc_gain_e_per_adu)
    if camera.kind == "emccd" and camera.em_full_well_e:
        out_max = min(out_max, camera.em_full_well_e)
    top = 0.6 * out_max / gain / camera.qe_at(wavelength_nm)
    bottom = max(top / 1000.0, 1.0)
    return np.concatenate([[0.0], np.geomspace(bottom, top, n_levels - 1)])


def photon_transfer(camera, size: int = 256, n_levels: int = 12, seed: int = 0) -> PTCResult:
    """Simulate flat-field pairs on ``camera`` (a preset name or :class:`CameraParams`) and fit the PTC."""
    cam = _camera(camera)
    if size < 16 or n_levels < 3:
        raise CellgenError("a photon-transfer curve needs images of at least 16 px and 3 light levels")
    flat = np.ones((1, size, size))
    points = []
    for k, photons in enumerate(light_levels(cam, n_levels)):
        # photons=0 is not a valid acquisition: dark frames are flat fields with no light at all
        acq = Acquisition(cam, photons=max(photons, 1e-9))
        frames = []
        for j in range(2):
            ss = np.random.SeedSequence([seed, k, j])
            adu, _ = acquire(flat * (photons > 0), acq, ss)
            frames.append(adu[0].astype(np.float64))
        a, b = frames
        signal = 0.5 * (a.mean() + b.mean()) - cam.offset_adu
        variance = np.var(a - b) / 2.0
        points.append([float(photons), float(signal), float(variance)])
    p = np.array(points)
    x, y = p[:, 1], p[:, 2]
    w = 1.0 / np.maximum(y, 1e-6) ** 2
    design = np.stack([np.ones_like(x), x], 1)
    coef = np.linalg.solve(design.T @ (design * w[:, None]), design.T @ (w * y))
    intercept, slope = float(coef[0]), float(coef[1])
    if not slope > 0:
        raise CellgenError(f"the photon-transfer fit of {cam.name} has no positive slope ({slope:g})")
    system_gain = 1.0 / slope
    f2g = EM_EXCESS_NOISE_F2 * cam.em_gain if cam.kind == "emccd" and cam.em_gain > 1 else 1.0
    adc_gain = system_gain * f2g
    read_adu = float(np.sqrt(max(intercept - 1.0 / 12.0, 0.0)))
    return PTCResult(cam.name, system_gain, adc_gain, read_adu * adc_gain, read_adu, cam.full_well_e,
                     preset=cam.to_dict(), points=points)


def write_ptc(result: PTCResult, out_dir) -> Path:
    """``ptc.json`` (fit and points), ``ptc.csv`` (points) and ``ptc.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ptc.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    with atomic_path(out / "ptc.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["photons_per_px", "signal_adu", "variance_adu2"])
            writer.writerows(result.points)
    p = np.array(result.points)
    lit = p[:, 1] > 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fit_x = np.geomspace(max(p[lit, 1].min(), 1e-3) if lit.any() else 1e-3, max(p[:, 1].max(), 1.0), 100)
    fit_y = result.read_noise_adu**2 + 1.0 / 12.0 + fit_x / result.system_gain_e_per_adu
    ax = axes[0]
    ax.loglog(p[lit, 1], np.sqrt(p[lit, 2]), "o", label="flat-field pairs")
    ax.loglog(fit_x, np.sqrt(fit_y), "-", label="fit")
    ax.axhline(result.read_noise_adu, ls=":", color="grey", label=f"read noise {result.read_noise_e:.2f} e-")
    ax.set_xlabel("signal (ADU above offset)")
    ax.set_ylabel("temporal noise (ADU rms)")
    ax.set_title("photon-transfer curve")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(p[:, 1], p[:, 2], "o")
    ax.plot(fit_x, fit_y, "-")
    ax.set_xlabel("signal (ADU above offset)")
    ax.set_ylabel("variance (ADU^2)")
    preset = result.preset
    ax.set_title(f"gain {result.adc_gain_e_per_adu:.4g} e-/ADU (preset {preset['adc_gain_e_per_adu']:.4g}), "
                 f"read {result.read_noise_e:.3g} e- ({preset['read_noise_e']:g})", fontsize=9)
    fig.suptitle(f"{result.camera}: {preset.get('source', '')[:110]}", fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "ptc.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
