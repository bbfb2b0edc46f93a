"""The generated-set path end to end through the CLI, with tiny models trained for a few steps."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from cellgen.datasets.h5 import BenchmarkSet
from cellgen.simulate import SimulationConfig
from tests.cli_runner import run_cli as cli




def test_sample_writes_verified_graded_set_deterministically(models, tmp_path):
    args = ["sample", "--checkpoint", str(models["gen"]), "--renderer", str(models["rend"]), "--psi", "-1,0,1",
            "--seeds", "0-2", "-q"]
    for name in ("a.h5", "b.h5"):
        r = cli(*args, "-o", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert cli("datasets", "verify", "a.h5", cwd=tmp_path).returncode == 0
    digests = {hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.h5", "b.h5")}
    assert len(digests) == 1
    with BenchmarkSet(tmp_path / "a.h5") as ds:
        meta = ds.metadata
        assert list(zip(meta["seed"], meta["psi"])) == [(s, p) for s in range(3) for p in (-1.0, 0.0, 1.0)]
        assert (meta["source"] == "stylegan2").all()
        assert ds.variants == ["clean", "gaussian", "poisson"]
        assert len(ds.attrs["generator_sha256"]) == 64 and len(ds.attrs["renderer_sha256"]) == 64
        # psi = 0 puts every seed at w_avg: identical masks whatever the seed
        zero = [ds.masks(i).cell for i in range(ds.n) if meta["psi"][i] == 0.0]
        assert all(np.array_equal(zero[0], z) for z in zero[1:])


def test_masks_only_then_render(models, tmp_path):
    r = cli("sample", "--checkpoint", str(models["gen"]), "--renderer", "none", "--psi", "0.5", "--seeds", "0-3",
            "-o", "m.h5", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "none (masks only)" in r.stdout
    r = cli("render", "--data", "m.h5", "--checkpoint", str(models["rend"]), "-o", "r.h5", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "m.h5") as m, BenchmarkSet(tmp_path / "r.h5") as rendered:
        assert not m.has_images and rendered.has_images
        for i in range(4):
            assert np.array_equal(m.masks(i).cell, rendered.masks(i).cell)
        assert list(rendered.metadata["seed"]) == list(m.metadata["seed"])


def test_targeted_sampling_keeps_exactly_the_draws_in_range(models, tmp_path):
    # every (seed, psi) of the first batch of draws, untargeted: which of them have which count
    base = ["sample", "--checkpoint", str(models["gen"]), "--renderer", "none", "--psi", "0,1", "-q"]
    r = cli(*base, "--seeds", "0-7", "-o", "all.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "all.h5") as ds:
        drawn = {(int(s), float(p)): int(c) for s, p, c in zip(ds.metadata["seed"], ds.metadata["psi"],
                                                              ds.metadata["count"])}
    common, hits = Counter(drawn.values()).most_common(1)[0]
    assert hits >= 2, f"the tiny generator gave no cell count twice in 16 draws: {drawn}"
    # draws run seed batches, psi by psi: the first two hits in that order are the ones kept
    order = [(s, p) for p in (0.0, 1.0) for s in range(8)]
    expected = sorted([sp for sp in order if drawn[sp] == common][:2])
    r = cli(*base, "--count", f"{common}:{common}", "--n", "2", "-o", "t.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "t.h5") as ds:
        assert (ds.metadata["count"] == common).all()
        assert [(int(s), float(p)) for s, p in zip(ds.metadata["seed"], ds.metadata["psi"])] == expected
        recipe = json.loads(ds.attrs["recipe"])
        assert recipe["target"]["n"] == 2 and recipe["target"]["draws"] == 16  # one batch of 8 seeds x 2 psi


def test_psi_sweep_reports_monotonic_fractions(models, tmp_path):
    r = cli("gen", "psi-sweep", "--checkpoint", str(models["gen"]), "--seeds", "0-4", "--fit-seeds", "100-115",
            "-o", "sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "sweep" / "psi_sweep.json").read_text())
    for table, key in ((result["psi_table"], "psi_monotonic_fraction"),
                       (result["direction_table"], "direction_monotonic_fraction")):
        table = np.array(table)
        assert table.shape == (5, 5)
        # a seed counts as monotonic when its row never rises after falling or falls after rising
        steps = np.sign(np.diff(table, axis=1))
        monotonic = [not ({1.0, -1.0} <= set(row)) for row in steps]
        assert result[key] == pytest.approx(sum(monotonic) / 5)
    counts = np.array(result["psi_table"])
    assert counts.min() >= 0 and np.all(counts == np.round(counts))  # measure 'count' counts cells
    assert (tmp_path / "sweep" / "psi_sweep.png").exists() and (tmp_path / "sweep" / "direction_sweep.png").exists()


def test_missing_default_checkpoints_and_bad_seeds_are_one_line(models, tmp_path):
    import os

    env = dict(os.environ, CELLGEN_CHECKPOINTS=str(tmp_path / "none"))
    r = cli("sample", "-o", "x.h5", cwd=tmp_path, env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "no default generator checkpoint" in r.stderr
    r = cli("sample", "--checkpoint", str(models["gen"]), "--seeds", "a-b", "-o", "x.h5", cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--seeds" in r.stderr


def test_export_from_snapshot_matches_final_generator(models, tmp_path):
    from cellgen.gen.generator import ContourGenerator
    from cellgen.gen.train import export_generator

    exported = export_generator(models["root"] / "gen", tmp_path / "exported.pt")
    a, b = ContourGenerator.load(models["gen"]), ContourGenerator.load(exported)
    assert np.array_equal(a.label_maps([0, 1], psi=0.7), b.label_maps([0, 1], psi=0.7))
    assert b.info["exported_from_snapshot"] and b.info["steps"] == a.info["steps"]
    # 64 px training maps at 0.5 um/px, resized to the tiny preset's 32 px: 1 um per map pixel
    assert a.info["pixel_size_um"] == b.info["pixel_size_um"] == 1.0


def test_sample_draws_at_the_renderer_scale(models, tmp_path):
    from cellgen.datasets.h5 import BenchmarkSet

    r = cli("sample", "--checkpoint", str(models["gen"]), "--renderer", str(models["rend"]), "--psi", "1",
            "--seeds", "0-1", "--variants", "clean", "-o", "s.h5", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "s.h5") as ds:
        # the 32 px generator (1 um/px) feeds a renderer trained on 64 px maps at 0.5 um/px
        assert ds.image_size == (64, 64) and ds.pixel_size_um == 0.5
        assert ds.attrs["recipe"] and json.loads(ds.attrs["recipe"])["size"] == 64


def test_export_renderer_from_snapshot_matches_final(models, tmp_path):
    from cellgen.render.renderer import Renderer
    from cellgen.render.train import export_renderer
    from cellgen.simulate import simulate_image

    sim = simulate_image(3, SimulationConfig(size=64, count=4, cell_radius_um=5))
    final = Renderer.load(models["rend"])
    exported = Renderer.load(export_renderer(models["root"] / "rend", tmp_path / "r.pt"))
    assert np.array_equal(final.render(sim.semantic, sim.cell, sim.nucleus),
                          exported.render(sim.semantic, sim.cell, sim.nucleus))
    half = Renderer.load(export_renderer(models["root"] / "rend", tmp_path / "r16.pt", half=True))
    diff = np.abs(half.render(sim.semantic, sim.cell, sim.nucleus) - final.render(sim.semantic, sim.cell, sim.nucleus))
    assert diff.max() < 0.02  # fp16 storage changes pixels by well under 2% of full scale
    assert exported.info["exported_from_snapshot"]


def test_train_export_cli_writes_both_kinds(models, tmp_path):
    from cellgen.gen.generator import ContourGenerator
    from cellgen.render.renderer import Renderer

    for run, out in (("gen", "g.pt"), ("rend", "r.pt")):
        r = cli("train", "export", str(models["root"] / run), "-o", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    assert ContourGenerator.load(tmp_path / "g.pt").resolution == 32
    assert Renderer.load(tmp_path / "r.pt").sha256
    r = cli("train", "export", str(tmp_path))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "snapshot.pt" in r.stderr
