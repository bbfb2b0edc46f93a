"""Contour generator: StyleGAN2 networks, truncation, seeds, training/resume, checkpoints, official import."""

import collections
import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from cellgen.checkpoint import save_checkpoint
from cellgen.errors import CellgenError
from cellgen.gen import networks as nw
from cellgen.gen.generator import KIND, ContourGenerator
from cellgen.gen.import_official import import_official
from cellgen.gen.train import ContourTrainingConfig, augment_batch, load_training_data, train_contours
from cellgen.masks import instances_from_label_map
from cellgen.pipeline import simulate_set
from cellgen.simulate import SimulationConfig


@pytest.fixture(scope="module")
def gen():
    g = ContourGenerator.untrained("tiny", seed=1)
    with torch.no_grad():  # a non-trivial w_avg, as after training
        g.G.mapping.w_avg.copy_(torch.randn(g.w_dim, generator=torch.Generator().manual_seed(5)))
        for name, p in g.G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.25)  # float32-exact: the generator samples in float64, checkpoints hold float32
    return g


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny.h5"
    simulate_set(path, SimulationConfig(size=64, count=(1, 6), pixel_size_um=1.0), 8, seed=0, variants=[],
                 progress=False)
    return path


# -- networks ----------------------------------------------------------------------------

def test_shapes_and_layout():
    cfg = nw.preset_config("tiny")
    G, D = nw.Generator(cfg), nw.Discriminator(cfg)
    assert G.num_ws == 2 * 4  # b4: conv1; b8..b32: conv0+conv1; + last toRGB
    img = G(torch.randn(4, cfg["z_dim"]), noise_mode="random")
    assert img.shape == (4, 4, 32, 32) and img.dtype == torch.float32
    assert D(img).shape == (4, 1)
    names = set(G.state_dict())
    for n in ("mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const", "synthesis.b4.conv1.affine.weight",
              "synthesis.b4.conv1.noise_strength", "synthesis.b8.conv0.weight", "synthesis.b8.torgb.weight",
              "synthesis.b32.conv1.noise_const", "synthesis.b8.resample_filter"):
        assert n in names
    assert {"b32.fromrgb.weight", "b32.skip.weight", "b4.conv.weight", "b4.fc.weight", "b4.out.bias"} <= set(D.state_dict())
    # the paper's 512 config: 16 ws, channels 512 up to 64 px, then halving
    c512 = nw.preset_config("paper512")
    assert nw.channels_for(c512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
    with pytest.raises(CellgenError, match="unknown generator preset"):
        nw.preset_config("huge")


def test_discriminator_can_keep_its_widths_while_the_generator_widens():
    base = nw.preset_config("tiny")
    wide = {str(r): 2 * c for r, c in nw.channels_for(base).items()}
    own = nw.preset_config("tiny", channels=wide, d_channels={str(r): c for r, c in nw.channels_for(base).items()})
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(nw.Discriminator(own)) == shapes(nw.Discriminator(base))
    assert shapes(nw.Discriminator(nw.preset_config("tiny", channels=wide))) != shapes(nw.Discriminator(base))
    assert nw.Generator(own).synthesis.b32.conv1.weight.shape[0] == 2 * nw.channels_for(base)[32]


def test_z_from_seed_matches_official():
    np.testing.assert_array_equal(nw.z_from_seed(42, 512), np.random.RandomState(42).randn(1, 512))


def test_fir_upsample_keeps_level_and_modconv_demodulates():
    f = nw.setup_filter()
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    up = nw.upsample2d(torch.ones(1, 1, 8, 8), f)
    assert up.shape == (1, 1, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 32, 32, generator=g)
    # wildly scaled weights and styles: demodulation must restore unit variance per output channel
    weight = torch.randn(32, 64, 3, 3, generator=g) * torch.logspace(-2, 2, 32).view(32, 1, 1, 1)
    styles = torch.rand(8, 64, generator=g) * 10 + 0.1
    y = nw.modulated_conv2d(x, weight, styles, padding=1)
    var = y[..., 1:-1, 1:-1].var(dim=(2, 3))  # interior, per image and channel
    assert 0.8 < float(var.mean()) < 1.2 and float(var.min()) > 0.5 and float(var.max()) < 1.6
    raw = nw.modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert float(raw.var()) > 100  # without demodulation the scales go straight through
    # the fast path equals the paper's per-sample (grouped) convolution with demodulated weights
    w = weight[None] * styles[:, None, :, None, None]
    w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    ref = torch.nn.functional.conv2d(x.reshape(1, -1, 32, 32), w.reshape(-1, 64, 3, 3), padding=1, groups=8)
    torch.testing.assert_close(y, ref.reshape(8, 32, 32, 32), rtol=1e-4, atol=1e-4)


# -- truncation and seeds -------------------------------------------------------------------

def test_truncation(gen):
    seeds = [0, 1, 2, 7]
    w = gen.w_from_seeds(seeds)
    assert w.shape == (4, gen.num_ws, gen.w_dim) and w.dtype == np.float32
    w0 = gen.truncate(w, 0.0)
    np.testing.assert_allclose(w0, np.broadcast_to(gen.w_avg, w0.shape), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(gen.truncate(w, 1.0), w)
    neg = gen.truncate(w, -0.5)
    np.testing.assert_allclose(neg - gen.w_avg, -0.5 * (w - gen.w_avg), rtol=1e-5, atol=1e-5)
    cut = gen.truncate(w, 0.3, cutoff=3)
    np.testing.assert_array_equal(cut[:, 3:], w[:, 3:])
    np.testing.assert_allclose(cut[:, :3], gen.w_avg + 0.3 * (w[:, :3] - gen.w_avg), rtol=1e-5, atol=1e-5)
    # same as the mapping network's own (official) truncation
    z = torch.from_numpy(gen.z_from_seeds(seeds))
    with torch.no_grad():
        ref = gen.G.mapping(z, truncation_psi=-0.5, truncation_cutoff=None, update_w_avg=False).numpy()
    np.testing.assert_allclose(neg, ref, rtol=1e-5, atol=1e-5)
    before = gen.w_avg.copy()
    gen.G.train()
    gen.w_from_seeds(seeds)  # sampling never moves the tracked average, even in train mode
    gen.G.eval()
    np.testing.assert_array_equal(gen.w_avg, before)


def test_same_seed_same_label_maps_and_masks(gen):
    a = gen.label_maps([3, 4, 5], psi=0.7)
    b = gen.label_maps([5, 4, 3], psi=0.7)[::-1]
    assert a.shape == (3, 4, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gen.label_maps([3, 4, 5], psi=0.7, batch_size=2),
                                  gen.label_maps([3, 4, 5], psi=0.7, batch_size=2))
    np.testing.assert_allclose(gen.label_maps([5, 4, 3], psi=0.7, batch_size=3)[::-1], a, rtol=1e-5, atol=1e-5)
    c = gen.label_maps([3], psi=0.5)
    assert not np.array_equal(a[:1], c)
    r1 = gen.label_maps([3, 4], psi=0.7, noise_mode="random", batch_size=1)
    r2 = gen.label_maps([3, 4], psi=0.7, noise_mode="random", batch_size=2)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, gen.label_maps([3, 4], psi=0.7, noise_mode="const"))  # the seed's own noise
    m1, m2 = instances_from_label_map(a[0], 1, 1), instances_from_label_map(b[0], 1, 1)
    for k in ("semantic", "cell", "nucleus"):
        np.testing.assert_array_equal(getattr(m1, k), getattr(m2, k))
    assert gen.classes([3], psi=0.7).shape == (1, 32, 32)


# -- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_mismatch(gen, tmp_path):
    path = save_checkpoint(tmp_path / "g.pt", KIND, gen.config, gen.G.state_dict(), {"w_avg": gen.G.mapping.w_avg})
    back = ContourGenerator.load(path)
    assert len(back.sha256) == 64
    np.testing.assert_array_equal(back.label_maps([1, 2], psi=0.6), gen.label_maps([1, 2], psi=0.6))
    bad = dict(gen.G.state_dict())
    bad["synthesis.b8.conv0.weight"] = torch.zeros(3, 3, 3, 3)
    save_checkpoint(tmp_path / "bad.pt", KIND, gen.config, bad)
    with pytest.raises(CellgenError, match=r"synthesis\.b8\.conv0\.weight") as err:
        ContourGenerator.load(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(CellgenError, match="expected 'contour-generator'"):
        save_checkpoint(tmp_path / "other.pt", "renderer", gen.config, gen.G.state_dict())
        ContourGenerator.load(tmp_path / "other.pt")


# -- training ----------------------------------------------------------------------------------

def test_training_data_from_folder(tmp_path):
    import tifffile

    cell = np.zeros((48, 40), np.uint32)
    cell[5:20, 5:20] = 1
    cell[20:35, 5:20] = 2
    nucleus = np.where((cell > 0) & (np.add.outer(np.arange(48), np.arange(40)) % 7 < 4), cell, 0).astype(np.uint32)
    for kind, arr in (("cell", cell), ("nucleus", nucleus)):
        (tmp_path / "masks" / kind).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "masks" / kind / "00000.tif", arr)
    maps = load_training_data(tmp_path, 32)
    assert maps.shape == (1, 32, 32) and maps.dtype == np.uint8
    assert set(np.unique(maps)) == {0, 1, 2, 3}  # the two touching cells keep a boundary


def test_augmentation_keeps_label_maps_valid():
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 4, (6, 32, 32), generator=g)
    x = torch.nn.functional.one_hot(classes, 4).permute(0, 3, 1, 2).float() * 2 - 1
    torch.manual_seed(0)
    y = augment_batch(x, 1.0)
    assert y.shape == x.shape
    assert torch.all((y == 1).sum(1) == 1) and torch.all((y == 1) | (y == -1))
    assert not torch.equal(x, y)
    assert torch.equal(augment_batch(x, 0.0), x)


def _log_steps(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_train_and_resume(tiny_set, tmp_path):
    run = tmp_path / "run"
    config = ContourTrainingConfig(preset="tiny", steps=4, batch=4, seed=3, tick_steps=2, augment=0.5, pl_weight=1.0)

    class Kill(Exception):
        pass

    def kill(entry):
        raise Kill  # a run stopped right after its first tick's snapshot

    with pytest.raises(Kill):
        train_contours(tiny_set, run, config, progress=False, log=kill)
    assert _log_steps(run) == [2]
    assert not (run / "generator.pt").exists()
    with open(run / "log.jsonl", "a") as fh:  # as if killed after logging step 3 but before its snapshot
        fh.write(json.dumps({"step": 3}) + "\n")
    meta = json.loads((run / "snapshot.json").read_text())  # as if killed between snapshot .pt and .json
    meta["sha256"] = "0" * 64
    (run / "snapshot.json").write_text(json.dumps(meta))
    seen = []
    out = train_contours(tiny_set, run, config, progress=False, log=seen.append)
    assert [e["step"] for e in seen] == [4]
    assert _log_steps(run) == [2, 4]
    for entry in map(json.loads, (run / "log.jsonl").read_text().splitlines()):
        assert np.isfinite(entry["loss_G"]) and np.isfinite(entry["loss_D"])
        assert set(entry) >= {"step", "kimg", "loss_G", "loss_D", "r1", "augment_p", "seconds"}
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert first["r1"] is not None and np.isfinite(first["r1"]) and first["r1"] > 0
    assert sorted(p.name for p in run.glob("samples_*.png")) == ["samples_00000002.png", "samples_00000004.png"]
    info = json.loads(out.with_suffix(".json").read_text())["info"]
    assert info["steps"] == 4 and info["device"] == "cpu"

    # resuming is for the same run: another seed, or other data under any name, is refused in one line
    before = (run / "snapshot.pt").read_bytes()
    with pytest.raises(CellgenError, match="other seed; resume with the same options") as err:
        train_contours(tiny_set, run, config, progress=False, seed=4)
    assert "\n" not in str(err.value)
    other = simulate_set(tmp_path / "other.h5", SimulationConfig(size=64, count=(1, 6), pixel_size_um=1.0), 8,
                         seed=1, variants=[], progress=False)
    with pytest.raises(CellgenError, match="other data;"):
        train_contours(other, run, config, progress=False)
    assert (run / "snapshot.pt").read_bytes() == before

    # an uninterrupted run with the same seed ends with the same weights (CPU determinism)
    straight = train_contours(tiny_set, tmp_path / "straight", config, progress=False)
    a, b = ContourGenerator.load(out), ContourGenerator.load(straight)
    for (k, v), (_, w) in zip(a.G.state_dict().items(), b.G.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert a.label_maps([0, 1], psi=0.7).shape == (2, 4, 32, 32)


def test_run_keeps_its_ema_generator_every_k_kimg_across_a_resume(tiny_set, tmp_path):
    run = tmp_path / "run"
    # batch 4: 0.004 kimg a step, so every 0.008 kimg is every second step; the end is kept too
    config = ContourTrainingConfig(preset="tiny", steps=5, batch=4, seed=1, tick_steps=1, export_every_kimg=0.008)

    class Kill(Exception):
        pass

    def kill_at_3(entry):
        if entry["step"] == 3:
            raise Kill

    with pytest.raises(Kill):
        train_contours(tiny_set, run, config, progress=False, log=kill_at_3)
    train_contours(tiny_set, run, config, progress=False)
    kept = sorted((run / "generators").glob("generator-*.pt"))
    assert [p.name for p in kept] == ["generator-00000002.pt", "generator-00000004.pt", "generator-00000005.pt"]
    assert [ContourGenerator.load(p).info["steps"] for p in kept] == [2, 4, 5]
    last, final = ContourGenerator.load(kept[-1]), ContourGenerator.load(run / "generator.pt")
    for (k, v), (_, w) in zip(last.G.state_dict().items(), final.G.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(CellgenError, match="export-every"):
        train_contours(tiny_set, tmp_path / "bad", config, progress=False, export_every_kimg=0)


# -- official pickles ---------------------------------------------------------------------------

EXPLOSIVE_SRC = "raise RuntimeError('module_src was executed')\n"


@pytest.fixture
def official_modules(monkeypatch):
    """Stand-ins for the official ``torch_utils.persistence`` and ``dnnlib.util`` at pickling time."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called here: the importer maps the name
        raise AssertionError("reconstruct called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    for name, mod in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)

    class Persistent:
        def __init__(self, class_name, state):
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "module_src": EXPLOSIVE_SRC, "class_name": self.class_name,
                        "state": self.state}
            return (_reconstruct_persistent_obj, (meta,))

    def record(module, init_kwargs=None):
        state = {k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str, type(None)))}
        state["training"] = False
        state["_parameters"] = collections.OrderedDict(
            (k, None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=True))
            for k, v in module._parameters.items())
        state["_buffers"] = collections.OrderedDict((k, v.detach().clone()) for k, v in module._buffers.items())
        state["_non_persistent_buffers_set"] = set()
        state["_forward_hooks"] = collections.OrderedDict()
        state["_modules"] = collections.OrderedDict((k, record(v)) for k, v in module._modules.items())
        state["_init_args"] = ()
        state["_init_kwargs"] = EasyDict(init_kwargs or {})
        return Persistent(type(module).__name__, state)

    return record, EasyDict


def test_import_official_pickle(official_modules, gen, tmp_path):
    record, EasyDict = official_modules
    cfg = gen.config
    D = nw.Discriminator(cfg)
    kwargs = {"z_dim": cfg["z_dim"], "c_dim": 0, "w_dim": cfg["w_dim"], "img_resolution": 32, "img_channels": 4,
                  "mapping_kwargs": EasyDict(num_layers=cfg["mapping_layers"]),
                  "synthesis_kwargs": EasyDict(channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                                            num_fp16_res=0, conv_clamp=None)}
    g_rec = record(gen.G, kwargs)
    g_rec.state["scale"] = np.float32(1.5)  # a numpy scalar, as init kwargs may hold
    data = {"G": record(gen.G, kwargs), "D": record(D), "G_ema": g_rec, "augment_pipe": None,
                "training_set_kwargs": EasyDict(resolution=32)}
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))

    nets = import_official(path, which=("G_ema", "D"))
    assert nets["config"]["mapping_layers"] == cfg["mapping_layers"]
    torch.testing.assert_close(nets["D"](torch.ones(4, 4, 32, 32)), D(torch.ones(4, 4, 32, 32)))
    imported = ContourGenerator.load(path)
    np.testing.assert_array_equal(imported.w_avg, gen.w_avg)
    for psi in (1.0, 0.7, -0.4):
        np.testing.assert_allclose(imported.label_maps([0, 11, 123], psi=psi), gen.label_maps([0, 11, 123], psi=psi),
                                   rtol=1e-5, atol=1e-5)

    # a tensor of the wrong shape is named in one line
    conv0 = g_rec.state["_modules"]["synthesis"].state["_modules"]["b8"].state["_modules"]["conv0"]
    conv0.state["_modules"]["affine"].state["_parameters"]["weight"] = torch.nn.Parameter(torch.zeros(7, 32))
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(CellgenError, match=r"synthesis\.b8\.conv0\.affine\.weight \(7, 32\)") as err:
        ContourGenerator.load(path)
    assert "\n" not in str(err.value)
    # an unknown module is refused by name
    conv0.state["_modules"]["extra"] = conv0.state["_modules"]["affine"]
    path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(CellgenError, match=r"unknown module 'synthesis\.b8\.conv0\.extra'"):
        ContourGenerator.load(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil()}))
    with pytest.raises(CellgenError, match="refusing to load") as err:
        ContourGenerator.load(path)
    assert "system" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "owned.txt").exists()
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CellgenError, match="not a readable network pickle"):
        import_official(path)
