"""Renderer without checkerboard and with per-seed appearance (issue 15): texture metrics,
resize-convolution upsampling, appearance inputs, warm starts across configs."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cellgen.checkpoint import load_checkpoint
from cellgen.errors import CellgenError
from cellgen.pipeline import simulate_set
from cellgen.render import appearance, networks, texture
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


# ----------------------------------------------------------------------------- networks


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
                          config_overrides=dict(upsample="bilinear", feat_nc=2, noise_nc=1, lambda_perc=1.0))


def test_varied_renderer_trains_and_renders_per_seed(varied, tiny_set):
    log = [line for line in open(varied.parent / "log.jsonl") if '"tick"' in line]
    assert len(log) == 2 and all('"G_perc": 0.0' not in line for line in log)  # the perceptual loss is on
    r = Renderer.load(varied)
    assert r.varies and r.tables["cells"].shape[1] == 4 and len(r.tables["background"]) == 6
    with _pairs(tiny_set) as pairs:
        p = pairs[0]
    a = r.render(p.semantic, p.cell, p.nucleus, seed=11)
    assert np.isfinite(a).all() and a.shape == (2, 64, 64)
    assert np.array_equal(a, r.render(p.semantic, p.cell, p.nucleus, seed=11))
    assert np.abs(a - r.render(p.semantic, p.cell, p.nucleus, seed=12)).mean() > 1e-4
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
        return [self.src.get(i) for i in range(len(self.src))]

    def __exit__(self, *exc):
        self.src.close()


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
