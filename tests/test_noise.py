import numpy as np
import pytest

from cellgen import noise
from cellgen.errors import CellgenError
from cellgen.simulate import SimulationConfig, simulate_image


@pytest.fixture(scope="module")
def clean():
    return simulate_image(0, SimulationConfig(size=128, count=8)).image


def test_snr_falls_monotonically_with_photons(clean):
    photons = [20000, 5000, 1000, 300, 100, 30, 10, 3]
    snr = [noise.apply_noise(clean, noise.NoiseParams(photons=p, read_sigma=2.0), 7)[1] for p in photons]
    snr = np.array(snr)
    assert (np.diff(snr, axis=0) < 0).all(), snr


def test_same_seed_same_noise_and_variants_are_independent(clean):
    p = noise.get_preset("moderate")
    a, sa = noise.apply_noise(clean, p, noise.variant_seed(5, "moderate"))
    b, sb = noise.apply_noise(clean, p, noise.variant_seed(5, "moderate"))
    c, _ = noise.apply_noise(clean, p, noise.variant_seed(6, "moderate"))
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint16 and a.shape == clean.shape


def test_poisson_statistics_match_photon_count():
    flat = np.full((1, 200, 200), 0.5)
    p = noise.NoiseParams(photons=200, read_sigma=0, offset=0)
    adu, _ = noise.apply_noise(flat, p, 0)
    assert adu.mean() == pytest.approx(100, rel=0.01)
    assert adu.var() == pytest.approx(100, rel=0.05)


def test_gaussian_read_noise_has_requested_sigma():
    flat = np.full((1, 200, 200), 0.5)
    p = noise.NoiseParams(photons=1000, poisson=False, read_sigma=10, offset=200)
    adu, _ = noise.apply_noise(flat, p, 0)
    assert adu.mean() == pytest.approx(700, abs=0.5)
    assert adu.std() == pytest.approx(10, rel=0.03)


def test_gain_offset_and_uint16_input(clean):
    u16 = np.round(clean * 65535).astype(np.uint16)
    p = noise.NoiseParams(photons=1000, poisson=False, gain=2.0, offset=50)
    adu, snr = noise.apply_noise(u16, p, 0)
    expected = np.round(2.0 * 1000 * (u16 / 65535.0) + 50)
    assert np.array_equal(adu, expected.astype(np.uint16))
    assert np.all(snr > 60)  # only rounding error left


def test_psf_blur_smooths(clean):
    sharp, _ = noise.apply_noise(clean, noise.NoiseParams(photons=5000, poisson=False), 0)
    blurred, _ = noise.apply_noise(clean, noise.NoiseParams(photons=5000, poisson=False, psf_sigma_px=2), 0)
    assert np.abs(np.diff(blurred.astype(float), axis=-1)).mean() < np.abs(np.diff(sharp.astype(float), axis=-1)).mean()


def test_presets_order_and_errors(clean):
    snr = {k: noise.apply_noise(clean, noise.get_preset(k), 1)[1].mean() for k in ("mild", "moderate", "severe")}
    assert snr["mild"] > snr["moderate"] > snr["severe"]
    assert noise.get_preset("clean") is None
    with pytest.raises(CellgenError, match="unknown noise preset"):
        noise.get_preset("loud")
    with pytest.raises(CellgenError, match="photons"):
        noise.NoiseParams(photons=0)
    with pytest.raises(CellgenError, match="float image"):
        noise.apply_noise(np.zeros((2, 4, 4), np.int32), noise.NoiseParams(), 0)
    assert noise.NoiseParams.from_json(noise.get_preset("severe").to_json()) == noise.get_preset("severe")
