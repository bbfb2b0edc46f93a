"""`cellgen calibrate`: both networks trained on a user's set, with model cards and a report."""

import json

import numpy as np
from click.testing import CliRunner

from cellgen.cli import cli
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.pipeline import simulate_set
from cellgen.simulate import SimulationConfig


def test_calibrate_a_few_steps_then_sample_from_the_pair(tmp_path):
    data = simulate_set(tmp_path / "mine.h5", SimulationConfig(size=64, count=(2, 6), cell_radius_um=5), 8, seed=5,
                        variants=[], progress=False)
    run = tmp_path / "run"
    args = ["calibrate", "--data", str(data), "-o", str(run), "--generator-preset", "tiny", "--renderer-preset",
            "tiny", "--generator-kimg", "0.008", "--renderer-steps", "2", "--report-images", "8", "--segmenter-steps", "3", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for name in ("generator.pt", "renderer.pt", "generator.md", "renderer.md", "report.md", "report.json"):
        assert (run / name).stat().st_size > 0, name
    report = json.loads((run / "report.json").read_text())
    assert {"contours", "images", "rendering"} <= set(report)
    assert set(report["contours"]["ks"]) >= {"count"} and "diversity" in report["contours"]
    assert report["rendering"]["rendered"] and report["images"]["metric"]
    assert "sha256" in (run / "generator.md").read_text()
    state = json.loads((run / "calibration.json").read_text())
    assert state["done"] is True
    # a second call with other options is refused rather than mixing two calibrations
    other = CliRunner().invoke(cli, [*args[:-1], "--seed", "1", "-q"])
    assert other.exit_code == 1 and "other data or options" in str(other.exception)
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run / "generator.pt"), "--renderer",
                                      str(run / "renderer.pt"), "--seeds", "0-1", "-o", str(tmp_path / "s.h5"),
                                      "--variants", "clean", "-q"])
    assert result.exit_code == 0, result.output
    with BenchmarkSet(tmp_path / "s.h5") as ds:
        assert len(ds) == 2 and ds.has_images and np.isfinite(ds.metadata["count"]).all()


def test_a_generator_trained_on_nuclei_alone_samples_nucleus_only_sets(tmp_path, small_set):
    import tifffile

    src = tmp_path / "dapi"
    src.mkdir()
    with BenchmarkSet(small_set) as ds:
        pixel = ds.attrs["pixel_size_um"]
        for i in range(len(ds)):
            tifffile.imwrite(src / f"im{i}.tif", ds.images(i)[0])
            tifffile.imwrite(src / f"im{i}_masks.tif", ds.masks(i).nucleus)
    runner = CliRunner()
    result = runner.invoke(cli, ["datasets", "import", str(src), "-o", str(tmp_path / "dapi.h5"), "--channels",
                                 "nucleus=0", "--pixel-size", str(pixel), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", "contours", "--data", str(tmp_path / "dapi.h5"), "-o", str(tmp_path / "g"),
                                 "--preset", "tiny", "--steps", "2", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["sample", "--checkpoint", str(tmp_path / "g" / "generator.pt"), "--renderer", "none",
                                 "--seeds", "0-1", "-o", str(tmp_path / "s.h5"), "-q"])
    assert result.exit_code == 0, result.output
    with BenchmarkSet(tmp_path / "s.h5") as ds:
        assert ds.compartments == ["nucleus"]
