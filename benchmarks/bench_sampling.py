"""Sampling throughput (images/s) and peak memory vs batch size and resolution, on this CPU.

The whole `cellgen sample` path is timed: contour generator -> exact masks -> renderer ->
density and tier -> noise variants (clean, gaussian, poisson) -> HDF5, through
`cellgen.pipeline.generated_set`, the function the command calls. Stage times (generator,
renderer) are measured separately on the same inputs.

The generator is an *untrained* network of the shipped presets (`small128`, `small256`):
the cost of a forward pass does not depend on the weight values, only on the architecture.
The renderer is the shipped `checkpoints/renderer-small256.pt` (it renders any multiple of
its downsampling factor, so 128 px as well). Each configuration runs in a fresh process, so
its peak resident memory (VmHWM) is its own.

    python benchmarks/bench_sampling.py              # ~5 minutes on 2 busy cores
    python benchmarks/bench_sampling.py --quick      # fewer images, for a smoke run

Writes benchmarks/results/sampling.json and sampling.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RENDERER = HERE.parent / "checkpoints" / "renderer-small256.pt"


def one(preset: str, batch: int, n: int, threads: int) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    from machine import peak_rss_mb, reset_peak_rss, rss_mb

    from cellgen.density import DEFAULT_TIERS
    from cellgen.density_control import masks_from_scores
    from cellgen.gen.generator import ContourGenerator
    from cellgen.pipeline import generated_set
    from cellgen.render.renderer import Renderer

    gen = ContourGenerator.untrained(preset)
    rend = Renderer.load(RENDERER)
    pairs = [(s, 0.7) for s in range(n)]
    # warm-up (first-call allocations and kernel selection) on other seeds
    with tempfile.TemporaryDirectory() as tmp:
        generated_set(Path(tmp) / "w.h5", gen, [(10_000 + s, 0.7) for s in range(batch)], renderer=rend,
                      pixel_size_um=0.5, batch_size=batch, variants=["gaussian", "poisson"], progress=False)
    baseline = rss_mb()
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = generated_set(Path(tmp) / "s.h5", gen, pairs, renderer=rend, pixel_size_um=0.5, batch_size=batch,
                            variants=["gaussian", "poisson"], tiers=DEFAULT_TIERS, progress=False)
        total = time.perf_counter() - t0
        size_bytes = out.stat().st_size
    peak = peak_rss_mb()
    # stage costs on the same seeds and batches
    ws = gen.truncate(gen.w_from_seeds([s for s, _ in pairs]), 0.7)
    t0 = time.perf_counter()
    scores = [gen.label_maps_from_w(ws[i:i + batch]) for i in range(0, n, batch)]
    t_gen = time.perf_counter() - t0
    masks = [m for s in scores for m in masks_from_scores(s)]
    import numpy as np

    sem, cell, nuc = (np.stack([getattr(m, k) for m in masks]) for k in ("semantic", "cell", "nucleus"))
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        rend.render_batch(sem[i:i + batch], cell[i:i + batch], nuc[i:i + batch], batch_size=batch)
    t_rend = time.perf_counter() - t0
    return {"preset": preset, "resolution": gen.resolution, "batch_size": batch, "images": n, "threads": threads,
            "images_per_s": n / total, "seconds_per_image": total / n,
            "generator_s_per_image": t_gen / n, "renderer_s_per_image": t_rend / n,
            "peak_rss_mb": round(peak, 1), "rss_before_mb": round(baseline, 1),
            "peak_over_baseline_mb": round(peak - baseline, 1), "file_bytes": size_bytes}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for res in sorted({r["resolution"] for r in rows}):
        sel = [r for r in rows if r["resolution"] == res and r["threads"] == 1]
        a.plot([r["batch_size"] for r in sel], [r["images_per_s"] for r in sel], "o-", label=f"{res} px")
        b.plot([r["batch_size"] for r in sel], [r["peak_rss_mb"] for r in sel], "o-", label=f"{res} px")
    for ax, lab in ((a, "images / s (whole pipeline, 1 thread)"), (b, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("--batch-size")
        ax.set_ylabel(lab)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=4, metavar=("PRESET", "BATCH", "N", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.one:
        p, b, n, t = args.one
        print(json.dumps(one(p, int(b), int(n), int(t))))
        return
    sys.path.insert(0, str(HERE))
    from machine import machine_info, write_results

    n = 8 if args.quick else 32
    configs = [(p, b, 1) for p in ("small128", "small256") for b in (1, 2, 4, 8, 16)]
    configs += [("small256", 1, 2), ("small256", 8, 2)]  # both cores, on a machine whose cores are busy
    info = machine_info(threads=1)
    rows = []
    for preset, batch, threads in configs:
        r = subprocess.run([sys.executable, __file__, "--one", preset, str(batch), str(n), str(threads)],
                           capture_output=True, text=True, check=True)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(row))
        rows.append(row)
    path = write_results("sampling", "cellgen.pipeline.generated_set end to end (generator, masks, renderer, density, "
                         "noise variants gaussian+poisson, HDF5), untrained generator of each preset + shipped renderer",
                         "python benchmarks/bench_sampling.py" + (" --quick" if args.quick else ""), info, rows)
    plot(rows, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
