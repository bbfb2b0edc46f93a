"""Sharded sampling and bench (local processes and a Dask LocalCluster) give single-process bytes."""

import csv
import hashlib
import json
import os

import pytest

from cellgen.distributed import plan_shards
from cellgen.sample_shards import sample_part
from tests.cli_runner import run_cli as cli


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_line_error(result, text):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and text in lines[0], result.stderr


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.mark.parametrize("n, shards, align", [(7, 2, 2), (10, 3, 4), (3, 5, 1), (5, 4, 8), (100, 7, 3)])
def test_shard_plan_covers_in_order_aligned_to_batches(n, shards, align):
    plan = plan_shards(n, shards, align)
    assert plan[0][0] == 0 and plan[-1][1] == n
    assert all(a < b for a, b in plan) and all(p[1] == q[0] for p, q in zip(plan, plan[1:]))
    assert all(a % align == 0 for a, _ in plan)
    assert len(plan) == min(shards, -(-n // align))
    sizes = [b - a for a, b in plan[:-1]]  # all but the last shard: whole batches, at most one apart
    assert not sizes or max(sizes) - min(sizes) <= align


def test_sample_on_workers_and_dask_gives_single_process_bytes(models, cluster, tmp_path):
    # 7 images in batches of 2: shards must start on batch boundaries, the last batch is short
    args = ["sample", "--checkpoint", str(models["gen"]), "--renderer", str(models["rend"]), "--psi", "-0.5,1",
            "--seeds", "3-6", "--batch-size", "2", "-q"]
    args[args.index("3-6")] = "3-5,9"  # a list of seeds, not only a range
    r = cli(*args, "-o", "one.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli(*args, "--workers", "2", "-o", "two.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli(*args, "--scheduler", cluster.scheduler_address, "-o", "dask.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "one.h5") == sha(tmp_path / "two.h5") == sha(tmp_path / "dask.h5")
    assert cli("datasets", "verify", "dask.h5", cwd=tmp_path).returncode == 0
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())  # parts are removed after the merge


def test_killed_sharded_sample_resumes_to_the_same_bytes(models, tmp_path):
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.density import DEFAULT_TIERS
    from cellgen.sample_shards import sample_sharded
    from cellgen.gen.generator import ContourGenerator
    from cellgen.pipeline import generated_set
    from cellgen.render.renderer import Renderer

    pairs = [(s, 0.7) for s in range(5)]
    kw = dict(pixel_size_um=0.5, variants=["poisson"], tiers=DEFAULT_TIERS, command="test", progress=False)
    gen, rend = ContourGenerator.load(models["gen"]), Renderer.load(models["rend"])
    ref = generated_set(tmp_path / "ref.h5", gen, pairs, renderer=rend, batch_size=2, **kw)
    out = tmp_path / "out.h5"
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    # as if killed: the first shard of the 2-worker plan finished, a shard of another plan is left
    (a, b), _ = plan_shards(len(pairs), 2, align=2)
    first = sample_part(str(parts / f"part-{a:09d}-{b:09d}.h5"), a, b, str(models["gen"]),
                        str(models["rend"]), "cpu", pairs, dict(kw, batch_size=2))
    stale = parts / "part-000000000-000000004.h5.partial"
    stale.write_bytes(b"left by a run with another number of workers")
    with BenchmarkSet(first) as ds:
        assert ds.n == b - a and json.loads(ds.attrs["recipe"])["part"] == [a, b]
    path = sample_sharded(out, models["gen"], pairs, renderer=models["rend"], batch_size=2, workers=2, **kw)
    assert sha(path) == sha(ref)
    assert not parts.exists()


def test_finished_parts_are_reused_and_checked(models, tmp_path):
    """A part left by an earlier run is not recomputed; one from other options is refused."""
    from cellgen.density import DEFAULT_TIERS
    from cellgen.sample_shards import sample_sharded
    from cellgen.errors import DatasetError

    pairs = [(s, 1.0) for s in range(4)]
    kw = dict(pixel_size_um=0.5, variants=[], tiers=DEFAULT_TIERS, progress=False)
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    sample_part(str(parts / "part-000000000-000000002.h5"), 0, 2, str(models["gen"]), None, "cpu",
                [(s, 0.5) for s in range(4)], dict(kw, batch_size=2))  # psi 0.5, not 1.0
    with pytest.raises(DatasetError, match="other options"):
        sample_sharded(tmp_path / "out.h5", models["gen"], pairs, batch_size=2, workers=2, **kw)
    assert not (tmp_path / "out.h5").exists()


def _rows_without_timing(folder):
    with open(folder / "per_image.csv") as fh:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]
    summary = json.loads((folder / "summary.json").read_text())
    for row in summary["summary"]:
        row.pop("seconds_per_image")
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    for rec in records:
        rec.pop("seconds")
    return rows, summary, records, json.loads((folder / "run.json").read_text())


def test_bench_on_workers_and_dask_gives_single_process_results(small_set, cluster, tmp_path):
    args = ["bench", "--method", "watershed", "--data", str(small_set), "--variant", "gaussian", "--n-boot", "20", "-q"]
    for name, extra in (("one", []), ("two", ["--workers", "2"]), ("dask", ["--scheduler", cluster.scheduler_address])):
        r = cli(*args, *extra, "-o", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    one, two, dask = (_rows_without_timing(tmp_path / n) for n in ("one", "two", "dask"))
    assert len(one[0]) == 9 * 2  # 9 images x 2 compartments
    assert one == two == dask
    assert not (tmp_path / "two" / ".parts").exists()


def test_unreachable_scheduler_is_one_line(small_set, tmp_path):
    env = dict(os.environ, CELLGEN_SCHEDULER_TIMEOUT="2")
    r = cli("bench", "--method", "watershed", "--data", str(small_set), "--scheduler", "tcp://127.0.0.1:9",
            "-o", "r", "-q", cwd=tmp_path, env=env)
    one_line_error(r, "cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'")
