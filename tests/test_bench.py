import json

import numpy as np
import pytest

from cellgen.bench.report import write_reports
from cellgen.bench.runner import load_records, run_bench
from cellgen.datasets.export import export_set
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.errors import CellgenError
from tests.cli_runner import run_cli as cli

TIERS = ["low", "medium", "high"]


def one_line_error(result, text):
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and text in lines[0], result.stderr


def test_truth_scored_against_itself_is_perfect(tmp_path, small_set):
    out = run_bench(small_set, "predictions", tmp_path / "r", options={"predictions": str(small_set)}, progress=False)
    rows = write_reports(out, TIERS, n_boot=50)
    assert {r["tier"] for r in rows} == {*TIERS, "all"}
    assert {r["variant"] for r in rows} == {"clean"}  # the set's own masks cover its clean images
    for r in rows:
        assert r["mIoU"] == 1.0 and r["f1@0.5"] == 1.0 and r["mean_ap"] == 1.0 and r["pq"] == 1.0
        assert r["n_split"] == 0 and r["n_merged"] == 0
    for name in ("per_image.csv", "summary.csv", "summary.json", "summary.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 9 * 2


def test_exported_folder_predictions_with_a_missed_cell(tmp_path, small_set):
    folder = export_set(small_set, tmp_path / "pred", "tiff", variants=["clean"], progress=False)
    import tifffile

    with BenchmarkSet(small_set) as ds:
        target = int(np.argmax(ds.metadata["count"]))
        n_cells = int(ds.metadata["count"][target])
        tier = ds.metadata["tier"][target]
    path = folder / "masks" / "cell" / f"{target:05d}.tif"
    cells = tifffile.imread(path)
    cells[cells == 1] = 0
    tifffile.imwrite(path, cells)
    out = run_bench(small_set, "predictions", tmp_path / "r", options={"predictions": str(folder)},
                    variants=["clean"], progress=False)
    records = {r["index"]: r for r in load_records(out)}
    from cellgen.bench import metrics

    m = metrics.instance_metrics(records[target]["scores"]["cell"][1])
    assert m["fn"][0] == 1 and m["fp"][0] == 0 and m["tp"][0] == n_cells - 1
    rows = write_reports(out, TIERS, n_boot=50)
    hit = [r for r in rows if r["tier"] == tier and r["compartment"] == "cell"][0]
    assert hit["recall@0.5"] < 1.0 and hit["precision@0.5"] == 1.0
    nuc = [r for r in rows if r["tier"] == tier and r["compartment"] == "nucleus"][0]
    assert nuc["f1@0.5"] == 1.0


def test_watershed_end_to_end_cli_prints_per_tier_table(tmp_path, small_set):
    r = cli("bench", "--method", "watershed", "--data", str(small_set), "-o", str(tmp_path / "ws"),
            "--variant", "clean", "--variant", "poisson", "--n-boot", "50", "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for tier in TIERS:
        assert any(ln.split()[:3] == ["cell", "clean", tier] for ln in lines), r.stdout
        assert any(ln.split()[:3] == ["nucleus", "poisson", tier] for ln in lines)
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    clean_all = [s for s in summary["summary"] if s["tier"] == "all" and s["variant"] == "clean"
                 and s["compartment"] == "nucleus"][0]
    assert 0.5 < clean_all["f1@0.5"] <= 1.0
    assert clean_all["f1@0.5_ci_low"] <= clean_all["f1@0.5"] <= clean_all["f1@0.5_ci_high"]


def test_bench_resumes_and_refuses_foreign_results(tmp_path, small_set):
    out = tmp_path / "r"
    run_bench(small_set, "watershed", out, variants=["clean"], progress=False)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 9
    # a crash mid-line leaves the last record half written
    (out / "records.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    run_bench(small_set, "watershed", out, variants=["clean"], progress=False)
    again = load_records(out)
    assert sorted(r["index"] for r in again) == list(range(9))
    with pytest.raises(CellgenError, match="different bench run"):
        run_bench(small_set, "watershed", out, variants=["poisson"], progress=False)


def test_sharded_scoring_gives_the_same_scores(tmp_path, small_set, monkeypatch):
    from cellgen.bench import shards

    a = run_bench(small_set, "watershed", tmp_path / "a", variants=["gaussian"], tiers=["high"], progress=False)
    asked = []
    real = shards.score_units_sharded

    def in_process(*args, workers, scheduler, **kw):  # the shard path, its workers run here
        asked.append(workers)
        return real(*args, workers=1, scheduler=scheduler, **kw)

    monkeypatch.setattr(shards, "score_units_sharded", in_process)
    b = run_bench(small_set, "watershed", tmp_path / "b", variants=["gaussian"], tiers=["high"], workers=2,
                  progress=False)
    assert asked == [2] and not (b / shards.PARTS).exists()
    ra, rb = write_reports(a, TIERS, n_boot=50), write_reports(b, TIERS, n_boot=50)
    strip = [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in ra]
    assert strip == [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rb]


def test_compare_two_methods(tmp_path, small_set):
    for method, extra in (("watershed", []), ("predictions", ["--predictions", str(small_set)])):
        r = cli("bench", "--method", method, "--data", str(small_set), "-o", str(tmp_path / method),
                "--variant", "clean", "--n-boot", "20", "-q", *extra)
        assert r.returncode == 0, r.stderr
    r = cli("bench", "compare", str(tmp_path / "watershed"), str(tmp_path / "predictions"),
            "-o", str(tmp_path / "cmp.png"), "--csv", str(tmp_path / "cmp.csv"))
    assert r.returncode == 0, r.stderr
    assert "watershed" in r.stdout and "predictions" in r.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert len((tmp_path / "cmp.csv").read_text().splitlines()) == 1 + 2 * 2 * 4


def test_bench_errors_are_one_line(tmp_path, small_set):
    one_line_error(cli("bench", "--method", "magic", "--data", str(small_set)), "unknown method 'magic'")
    one_line_error(cli("bench", "--method", "watershed", "--data", str(small_set), "--variant", "severe",
                       "-o", str(tmp_path / "x")), "no image variant 'severe'")
    one_line_error(cli("bench", "--method", "watershed", "--data", str(tmp_path / "none.h5")), "no such file")
    one_line_error(cli("bench", "--method", "predictions", "--data", str(small_set)), "--predictions")
    one_line_error(cli("bench", "--method", "watershed"), "needs --method and --data")
    one_line_error(cli("bench", "compare", str(tmp_path)), "no summary.json")


def test_real_dsb_reference_set_scores_nuclei_only(tmp_path):
    pytest.importorskip("stardist", reason="the DSB reference image ships in the stardist package")
    r = cli("datasets", "real", "dsb2018", "-o", str(tmp_path / "dsb.h5"))
    assert r.returncode == 0, r.stderr
    with BenchmarkSet(tmp_path / "dsb.h5") as ds:
        assert ds.metadata["count"][0] == 125 and ds.metadata["source"][0] == "real:dsb2018"
        assert "Data Science Bowl" in ds.attrs["attribution"]
    out = run_bench(tmp_path / "dsb.h5", "watershed", tmp_path / "r", progress=False)
    rows = write_reports(out, TIERS, n_boot=20)
    assert {r["compartment"] for r in rows} == {"nucleus"}
    assert [r for r in rows if r["tier"] == "all"][0]["f1@0.5"] > 0.5
