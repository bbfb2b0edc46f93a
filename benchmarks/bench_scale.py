"""Cost growth with the number of images: time and peak memory for N = 10, 100, 1000.

Each N runs `cellgen.pipeline.generated_set` (what `cellgen sample` calls) end to end in a
fresh process: an untrained `small128` contour generator (cost does not depend on weight
values), exact masks, the shipped renderer (`checkpoints/renderer-small256.pt`) at 128 px,
density, gaussian + poisson noise, streamed into HDF5; one torch thread, --batch-size 8.
Linear time means a constant time per image; flat memory means the peak resident memory does
not grow with N (the writer streams image by image; only the list of (seed, psi) pairs is
held).

A last run writes N = 100 on 2 local worker processes (`--workers 2`, sharded by batch) and
checks that the merged file has the same sha256 as the 1-process file; on this machine's 2
shared cores it measures the overhead of sharding and merging rather than a speed-up.

    python benchmarks/bench_scale.py            # ~5 minutes on 2 busy cores
    python benchmarks/bench_scale.py --quick    # N = 10, 30, 100

Writes benchmarks/results/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RENDERER = HERE.parent / "checkpoints" / "renderer-small256.pt"


def _setup(threads):
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))


def one(n: int, out: Path, workers: int) -> dict:
    _setup(1)
    from machine import peak_rss_mb, rss_mb

    from cellgen.density import DEFAULT_TIERS
    from cellgen.gen.generator import ContourGenerator
    from cellgen.render.renderer import Renderer

    gen = ContourGenerator.untrained("small128")
    rend = Renderer.load(RENDERER)
    pairs = [(s, 0.7) for s in range(n)]
    kw = dict(pixel_size_um=0.5, batch_size=8, variants=["gaussian", "poisson"], tiers=DEFAULT_TIERS,
              command="bench_scale", progress=False, overwrite=True)
    baseline = rss_mb()
    t0 = time.perf_counter()
    if workers > 1:
        from cellgen.sample_shards import sample_sharded

        path = sample_sharded(out, gen, pairs, renderer=rend, workers=workers, **kw)
    else:
        from cellgen.pipeline import generated_set

        path = generated_set(out, gen, pairs, renderer=rend, **kw)
    seconds = time.perf_counter() - t0
    return {"n": n, "workers": workers, "seconds": seconds, "seconds_per_image": seconds / n,
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_models_mb": round(baseline, 1),
            "file_bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["workers"] == 1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    ns = [r["n"] for r in rows]
    a.loglog(ns, [r["seconds"] for r in rows], "o-", label="measured")
    per = rows[0]["seconds_per_image"]
    a.loglog(ns, [per * n for n in ns], "k--", lw=0.8, label="linear from N=10")
    a.set_xlabel("images N")
    a.set_ylabel("seconds")
    a.legend()
    b.semilogx(ns, [r["peak_rss_mb"] for r in rows], "o-")
    b.set_ylim(0, max(r["peak_rss_mb"] for r in rows) * 1.3)
    b.set_xlabel("images N")
    b.set_ylabel("peak RSS (MiB)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3, metavar=("N", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), Path(args.one[1]), int(args.one[2]))))
        return
    sys.path.insert(0, str(HERE))
    import tempfile

    from machine import machine_info, write_results

    sizes = (10, 30, 100) if args.quick else (10, 100, 1000)
    info = machine_info(threads=1)
    rows = []
    with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
        for n, workers in [(n, 1) for n in sizes] + [(100 if not args.quick else 30, 2)]:
            r = subprocess.run([sys.executable, __file__, "--one", str(n), f"{tmp}/n{n}-w{workers}.h5", str(workers)],
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr)
            row = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps(row))
            rows.append(row)
    single = {r["n"]: r["sha256"] for r in rows if r["workers"] == 1}
    for r in rows:
        if r["workers"] > 1:
            r["same_sha256_as_1_process"] = r["sha256"] == single[r["n"]]
    base = [r for r in rows if r["workers"] == 1]
    summary = {"seconds_per_image": {r["n"]: round(r["seconds_per_image"], 4) for r in base},
               "peak_rss_mb": {r["n"]: r["peak_rss_mb"] for r in base}}
    path = write_results("scale", "generated_set end to end at 128 px: untrained small128 generator + shipped renderer, "
                         "gaussian+poisson variants, HDF5; batch 8, 1 torch thread per process; each N in a fresh process",
                         "python benchmarks/bench_scale.py" + (" --quick" if args.quick else ""), info, rows,
                         summary=summary)
    plot(rows, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
