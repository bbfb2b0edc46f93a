"""Renderer without checkerboard and with per-seed appearance (issue 15): texture metrics,
resize-convolution upsampling, appearance inputs, warm starts across configs."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cellgen.checkpoint import load_checkpoint
from cellgen.errors import CellgenError
from cellgen.pipeline import simulate_set
from cellgen.render import appearance, losses, networks, texture
from cellgen.render.data import open_pairs
from cellgen.render.renderer import Renderer
from cellgen.render.train import train_renderer
from cellgen.simulate import SimulationConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _disk_masks(size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    cell = ((yy - 32) ** 2 + (xx - 30) ** 2 < 20 ** 2).astype(np.uint32)
    nuc = ((yy - 32) ** 2 + (xx - 30) ** 2 < 8 ** 2).astype(np.uint32)
    sem = np.where(nuc > 0, 128, np.where(cell > 0, 255, 0)).astype(np.uint8)
    return sem, cell, nuc


# ----------------------------------------------------------------------------- metrics


def test_checkerboard_amplitude_of_known_patterns():
    yy, xx = np.mgrid[0:32, 0:32]
    cells = np.zeros((32, 32), np.uint32)
    cells[8:24, 8:24] = 1
    checker = 0.3 + 0.006 * (-1.0) ** (yy + xx)  # amplitude 0.006 on a mean of 0.3: 4a / m = 8%
    ramp = 0.1 + 0.01 * yy + 0.004 * xx  # smooth: no 2x2 pattern at all
    amp = texture.checkerboard_amplitude(np.stack([checker, ramp])[None], cells[None])[0]
    assert amp[0] == pytest.approx(4 * 0.006 / 0.3, rel=1e-9)
    assert amp[1] < 1e-12
    # the pattern on top of the ramp is still measured, relative to the mean over the cell
    both = texture.checkerboard_channel(ramp + 0.006 * (-1.0) ** (yy + xx), cells > 0)
    assert both == pytest.approx(4 * 0.006 / ramp[cells > 0].mean(), rel=1e-9)
    # uint16 images are read at full scale 65535, like sets store them
    u16 = np.round(np.stack([checker, checker]) * 65535).astype(np.uint16)
    assert texture.checkerboard_amplitude(u16[None], cells[None])[0, 0] == pytest.approx(0.08, rel=1e-3)
    with pytest.raises(CellgenError):
        texture.checkerboard_amplitude(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2)))


def test_power_spectrum_bands_and_background_statistics():
    rng = np.random.default_rng(0)
    white = rng.standard_normal((4, 2, 64, 64)) * 0.01 + 0.2
    smooth = ndi.gaussian_filter(white, (0, 0, 2, 2), mode="wrap") * 4  # blurred: little power at high frequency
    edges, pw = texture.radial_power_spectrum(white)
    _, ps = texture.radial_power_spectrum(smooth)
    assert edges[-1] == 0.5 and len(edges) == pw.shape[1] + 1
    assert np.allclose(pw[0], pw[0].mean(), rtol=0.35)  # white noise: flat
    assert ps[0, -1] < 0.01 * pw[0, -1] and ps[0, 0] > pw[0, 0]
    cell = np.zeros((4, 64, 64), np.uint32)
    cell[:, :32] = 1
    assert texture.background_std(white, cell) == pytest.approx(white[:, :, 32:, :].std(axis=(0, 2, 3)), rel=1e-9)


def _noise_stats(n, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    img = (rng.standard_normal((n, 2, 32, 32)) * 0.01 + 0.2) * scale
    img *= rng.lognormal(0.0, 0.5, (n, 1, 1, 1))  # images differ in brightness, as real sets do
    cell = np.zeros((n, 32, 32), np.uint32)
    cell[:, :8, :8] = 1
    sem = np.where(cell > 0, 255, 0).astype(np.uint8)
    return img, sem, cell


def test_compare_gives_bootstrap_intervals_that_shrink_with_more_images():
    img, sem, cell = _noise_stats(40, 0)
    ref = texture.image_statistics(img, sem, cell)
    # the same masks drawn twice as bright: exact ratios, and a paired resample cannot move them
    twice = texture.compare(texture.image_statistics(2 * img, sem, cell), ref, paired=True, n_resamples=50)
    assert twice["background_std"]["nucleus"] == pytest.approx(2.0)
    assert twice["interval"]["background_std"]["cytoplasm"] == pytest.approx([2.0, 2.0])
    assert np.allclose(twice["interval"]["power_spectrum"]["nucleus"], 4.0)
    assert twice["power_spectrum"]["cytoplasm"]["worst_band_error"] == pytest.approx(3.0)

    def width(n):  # two independent draws of one process: the intervals hold 1 and narrow with n
        a, b = _noise_stats(n, 1), _noise_stats(n, 2)
        r = texture.compare(texture.image_statistics(*a), texture.image_statistics(*b), n_resamples=300)
        lo, hi = np.array(r["interval"]["power_spectrum"]["nucleus"]).T
        assert np.all(lo < 1.0) and np.all(hi > 1.0)
        return np.mean(np.log(hi / lo))

    assert width(160) < 0.7 * width(10)
    with pytest.raises(CellgenError, match="paired"):
        texture.compare(texture.image_statistics(img[:5], sem[:5], cell[:5]), ref, paired=True)
    with pytest.raises(CellgenError, match="level"):
        texture.compare(ref, ref, level=1.5)


def test_cell_means_and_region_features():
    sem, cell, nuc = _disk_masks()
    img = np.zeros((2, 64, 64), np.float32)
    img[0][sem == 128] = 0.6
    img[1][sem == 255] = 0.25
    img[1][cell == 0] = 0.05
    means = texture.cell_means(img[None], sem[None], cell[None])
    assert means["nucleus"].tolist() == pytest.approx([0.6]) and means["cytoplasm"].tolist() == pytest.approx([0.25])
    feats = appearance.region_means(img, appearance.region_labels(sem, cell))
    assert np.allclose(feats[1][cell == 0], 0.05) and np.allclose(feats[0][sem == 128], 0.6)
    tables = {"cells": torch.tensor([[0.6, 0.1, 0.05, 0.25], [0.9, 0.2, 0.1, 0.5]]),
              "background": torch.tensor([[0.02, 0.04]])}
    # the nucleus pixel of cell 1 gets a drawn row's nucleus pair; both rows turn up over seeds
    drawn = {tuple(np.round(appearance.sample_features(tables, sem, cell, seed)[:, 32, 30].astype(float), 4).tolist())
             for seed in range(20)}
    assert drawn == {(0.6, 0.1), (0.9, 0.2)}
    bg = appearance.sample_features(tables, sem, cell, 0)[:, 0, 0]
    assert np.allclose(bg, [0.02, 0.04])
    # relative rows (renderers with background_offset) ride on the drawn background
    rel = {tuple(np.round(appearance.sample_features(tables, sem, cell, seed, relative=True)[:, 32, 30].astype(float),
                          4).tolist()) for seed in range(20)}
    assert rel == {(0.62, 0.14), (0.92, 0.24)}


def test_relative_tables_subtract_each_images_own_background(tiny_set):
    with _pairs(tiny_set) as pairs:
        raw = appearance.collect_tables(pairs, relative=False)
        rel = appearance.collect_tables(pairs, relative=True)
        first = appearance._cell_rows(pairs[0].image, pairs[0].semantic, pairs[0].cell)
    assert torch.equal(raw["background"], rel["background"]) and len(raw["cells"]) == len(rel["cells"])
    n0 = len(first[0])
    np.testing.assert_allclose(rel["cells"][:n0].numpy(), (first[0] - np.tile(first[1], 2)).astype(np.float32), atol=1e-6)
    # what a cell adds to its background: positive in its own compartment's channel
    assert (rel["cells"][:, 0] > 0).all() and (rel["cells"][:, 3] > 0).all()


# ----------------------------------------------------------------------------- networks


def test_region_mean_loss_is_the_mean_gap_of_region_means():
    rng = np.random.default_rng(0)
    sem, cell, _ = _disk_masks()
    labels = torch.from_numpy(np.stack([appearance.region_labels(sem, cell)] * 2))
    real = torch.from_numpy(rng.normal(0, 0.1, (2, 2, 64, 64)).astype(np.float32))
    # a brighter background in image 0, channel 1 only: 1 of the 2 x 2 background means is off by 0.3;
    # the background is half the loss, the cells (2 images x 2 regions x 2 channels) the other half
    fake = real.clone()
    fake[0, 1][labels[0] == 0] += 0.3
    assert losses.region_mean_loss(fake, real, labels).item() == pytest.approx(0.5 * 0.3 / 4, rel=1e-4)
    dim = real.clone()
    dim[1, 0][labels[1] == 1] -= 0.2  # one nucleus, one channel: 1 of 8 cell-region means
    assert losses.region_mean_loss(dim, real, labels).item() == pytest.approx(0.5 * 0.2 / 8, rel=1e-4)
    # texture inside a region that keeps its mean costs nothing
    shuffled = real.clone()
    for r in range(3):
        m = labels[1] == r
        shuffled[1, 0][m] = real[1, 0][m][torch.randperm(int(m.sum()))]
    assert losses.region_mean_loss(shuffled, real, labels).item() < 1e-6
    fake.requires_grad_(True)
    losses.region_mean_loss(fake, real, labels).backward()
    assert fake.grad[0, 1][labels[0] == 0].abs().sum() > 0


def test_spectrum_loss_sees_missing_fine_texture_not_its_placement():
    rng = np.random.default_rng(1)
    real = torch.from_numpy(rng.normal(0, 0.1, (2, 2, 64, 64)).astype(np.float32))
    other = torch.from_numpy(rng.normal(0, 0.1, (2, 2, 64, 64)).astype(np.float32))  # same texture, other pixels
    smooth = torch.from_numpy(ndi.gaussian_filter(real.numpy(), (0, 0, 1.0, 1.0)))
    spec = losses.log_radial_spectrum(real)
    assert spec.shape == (2, 2, 32)
    # white noise is flat; the blur takes power away at high frequencies only
    drop = (losses.log_radial_spectrum(smooth) - spec).mean((0, 1))
    assert drop[:3].abs().max() < 0.3 and drop[-5:].max() < -3
    same, blurred = losses.spectrum_loss(other, real).item(), losses.spectrum_loss(smooth, real).item()
    assert same < 0.5 and blurred > 2.5 * same
    # octaves count alike: doubling the power of one octave (bins 8-15) costs as much as
    # doubling that of the finest one (bins 16-31), which has twice the bins
    def scaled(lo, hi):
        spec = torch.fft.rfft2(real)
        bins, _ = losses._radial_bins(64, 64, "cpu")
        return torch.fft.irfft2(spec * torch.where((bins >= lo) & (bins <= hi), 2 ** 0.5, 1.0), s=(64, 64))
    low, high = losses.spectrum_loss(scaled(8, 15), real).item(), losses.spectrum_loss(scaled(16, 31), real).item()
    assert low > 0.05 and abs(low - high) < 0.1 * high


def test_background_offset_sets_each_images_level_from_the_input():
    sem, cell, nuc = _disk_masks()
    config = networks.make_config("tiny", feat_nc=2, background_offset=True)
    G = networks.build_generator(config).eval()
    x = networks.encode_masks(np.stack([sem, sem]), np.stack([cell, cell]), np.stack([nuc, nuc]))
    feats = np.stack([2 * appearance.region_means(np.full((2, 64, 64), v, np.float32), appearance.region_labels(sem, cell)) - 1
                      for v in (0.05, 0.20)])
    gin = torch.cat([x, torch.from_numpy(feats)], 1)
    with torch.no_grad():
        plain, shifted = G(gin), networks.run_generator(G, config, gin)
    bg = torch.from_numpy(cell == 0)
    for i, level in enumerate((0.05, 0.20)):
        np.testing.assert_allclose(shifted[i][:, bg].mean(1).numpy(), 2 * level - 1, atol=1e-5)
        # one shift per image and channel: texture and the cells' contrast to the background are kept
        d = (shifted[i] - plain[i]).numpy()
        assert np.ptp(d, axis=(1, 2)).max() < 1e-5
    # off (and in configs written before the option existed): the generator's own output
    old = {k: v for k, v in config.items() if k != "background_offset"}
    assert torch.equal(networks.run_generator(G, networks.complete_config(old), gin), plain)
    # a frame without background is left as it is
    full = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], 1)
    full_in = torch.cat([full, torch.from_numpy(feats)], 1)
    with torch.no_grad():
        assert torch.equal(networks.run_generator(G, config, full_in), G(full_in))
    with pytest.raises(CellgenError, match="background_offset"):
        networks.make_config("tiny", background_offset=True)


def test_resize_convolution_upsampling_leaves_no_checkerboard():
    sem, cell, nuc = _disk_masks()
    x = networks.encode_masks(sem, cell, nuc)
    amp = {}
    for up in ("transpose", "bilinear"):
        torch.manual_seed(0)
        g = networks.build_generator(networks.make_config("tiny", upsample=up)).eval()
        with torch.no_grad():
            y = networks.to_unit(g(x))[0].numpy()
        amp[up] = texture.checkerboard_amplitude(y[:, 8:-8, 8:-8], cell[8:-8, 8:-8]).max()
        has_transposed = any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
        assert has_transposed == (up == "transpose")
    # random weights: a transposed convolution's phases differ, a resize-convolution's do not
    assert amp["transpose"] > 0.05 and amp["bilinear"] < 0.005
    with pytest.raises(CellgenError, match="upsample"):
        networks.make_config("tiny", upsample="pixelshuffle")
    with pytest.raises(CellgenError, match="feat_nc"):
        networks.make_config("tiny", feat_nc=3)


def test_transplant_keeps_function_with_new_input_channels():
    old_cfg = networks.make_config("tiny")
    torch.manual_seed(1)
    old = networks.build_generator(old_cfg).eval()
    new = networks.build_generator(networks.make_config("tiny", feat_nc=2, noise_nc=1)).eval()
    counts = networks.transplant(new, old.state_dict())
    assert counts["adapted"] == 1 and counts["fresh"] == 0
    sem, cell, nuc = _disk_masks()
    x = networks.encode_masks(sem, cell, nuc)
    extra = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # new input channels start at zero weight: the old network's output, whatever they hold
        torch.testing.assert_close(new(torch.cat([x, extra], 1)), old(x), rtol=0, atol=1e-6)
    rc = networks.build_generator(networks.make_config("tiny", upsample="nearest"))
    counts = networks.transplant(rc, old.state_dict())
    assert counts["adapted"] == 2 and counts["fresh"] == 0  # the two upsampling kernels


# ----------------------------------------------------------------------------- training, rendering


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("appearance") / "tiny.h5"
    simulate_set(path, SimulationConfig(size=64, count=(2, 8), pixel_size_um=1.0), n=6, seed=3, variants=[],
                 progress=False)
    return path


@pytest.fixture(scope="module")
def varied(tiny_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("varied")
    return train_renderer(tiny_set, out, preset="tiny", steps=6, batch=2, seed=0, progress=False, tick=3,
                          config_overrides=dict(upsample="bilinear", feat_nc=2, noise_nc=1, lambda_perc=1.0,
                                                lambda_region=10.0, lambda_spectrum=1.0, background_offset=True))


def test_varied_renderer_trains_and_renders_per_seed(varied, tiny_set):
    log = [line for line in open(varied.parent / "log.jsonl") if '"tick"' in line]
    assert len(log) == 2
    for term in ("G_perc", "G_region", "G_spectrum"):  # the perceptual, region-mean and spectrum losses are on
        assert all(f'"{term}": 0.0' not in line and f'"{term}"' in line for line in log)
    r = Renderer.load(varied)
    assert r.varies and r.tables["cells"].shape[1] == 4 and len(r.tables["background"]) == 6
    with _pairs(tiny_set) as pairs:
        p = pairs[0]
    a = r.render(p.semantic, p.cell, p.nucleus, seed=11)
    assert np.isfinite(a).all() and a.shape == (2, 64, 64)
    assert np.array_equal(a, r.render(p.semantic, p.cell, p.nucleus, seed=11))
    assert np.abs(a - r.render(p.semantic, p.cell, p.nucleus, seed=12)).mean() > 1e-4
    # the background level follows the one drawn for each seed (exact but for clipping at 0)
    bg = p.cell == 0
    drawn = np.array([appearance.sample_features(r.tables, p.semantic, p.cell, s)[:, bg][:, 0] for s in range(20, 32)])
    levels = np.array([r.render(p.semantic, p.cell, p.nucleus, seed=s)[:, bg].mean(1) for s in range(20, 32)])
    assert all(np.corrcoef(drawn[:, c], levels[:, c])[0, 1] > 0.9 for c in range(2))
    batch = r.render_batch(np.stack([p.semantic] * 2), np.stack([p.cell] * 2), np.stack([p.nucleus] * 2),
                           seeds=[12, 11], batch_size=1)
    np.testing.assert_allclose(batch[1], a, atol=1e-6)
    with pytest.raises(CellgenError, match="seeds"):
        r.render_batch(p.semantic[None], p.cell[None], p.nucleus[None], seeds=[1, 2])
    # the checkpoint carries the tables; without them it is refused with one line
    ck = load_checkpoint(varied)
    assert set(appearance.TABLE_KEYS) <= set(ck["state_dict"])


def test_resume_and_adapted_init_from_a_transposed_renderer(varied, tiny_set, tmp_path):
    plain = train_renderer(tiny_set, tmp_path / "plain", preset="tiny", steps=2, batch=1, progress=False)
    run = train_renderer(tiny_set, tmp_path / "adapt", preset="tiny", steps=4, batch=1, progress=False, init_from=plain,
                         adapt_init=True, max_minutes=0,
                         config_overrides=dict(upsample="bilinear", feat_nc=2, noise_nc=1))
    snap = load_checkpoint(run, "renderer-training")
    assert snap["extra"]["step"] == 1 and snap["config"]["training"]["adapt_init"]
    assert set(appearance.TABLE_KEYS) <= set(snap["state_dict"])
    done = train_renderer(tiny_set, tmp_path / "adapt", preset="tiny", steps=4, batch=1, progress=False, init_from=plain,
                          adapt_init=True, config_overrides=dict(upsample="bilinear", feat_nc=2, noise_nc=1))
    assert load_checkpoint(done)["config"]["upsample"] == "bilinear"
    # a plain renderer ignores seeds: old checkpoints render exactly as before
    r = Renderer.load(plain)
    with _pairs(tiny_set) as pairs:
        p = pairs[1]
    assert not r.varies
    assert np.array_equal(r.render(p.semantic, p.cell, p.nucleus, seed=1), r.render(p.semantic, p.cell, p.nucleus, seed=2))


class _pairs:
    def __init__(self, path):
        self.src = open_pairs(path)

    def __enter__(self):
        return _PairList([self.src.get(i) for i in range(len(self.src))])

    def __exit__(self, *exc):
        self.src.close()


class _PairList(list):
    def get(self, i):  # the pair-source interface collect_tables reads
        return self[i]


def test_fine_tuning_measures_the_tables_on_its_own_images(varied, tmp_path):
    lab = tmp_path / "lab.h5"
    simulate_set(lab, SimulationConfig(size=64, count=(2, 5), pixel_size_um=1.0), n=4, seed=77, variants=[],
                 progress=False)
    tuned = train_renderer(lab, tmp_path / "tuned", preset="tiny", steps=1, batch=1, progress=False, init_from=varied)
    tables = Renderer.load(tuned).tables
    with _pairs(lab) as pairs:
        expected = appearance.collect_tables(pairs, relative=True)
    assert len(tables["background"]) == 4  # the lab's 4 images, not the 6 the init was trained on
    torch.testing.assert_close(tables["cells"], expected["cells"])


def test_rendered_set_draws_each_image_from_its_recorded_seed(varied, tiny_set, tmp_path):
    from cellgen.datasets.h5 import FULL_SCALE, BenchmarkSet
    from cellgen.pipeline import rendered_set

    r = Renderer.load(varied)
    out = rendered_set(tmp_path / "rendered.h5", tiny_set, r, batch_size=4, variants=[], progress=False)
    with BenchmarkSet(out) as ds:
        seeds = ds.metadata["seed"]
        assert len(set(seeds.tolist())) == ds.n  # simulate_set: image i has seed 3 + i
        for i in (0, 5):
            m = ds.masks(i)
            expect = r.render(m.semantic, m.cell, m.nucleus, seed=int(seeds[i]))
            got = ds.images(i).astype(np.float32) / FULL_SCALE
            assert np.abs(got - expect).max() <= 1.0 / FULL_SCALE
