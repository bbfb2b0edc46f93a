"""Issue 14: per-seed generator noise, recorded in sets; `cellgen eval contours`; diversity, P/R."""

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cellgen.cli import cli
from cellgen.errors import CellgenError
from cellgen.gen.diversity import (
    closest_pairs,
    foreground,
    iou_summary,
    knn_radii,
    pairwise_iou,
    precision_recall,
)
from cellgen.gen.generator import ContourGenerator, noise_fields
from cellgen.gen.networks import z_from_seed


@pytest.fixture(scope="module")
def gen(models):
    return ContourGenerator.load(models["gen"])


def test_noise_is_the_seeds_own_deterministic_and_batch_independent(gen):
    a = gen.label_maps([5, 6, 7], psi=0.7)
    np.testing.assert_array_equal(a, gen.label_maps([5, 6, 7], psi=0.7))
    np.testing.assert_array_equal(a[1], gen.label_maps([6], psi=0.7)[0])  # not its place in the batch
    np.testing.assert_array_equal(a[::-1], gen.label_maps([7, 6, 5], psi=0.7))
    f5, f5b, f6 = noise_fields(5, [4, 8]), noise_fields(5, [4, 8]), noise_fields(6, [4, 8])
    assert [f.shape for f in f5] == [(4, 4), (8, 8)]
    assert all(np.array_equal(x, y) for x, y in zip(f5, f5b))
    assert not np.array_equal(f5[1], f6[1])
    with pytest.raises(CellgenError, match="pass seeds"):
        gen.label_maps_from_w(gen.w_from_seeds([1, 2]))  # random noise needs each image's seed
    with pytest.raises(CellgenError, match="noise mode"):
        gen.label_maps([1], noise_mode="fixed")


def test_psi0_column_holds_no_copies_with_random_noise(gen):
    # psi = 0 maps every seed to w_avg: only the noise can tell the seeds apart
    r = gen.label_maps([0, 1, 2], psi=0.0)
    assert not np.array_equal(r[0], r[1]) and not np.array_equal(r[1], r[2])
    c = gen.label_maps([0, 1, 2], psi=0.0, noise_mode="const")
    np.testing.assert_array_equal(c[0], c[1])  # the official protocol: one image for all seeds
    np.testing.assert_array_equal(c[1], c[2])


def test_const_noise_is_the_official_protocol(gen):
    # official generate.py: z = RandomState(seed).randn(1, z_dim), G(z, psi, noise_mode='const')
    for seed in (3, 11):
        z = torch.from_numpy(z_from_seed(seed, gen.z_dim)).to(next(gen.G.parameters()).dtype)
        with torch.inference_mode():
            ref = gen.G(z, truncation_psi=0.6, noise_mode="const").float().numpy()
        np.testing.assert_allclose(gen.label_maps([seed], psi=0.6, noise_mode="const"), ref, rtol=1e-5, atol=1e-5)


def test_sample_records_noise_mode(models, tmp_path):
    runner = CliRunner()
    common = ["sample", "--checkpoint", str(models["gen"]), "--renderer", "none", "--seeds", "0-2", "--psi", "0", "-q"]
    r = runner.invoke(cli, [*common, "-o", str(tmp_path / "r.h5")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*common, "--noise-mode", "const", "-o", str(tmp_path / "c.h5")])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "r.h5") as f:
        assert f.attrs["noise_mode"] == "random" and json.loads(f.attrs["recipe"])["noise_mode"] == "random"
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["noise_mode"] == "const" and json.loads(f.attrs["recipe"])["noise_mode"] == "const"
    r = runner.invoke(cli, [*common, "--noise-mode", "fixed", "-o", str(tmp_path / "x.h5")])
    assert r.exit_code != 0 and "fixed" in r.output


def test_pairwise_iou_and_summary_known_answers():
    left = np.zeros((4, 4), int)
    left[:, :2] = 1
    top = np.zeros((4, 4), int)
    top[:2, :] = 2  # instance ids do not matter: foreground is cell > 0
    iou = pairwise_iou(foreground(np.stack([left, top, left])))
    np.testing.assert_allclose(iou, [[1, 1 / 3, 1], [1 / 3, 1, 1 / 3], [1, 1 / 3, 1]])
    s = iou_summary(iou, threshold=0.6)
    assert s["n_pairs"] == 3 and s["max"] == 1.0 and s["fraction_above"] == pytest.approx(1 / 3)
    assert s["mean"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert closest_pairs(iou, 1) == [(0, 2, 1.0)]
    assert pairwise_iou(foreground(np.zeros((2, 3, 3), int)))[0, 1] == 1.0  # two empty maps are identical


def test_precision_recall_known_answers():
    real = np.arange(10, dtype=float)[:, None] * np.array([[1.0, 0.0]])  # points 0..9 on a line
    np.testing.assert_allclose(knn_radii(real, k=1), np.ones(10))
    np.testing.assert_allclose(knn_radii(real, k=3)[[0, 5]], [3, 2])
    same = precision_recall(real, real.copy(), k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(real, real + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # half the generated points on reals 0..4, half far away: precision 0.5; the generated balls
    # (radius 1 with k = 1) reach reals 0..5: recall 0.6
    gen = np.concatenate([real[:5], real[:5] + 100.0])
    pr = precision_recall(real, gen, k=1)
    assert pr["precision"] == 0.5 and pr["recall"] == pytest.approx(0.6)
    with pytest.raises(CellgenError):
        knn_radii(real[:3], k=3)


def test_sampled_label_maps_are_the_classes_the_masks_come_from(gen):
    from cellgen.gen.evaluate import sample_label_maps, sample_masks
    from cellgen.masks import instances_from_label_map

    classes, masks = sample_label_maps(gen, [3, 4, 5], 1.0, 48)
    assert classes.shape == (3, 48, 48) and classes.dtype == np.uint8 and classes.max() <= 3
    for c, m, again in zip(classes, masks, sample_masks(gen, [3, 4, 5], 1.0, 48)):
        assert np.array_equal(instances_from_label_map(c).cell, m.cell)
        assert np.array_equal(again.cell, m.cell)


def test_shape_measures_of_known_objects():
    from cellgen.gen.evaluate import _shapes

    cell = np.zeros((1, 40, 40), np.uint32)
    nucleus = np.zeros_like(cell)
    cell[0, 0:20, 0:20] = 1                # a square cell with its nucleus at the centre
    nucleus[0, 7:13, 7:13] = 1
    cell[0, 20:40, 20:40] = 2              # an L-shaped cell: a 20x20 square less a 10x10 corner
    cell[0, 30:40, 30:40] = 0
    nucleus[0, 21:27, 21:27] = 2           # nucleus in the L's corner, off its centre
    s = _shapes(cell, nucleus)
    assert s["cell_solidity"][0] == pytest.approx(1.0)
    assert s["cell_solidity"][1] < 0.9      # 300 px against a hull of about 350
    assert s["nucleus_eccentricity"][0] == pytest.approx(0.0, abs=1e-6)
    assert s["nucleus_offset"][0] == pytest.approx(0.0, abs=1e-6)
    # the L is three 10x10 blocks centred at 24.5 / 34.5, so its centroid is ((2 * 24.5 + 34.5) / 3)
    # on both axes; its nucleus's is 23.5; its equivalent radius sqrt(300 / pi)
    d = (2 * 24.5 + 34.5) / 3 - 23.5
    expected = np.hypot(d, d) / np.sqrt(300 / np.pi)
    assert s["nucleus_offset"][1] == pytest.approx(expected, rel=1e-6)


def test_eval_contours_end_to_end(models, tmp_path):
    out = tmp_path / "ev"
    r = CliRunner().invoke(cli, ["eval", "contours", "--checkpoint", str(models["gen"]), "--reference",
                                 str(models["data"]), "-o", str(out), "--n", "8", "--n-reference", "8",
                                 "--n-diversity", "6", "--psi-seeds", "3", "-q"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["protocol"]["noise_mode"] == "random"
    assert rep["diversity"]["generated"]["n_pairs"] == 15 and rep["diversity"]["corpus"]["n_pairs"] == 15
    pr = rep["fidelity"]["precision_recall"]
    assert 0 <= pr["precision"] <= 1 and 0 <= pr["recall"] <= 1 and pr["k"] == 3
    assert rep["fidelity"]["fd"]["all"]["fd"] >= 0
    # the tiers partition the generated maps: their precisions average back to the overall one
    by_tier = rep["fidelity"]["precision_by_tier"]
    assert sum(e["n_generated"] for e in by_tier.values()) == pr["n_generated"]
    weighted = sum(e["n_generated"] * e["precision"] for e in by_tier.values() if e["n_generated"])
    assert weighted / pr["n_generated"] == pytest.approx(pr["precision"])
    assert sum(e["n_corpus"] for e in by_tier.values()) == 4  # the odd half of 8 corpus maps
    assert np.asarray(rep["density_control"]["counts"]).shape == (3, 5)
    assert set(rep["goals"]) >= {"diversity_ratio", "precision", "recall", "ks_count", "psi_monotonic", "all_met"}
    for name in ("report.md", "diversity.png", "near_duplicates.png", "tiers.png"):
        assert (out / name).stat().st_size > 0
    assert "| precision |" in (out / "report.md").read_text()
    assert set(rep["shape"]) == {"cell_solidity", "nucleus_eccentricity", "nucleus_offset"}
    assert all(0 <= v["ks"] <= 1 for v in rep["shape"].values())
    assert "| cell solidity (area / convex hull) (median; not a goal) |" in (out / "report.md").read_text()


def test_eval_contours_ranks_a_runs_kept_generators_and_plots_them_in_training_order(models, tmp_path):
    from cellgen.gen.eval_report import _ordered
    from cellgen.gen.train import train_contours

    # a run that keeps its generator at steps 1 and 2 (every 0.004 kimg at batch 4), ranked as a folder
    train_contours(models["data"], tmp_path / "run", preset="tiny", steps=2, tick_steps=1, export_every_kimg=0.004,
                   progress=False)
    out = tmp_path / "ranked"
    args = ["eval", "contours", "--reference", str(models["data"]), "-o", str(out), "--n", "8", "--n-reference", "8",
            "--n-diversity", "4", "--psi-seeds", "2", "-q"]
    r = CliRunner().invoke(cli, args + ["--checkpoint", str(tmp_path / "run" / "generators")])
    assert r.exit_code == 0, r.output
    assert "ranking.md" in r.output and (out / "training.png").stat().st_size > 0
    rows = [line for line in (out / "ranking.md").read_text().splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2 ")]
    assert len(rows) == 2
    reports = sorted(out.glob("0[12]-*/report.json"))
    assert [p.parent.name[:2] for p in reports] == ["01", "02"]
    for row, rep in zip(rows, reports):
        # each ranked checkpoint keeps the maps of its own figures (only those, not all it drew)
        assert (rep.parent / "near_duplicates.png").stat().st_size > 0 and (rep.parent / "tiers.png").exists()
        result = json.loads(rep.read_text())
        assert f"`{result['generator']['path']}`" in row
        assert f"| {result['fidelity']['precision_recall']['precision']:.2f} |" in row
    ranked = [(str(p), json.loads(p.read_text())) for p in reports]
    in_order, xlabel = _ordered(ranked)
    assert xlabel == "training kimg"
    assert [r["generator"]["info"]["steps"] for _, r in in_order] == [1, 2]  # by kimg, whatever the rank
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, args + ["--checkpoint", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "no .pt checkpoints" in str(r.exception)


def test_continued_training_warms_up_d_without_touching_g(models, tmp_path):
    from cellgen.checkpoint import load_checkpoint
    from cellgen.gen.train import train_contours

    r = CliRunner().invoke(cli, ["train", "contours", "--data", str(models["data"]), "-o", str(tmp_path / "ft"),
                                 "--preset", "tiny", "--steps", "2", "--init", str(models["gen"]),
                                 "--d-warmup-kimg", "0.008", "-q"])  # 2 steps of batch 4: D only
    assert r.exit_code == 0, r.output
    path = tmp_path / "ft" / "generator.pt"
    start = load_checkpoint(models["gen"], "contour-generator")["state_dict"]
    after = load_checkpoint(path, "contour-generator")["state_dict"]
    assert all(torch.equal(start[k], after[k]) for k in start)
    with pytest.raises(CellgenError, match="not a 'small128' generator as configured here: .*resolution 32 "
                                           r"\(here 128\)"):
        train_contours(models["data"], tmp_path / "bad", preset="small128", steps=1, init=models["gen"], progress=False)


def test_training_continues_from_a_snapshot_with_its_discriminator_on_other_data(models, tmp_path, small_set):
    from cellgen.checkpoint import load_checkpoint
    from cellgen.gen.train import train_contours

    first = tmp_path / "first"
    train_contours(models["data"], first, preset="tiny", steps=3, tick_steps=3, augment=0.3, progress=False)
    snap = load_checkpoint(first / "snapshot.pt", "contour-training")
    # lr 0: no weight moves (only the running w_avg), so the new run holds what it loaded, not a fresh D
    second = tmp_path / "second"
    train_contours(small_set, second, preset="tiny", steps=1, tick_steps=1, lr=0.0, init=first / "snapshot.pt",
                   progress=False)
    cont = load_checkpoint(second / "snapshot.pt", "contour-training")
    for prefix in ("G.", "D."):
        keys = [k for k in snap["state_dict"] if k.startswith(prefix) and not k.endswith("w_avg")]
        differ = [k for k in keys if not torch.equal(snap["state_dict"][k], cont["state_dict"][k])]
        assert keys and differ == [], differ
    fresh = tmp_path / "fresh"
    train_contours(small_set, fresh, preset="tiny", steps=1, tick_steps=1, lr=0.0, init=models["gen"], progress=False)
    other = load_checkpoint(fresh / "snapshot.pt", "contour-training")["state_dict"]
    assert not all(torch.equal(snap["state_dict"][k], other[k]) for k in snap["state_dict"] if k.startswith("D."))
    with pytest.raises(CellgenError, match="continue from"):
        train_contours(small_set, tmp_path / "bad2", preset="tiny", steps=1, init=models["rend"], progress=False)


def test_a_result_keeps_only_the_maps_its_figures_show(models):
    from cellgen.gen.evaluate import evaluate_contours, load_reference
    from cellgen.gen.generator import ContourGenerator
    from cellgen.quality import load_backbone

    ref = load_reference(models["data"], load_backbone(), n=8, n_diversity=6)
    r = evaluate_contours(ContourGenerator.load(models["gen"]), ref, n=8, n_diversity=6, psi_seeds=2)
    shown = {k for i, j, _ in r["diversity"]["closest_generated"] for k in (i, j)}
    assert set(r["_masks"]) == shown
    # own memory, not views that would keep all the drawn maps alive
    assert all(a.base is None for maps in r["_masks"].values() for a in maps)
    assert all(a.base is None for a in r["_examples"]["generated"].values())
