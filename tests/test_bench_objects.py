"""Per-object bench outputs end to end: crowding.csv/png, linkage in the summary, border
exclusion, provenance and metric names in the results, crowding curves in `bench compare`."""

from __future__ import annotations

import csv
import json

import numpy as np
from click.testing import CliRunner

from cellgen.bench.crowding import crowding_rows
from cellgen.bench.report import summarise
from cellgen.bench.runner import load_records, run_bench
from cellgen.cli import cli

TIERS = ["low", "medium", "high"]


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_bench_and_compare_write_crowding_linkage_and_provenance(tmp_path, small_set):
    runner = CliRunner()
    for name, extra in (("truth", ["--method", "predictions", "--predictions", str(small_set)]),
                        ("ws", ["--method", "watershed", "--exclude-border", "2"])):
        r = runner.invoke(cli, ["bench", *extra, "--data", str(small_set), "-o", str(tmp_path / name),
                                "--variant", "clean", "--tier", "high", "--n-boot", "20", "-q"])
        assert r.exit_code == 0, r.output
    out = tmp_path / "ws"
    assert "not the area under a precision-recall curve" in r.output and "linkage" in r.output
    crowd = _csv(out / "crowding.csv")
    assert {row["stratum"] for row in crowd} >= {"touching=0", "touching=3+", "nn=<0.85"}
    assert {row["compartment"] for row in crowd} == {"cell", "nucleus"}
    assert (out / "crowding.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    run = summary["run"]
    assert run["exclude_border_px"] == 2
    assert run["method"]["channels"] == {"nucleus": 0, "cytoplasm": 1}
    assert run["method"]["for_this_set"]["nucleus_diameter_px"] == 8.0 / run["pixel_size_um"]
    assert "not the area under" in summary["metric_definitions"]["mean_ap"]
    link = {(s["compartment"], s["tier"]): s for s in summary["summary"]}[("nucleus", "all")]
    assert 0.5 < link["linkage"] <= 1.0 and link["linkage_n"] > 0 and link["linkage_recall"] <= link["linkage"]
    assert "linkage" in _csv(out / "summary.csv")[0]
    assert sum(rec["linkage"]["n_detected"] for rec in load_records(out)) == link["linkage_n"]  # pooled counts

    r = runner.invoke(cli, ["bench", "compare", str(tmp_path / "truth"), str(out), "-o", str(tmp_path / "cmp.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp-crowding.png").stat().st_size > 10_000 and "cmp-crowding.png" in r.output
    # the curves differ where the methods do: truth is perfect, watershed is not on crowded cells
    truth = {x["stratum"]: x for x in _csv(tmp_path / "truth" / "crowding.csv") if x["compartment"] == "cell"}
    ws = {x["stratum"]: x for x in crowd if x["compartment"] == "cell"}
    crowded = [s for s in ("touching=2", "touching=3+") if int(truth[s]["n_true"]) > 0]
    assert crowded and all(float(truth[s]["recall@0.5"]) == 1.0 for s in crowded)
    assert np.mean([float(ws[s]["recall@0.5"]) for s in crowded]) < 1.0


def test_truth_as_prediction_is_perfect_per_stratum_and_border_shrinks_the_count(tmp_path, small_set):
    opts = {"predictions": str(small_set)}
    counts = {}
    for px in (0, 10):
        out = run_bench(small_set, "predictions", tmp_path / f"b{px}", options=opts, progress=False, exclude_border=px)
        records = load_records(out)
        for row in summarise(records, TIERS, n_boot=10):
            assert row["f1@0.5"] == 1.0 and row["linkage"] == 1.0 and row["linkage_recall"] == 1.0
            counts.setdefault(px, {})[(row["compartment"], row["tier"])] = row["n_true"]
        crowd = [r for r in crowding_rows(records) if r["n_true"] > 0]
        assert crowd and all(r["recall@0.5"] == 1.0 and r["merge_rate"] == 0.0 for r in crowd)
    # objects in the 10 px band are gone from truth and prediction alike, so the score stays perfect
    assert all(counts[10][k] < counts[0][k] for k in counts[0] if counts[0][k] > 5)
