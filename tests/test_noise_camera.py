"""The camera chain, optics, variant names, SNR tiers, the photon-transfer check and the
CellPose 3 degradations (issue 18)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from cellgen import noise
from cellgen.errors import CellgenError
from cellgen.noise import camera as cam_mod
from cellgen.noise import cellpose3 as c3
from cellgen.noise.optics import OpticsParams, apply_optics, psf_sigma_px
from cellgen.noise.ptc import photon_transfer
from cellgen.noise.sampling import poisson_quantile
from cellgen.pipeline import simulate_set, to_uint16
from cellgen.simulate import SimulationConfig, simulate_image

CCD = noise.CAMERAS["ccd-icx285"]
EMCCD = noise.CAMERAS["emccd-ixon888"]
SCMOS = noise.CAMERAS["scmos-orca-fusion"]


@pytest.fixture(scope="module")
def sim():
    return simulate_image(3, SimulationConfig(size=128, count=8))


def _flat(value=1.0, size=160, channels=1):
    return np.full((channels, size, size), value)


def test_poisson_inversion_is_exact_and_monotone():
    from scipy import stats

    rng = np.random.default_rng(1)
    u = rng.random(20000)
    mu = rng.random(20000) ** 3 * 3000
    mu[:50] = 0
    k = poisson_quantile(u, mu)
    assert np.array_equal(k, stats.poisson.ppf(u, mu))
    assert (poisson_quantile(u, mu * 1.002) >= k).all()


def test_gamma_inversion_is_close_to_exact_and_monotone_in_electrons():
    from scipy import special

    from cellgen.noise.sampling import gamma_quantile

    rng = np.random.default_rng(2)
    u = rng.random(20000)
    n = np.floor(rng.random(20000) * 400)
    q = gamma_quantile(u, n, 300.0)
    exact = np.where(n > 0, special.gammaincinv(np.maximum(n, 1), u), 0) * 300.0
    assert np.allclose(q, exact, rtol=2e-3) and (q[n == 0] == 0).all()
    assert (gamma_quantile(u, n + 1, 300.0) > q).all()  # also across the switch to Wilson-Hilferty


def test_ccd_flat_field_mean_and_variance_follow_the_chain():
    acq = noise.Acquisition(CCD, photons=800)
    adu, _ = noise.apply_noise(_flat(), acq, 0)
    qe = CCD.qe_at(461.0)  # channel 0: the nucleus channel's emission
    electrons = qe * 800 + CCD.clock_induced_charge_e + CCD.dark_current_e_per_s * acq.exposure_s
    g = CCD.adc_gain_e_per_adu
    assert adu.mean() - CCD.offset_adu == pytest.approx(electrons / g, rel=0.01)
    expected_var = electrons / g**2 + (CCD.read_noise_e / g) ** 2 + 1 / 12
    assert adu.astype(float).var() == pytest.approx(expected_var, rel=0.04)


def test_emccd_gain_has_excess_noise_factor_two():
    acq = noise.Acquisition(EMCCD, photons=20)
    adu, _ = noise.apply_noise(_flat(), acq, 1)
    n = EMCCD.qe_at(461.0) * 20
    g, G = EMCCD.adc_gain_e_per_adu, EMCCD.em_gain
    assert adu.mean() - EMCCD.offset_adu == pytest.approx(n * G / g, rel=0.02)
    assert adu.astype(float).var() == pytest.approx(2 * n * G**2 / g**2 + (EMCCD.read_noise_e / g) ** 2, rel=0.05)


def test_full_well_adc_clip_and_qe_per_channel():
    wide_adc = replace(CCD, bit_depth=16)  # the 12-bit ADC would clip first
    adu, _ = noise.apply_noise(_flat(1.0, 64), noise.Acquisition(wide_adc, photons=1e6), 0)
    assert adu.max() <= round(CCD.full_well_e / CCD.adc_gain_e_per_adu + CCD.offset_adu) + 6
    assert adu.mean() == pytest.approx(CCD.full_well_e / CCD.adc_gain_e_per_adu + CCD.offset_adu, abs=1)
    adu12, _ = noise.apply_noise(_flat(1.0, 64), noise.Acquisition(CCD, photons=1e6), 0)
    assert adu12.max() == 4095
    two, _ = noise.apply_noise(_flat(1.0, 128, 2), noise.Acquisition(SCMOS, photons=2000), 0)
    ratio = (two[1].mean() - 100) / (two[0].mean() - 100)
    assert ratio == pytest.approx(SCMOS.qe_at(520) / SCMOS.qe_at(461), rel=0.01)


def test_scmos_read_noise_map_is_fixed_with_spec_rms_and_median():
    m = cam_mod.read_noise_map(SCMOS, (256, 256))
    assert np.sqrt(np.mean(m**2)) == pytest.approx(SCMOS.read_noise_e, rel=1e-9)
    assert np.median(m) == pytest.approx(SCMOS.read_noise_median_e, rel=0.05)
    assert np.array_equal(m, cam_mod.read_noise_map(SCMOS, (256, 256)))
    assert np.ptp(cam_mod.read_noise_map(CCD, (8, 8))) == 0


def test_same_seed_same_bytes_and_one_adu_stays_local(sim):
    clean = to_uint16(sim.image)
    for name in ("scmos-orca-fusion@200", "emccd-ixon888@100", "ccd-icx285@500", "cellpose3-denoise"):
        p = noise.get_preset(name)
        seed = noise.variant_seed(4, name)
        a, sa = noise.apply_noise(clean, p, seed, cell=sim.cell)
        b, sb = noise.apply_noise(clean, p, seed, cell=sim.cell)
        assert np.array_equal(a, b) and np.array_equal(sa, sb)
        if name.startswith("cellpose3"):
            continue  # renormalised by percentiles: one pixel may move every value a little
        # a 1-ADU difference in 1% of the pixels (as between CPU instruction sets)
        bumped = clean.copy()
        idx = np.random.default_rng(0).choice(clean.size, clean.size // 100, replace=False)
        bumped.flat[idx] = np.minimum(bumped.flat[idx].astype(int) + 1, 65535)
        c, _ = noise.apply_noise(bumped, p, seed)
        changed = np.flatnonzero(a.ravel() != c.ravel())
        assert set(changed) <= set(idx)
        step = p.camera.em_gain * 1.2 / p.camera.adc_gain_e_per_adu + 2  # at most one electron more
        assert np.abs(a.astype(int) - c.astype(int)).max() <= step


def test_snr_rises_along_the_photon_ladder(sim):
    clean = to_uint16(sim.image)
    for camera in noise.CAMERAS:
        names = noise.ladder(camera, [50, 100, 200, 500, 1000])
        snr = [noise.apply_noise(clean, noise.get_preset(n), 2)[1].mean() for n in names]
        assert np.all(np.diff(snr) > 0), (camera, snr)


def test_optics_psf_sigma_vignetting_haze_bleaching_and_psf_file(tmp_path):
    sigma = psf_sigma_px(0.5, 520, 0.2)
    assert sigma == pytest.approx(0.21 * 0.52 / (0.5 * 0.2))
    point = np.zeros((1, 65, 65))
    point[0, 32, 32] = 1.0
    blurred = apply_optics(point, OpticsParams(na=0.5, emission_nm=(520,)), 0.2)[0]
    yy = np.arange(65) - 32
    measured = np.sqrt((blurred.sum(1) * yy**2).sum() / blurred.sum())
    assert measured == pytest.approx(sigma, rel=0.02)
    flat = apply_optics(np.ones((1, 33, 33)), OpticsParams(vignetting=0.3), 0.5)[0]
    assert flat[16, 16] == pytest.approx(1.0) and flat[0, 0] == pytest.approx(0.7)
    assert apply_optics(np.ones((1, 8, 8)), OpticsParams(bleached_fraction=0.25), 0.5).max() == pytest.approx(0.75)
    hazy = apply_optics(point * 100, OpticsParams(haze_fraction=1.0, haze_sigma_um=5), 0.5)[0]
    assert hazy[32, 45] > 0.01 and hazy.sum() == pytest.approx(200, rel=0.01)
    box = np.ones((3, 3))
    np.save(tmp_path / "psf.npy", box)
    optics = OpticsParams().with_psf_file(tmp_path / "psf.npy")
    img = np.random.default_rng(0).random((1, 20, 20))
    assert np.allclose(apply_optics(img, optics, 0.5)[0], ndi.uniform_filter(img[0], 3, mode="reflect"))
    np.save(tmp_path / "psf.npy", box * 2)
    with pytest.raises(CellgenError, match="changed"):
        apply_optics(img, optics, 0.5)
    with pytest.raises(CellgenError, match="numerical aperture"):
        OpticsParams(na=2.0)


def test_variant_names_and_stored_parameters_round_trip():
    assert noise.get_preset("moderate@50") == replace(noise.PRESETS["moderate"], photons=50.0)
    assert noise.get_preset("ccd-icx285").photons == 1000
    assert noise.ladder("emccd-ixon888", [50, 100.5]) == ["emccd-ixon888@50", "emccd-ixon888@100.5"]
    for name in ("severe", "ccd-icx285@20", "cellpose3", "cellpose3-upsample"):
        p = noise.get_preset(name)
        assert noise.params_from_json(p.to_json()) == p
    with pytest.raises(CellgenError, match="unknown noise preset"):
        noise.get_preset("ccd-icx999")
    with pytest.raises(CellgenError, match="positive number"):
        noise.get_preset("ccd-icx285@-3")
    with pytest.raises(CellgenError, match="photon"):
        noise.get_preset("clean@5")
    with pytest.raises(CellgenError, match="float image"):
        noise.apply_noise(np.zeros((2, 4, 4), np.int32), noise.get_preset("ccd-icx285"), 0)


def test_snr_tiers_scheme():
    s = noise.DEFAULT_SNR_TIERS
    assert [s.assign([v, v]) for v in (3, 12, 17, 30)] == list(s.names)
    assert s.assign([np.inf, np.inf]) == "clean"
    assert noise.SNRTierScheme.from_json(s.to_json()) == s
    assert noise.SNRTierScheme.parse("5,25").names == ("snr-0", "snr-1", "snr-2")
    with pytest.raises(CellgenError, match="increase"):
        noise.SNRTierScheme.parse("20,10,30")


def test_sets_record_snr_tiers_only_with_new_variants(tmp_path):
    from cellgen.datasets.h5 import BenchmarkSet, verify

    config = SimulationConfig(size=64, count=2, cell_radius_um=5)
    classic = simulate_set(tmp_path / "classic.h5", config, 2, variants=["clean", "poisson"], progress=False)
    with BenchmarkSet(classic) as ds:
        assert "snr_tier_scheme" not in ds.attrs and "variant_params" not in json.loads(ds.attrs["recipe"])
        assert set(noise.snr_tiers_of(ds, "poisson")) <= set(noise.DEFAULT_SNR_TIERS.names)
    names = ["clean", "poisson", *noise.ladder("scmos-orca-fusion", [20, 2000])]
    path = simulate_set(tmp_path / "ladder.h5", config, 2, variants=names, progress=False)
    verify(path)
    with BenchmarkSet(path) as ds:
        assert noise.SNRTierScheme.from_json(ds.attrs["snr_tier_scheme"]) == noise.DEFAULT_SNR_TIERS
        recipe = json.loads(ds.attrs["recipe"])
        assert noise.params_from_json(recipe["variant_params"]["scmos-orca-fusion@20"]).photons == 20
        low, high = noise.snr_tiers_of(ds, "scmos-orca-fusion@20"), noise.snr_tiers_of(ds, "scmos-orca-fusion@2000")
        assert list(low) == ["snr-very-low"] * 2 and list(high) == ["snr-high"] * 2
        assert list(noise.snr_tiers_of(ds, "clean")) == ["clean"] * 2


@pytest.mark.parametrize("camera", list(noise.CAMERAS))
def test_photon_transfer_recovers_preset_gain_and_read_noise(camera):
    r = photon_transfer(camera, size=128)
    assert abs(r.gain_error) < 0.05, r.to_dict()
    assert abs(r.read_noise_error) < 0.10, r.to_dict()


def test_noise_cli_ptc_and_cameras(tmp_path):
    from cellgen.cli import cli

    res = CliRunner().invoke(cli, ["noise", "ptc", "--camera", "ccd-icx285", "-o", str(tmp_path / "ptc"),
                                   "--size", "64", "--levels", "6"])
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "ptc" / "ptc.json").read_text())
    assert abs(fit["gain_error"]) < 0.1 and (tmp_path / "ptc" / "ptc.png").stat().st_size > 1000
    res = CliRunner().invoke(cli, ["noise", "ptc", "--camera", "nikon", "-o", str(tmp_path / "x")])
    assert isinstance(res.exception, CellgenError) and "unknown camera 'nikon'" in str(res.exception)
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(cli, ["noise", "cameras"])
    assert res.exit_code == 0 and "microsim" in res.output


def test_cellpose3_settings_follow_cellpose_distributions():
    p = c3.RECIPES["denoise"]
    draws = [c3.draw_settings(p, np.random.SeedSequence([7, i])) for i in range(3000)]
    scales = np.array([d["poisson_scale"] for d in draws])
    assert (scales > 0).mean() == pytest.approx(0.8, abs=0.03)
    raw = np.random.default_rng(0).gamma(4.0, 1 / 0.7, 200000)
    assert scales[scales > 0].mean() == pytest.approx(np.maximum(raw, 1).mean(), rel=0.04)
    up = [c3.draw_settings(c3.RECIPES["upsample"], i, diameter_px=60) for i in range(400)]
    factors = [d["downsample"] for d in up if d["downsample"] > 1]
    assert set(factors) == set(range(2, 8)) and len(factors) / 400 == pytest.approx(0.8, abs=0.06)
    d = next(d for d in up if d["downsample"] > 1)
    assert d["sigma"] == pytest.approx(60 / 30 * (1 + 4 * d["downsample"] / 10))
    assert {c3.draw_settings(c3.RECIPES["all"], i)["recipe"] for i in range(30)} == {"denoise", "deblur", "upsample"}


def test_cellpose3_blur_and_downsampling_match_cellpose(sim):
    cellpose_denoise = pytest.importorskip("cellpose.denoise")
    import torch

    x = sim.image.astype(np.float64)
    norm = np.clip(c3._normalize99(x)[0], 0, None)
    for ds, sigma in ((1, 2.5), (3, 1.7)):
        ours = c3.apply_settings(x, {"recipe": "t", "downsample": ds, "sigma": sigma, "poisson_scale": 0.0})
        theirs = cellpose_denoise.add_noise(torch.from_numpy(norm[None].astype(np.float32)), poisson=0.0, blur=1.0,
                                            downsample=0.0, ds=ds if ds > 1 else None, sigma0=sigma,
                                            sigma1=sigma).numpy()[0]
        assert np.abs(ours - theirs).max() < 1e-4


def test_cellpose3_variant_noise_level(sim):
    clean = to_uint16(sim.image)
    p = replace(c3.RECIPES["denoise"], poisson=1.0, alpha=1e6, beta=1e6 / 5.0)  # scale fixed at ~5
    out, snr = noise.apply_noise(clean, p, 3, cell=sim.cell)
    assert out.dtype == np.uint16 and out.shape == clean.shape and np.all(snr < 15)
    assert c3.cellpose_diameter(sim.cell) == pytest.approx(
        np.median(np.sqrt(np.bincount(sim.cell.ravel())[1:])) / (np.sqrt(np.pi) / 2))


def test_bench_reports_scores_per_snr_tier_and_density_x_snr(tmp_path):
    import csv

    from cellgen.bench.noise_axis import write_noise_axis
    from cellgen.bench.report import summarise
    from cellgen.bench.runner import load_records, run_bench
    from cellgen.datasets.h5 import BenchmarkSet

    config = SimulationConfig(size=64, count=(1, 8), cell_radius_um=5)
    names = ["clean", *noise.ladder("ccd-icx285", [20, 5000])]
    data = simulate_set(tmp_path / "s.h5", config, 4, variants=names, progress=False)
    with BenchmarkSet(data) as ds:
        tiers = list(ds.tier_scheme.names)
        expected = {(i, v): noise.snr_tier_of(ds, i, v) for i in range(4) for v in names}
    out = run_bench(data, "watershed", tmp_path / "r", progress=False)
    records = load_records(out)
    assert {(r["index"], r["variant"]): r["snr_tier"] for r in records} == expected
    run = json.loads((out / "run.json").read_text())
    # records written before SNR tiers existed get theirs from the set
    write_noise_axis(out, [{k: v for k, v in r.items() if k != "snr_tier"} for r in records], run, tiers, n_boot=20)
    summary = {(r["compartment"], r["variant"], r["tier"]): r for r in summarise(records, tiers, n_boot=5)}
    with open(out / "snr.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert (out / "density_x_snr.png").stat().st_size > 5000
    for comp in ("cell", "nucleus"):
        per_snr = [r for r in rows if r["compartment"] == comp and r["tier"] == "all"]
        assert sum(int(r["n_images"]) for r in per_snr) == len(records)
        clean = next(r for r in per_snr if r["snr_tier"] == "clean")
        assert float(clean["f1@0.5"]) == pytest.approx(summary[(comp, "clean", "all")]["f1@0.5"])
        cells = [r for r in rows if r["compartment"] == comp and r["tier"] != "all"]
        assert sum(int(r["n_images"]) for r in cells) == len(records)
