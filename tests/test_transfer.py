"""Transfer report: do synthetic scores rank methods as real scores do?"""

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cellgen.bench.transfer import transfer_report
from cellgen.cli import cli
from cellgen.datasets.real import load_dsb2018
from cellgen.errors import CellgenError


def summary(scores: dict, tiers=("low", "high")):
    """A summary.json body with f1@0.5 per tier for the nucleus compartment."""
    rows = [dict(compartment="nucleus", variant="clean", tier=t, **{"f1@0.5": s}) for t, s in scores.items()]
    return {"tiers": list(tiers), "summary": rows}


def test_tau_and_gap_per_tier_on_known_scores():
    real = {"a": summary({"low": 0.9, "high": 0.5}), "b": summary({"low": 0.8, "high": 0.6}),
            "c": summary({"low": 0.7, "high": 0.7})}
    synthetic = {"a": summary({"low": 0.95, "high": 0.7}), "b": summary({"low": 0.85, "high": 0.6}),
                 "c": summary({"low": 0.75, "high": 0.5})}
    report = transfer_report(real, synthetic)
    low, high = report["tiers"]
    assert low["tier"] == "low" and low["kendall_tau"] == pytest.approx(1.0)  # same order
    assert high["kendall_tau"] == pytest.approx(-1.0)  # reversed order
    assert low["gap"] == pytest.approx([0.05, 0.05, 0.05])
    assert high["gap"] == pytest.approx([0.2, 0.0, -0.2])
    assert high["mean_abs_gap"] == pytest.approx(0.4 / 3)
    with pytest.raises(CellgenError, match="the same methods"):
        transfer_report({"a": real["a"]}, {"b": synthetic["b"]})


def test_compare_tells_real_from_synthetic_results_and_writes_the_report(tmp_path, small_set):
    raw, nuclei = load_dsb2018()
    src = tmp_path / "dapi"
    src.mkdir()
    tifffile.imwrite(src / "dsb.tif", raw)
    tifffile.imwrite(src / "dsb_masks.tif", nuclei.astype(np.uint16))
    runner = CliRunner()
    real = tmp_path / "real.h5"
    result = runner.invoke(cli, ["datasets", "import", str(src), "-o", str(real), "--channels", "nucleus=0",
                                 "--pixel-size", "0.5", "-q"])
    assert result.exit_code == 0, result.output
    dirs = []
    for data in (real, small_set):
        for method in ("watershed", "predictions"):
            out = tmp_path / f"{method}-{data.stem}"
            args = ["bench", "--method", method, "--data", str(data), "-o", str(out), "--variant", "clean",
                    "--n-boot", "10", "-q"]
            if method == "predictions":
                args += ["--predictions", str(data)]  # the truth itself: a perfect method
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, result.output
            dirs.append(str(out))
    result = runner.invoke(cli, ["bench", "compare", *dirs, "-o", str(tmp_path / "cmp.png")])
    assert result.exit_code == 0, result.output
    assert "transfer: f1@0.5 on nucleus" in result.output
    report = json.loads((tmp_path / "cmp-transfer.json").read_text())
    assert (tmp_path / "cmp-transfer.png").stat().st_size > 0
    assert report["compartment"] == "nucleus" and report["methods"] == ["predictions", "watershed"]
    overall = next(r for r in report["tiers"] if r["tier"] == "all")
    assert overall["real"][0] == pytest.approx(1.0) and overall["synthetic"][0] == pytest.approx(1.0)
    assert overall["gap"][0] == pytest.approx(0.0)
    assert overall["real"][1] < 1.0 and overall["kendall_tau"] == pytest.approx(1.0)
