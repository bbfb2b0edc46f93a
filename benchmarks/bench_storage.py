"""Writing a set as one HDF5 file vs as PNG files (the reference paper's release format).

The same samples (simulated 256x256 images with exact masks and the gaussian and poisson
noise variants, made once and held in memory) are written

* as a cellgen HDF5 set, through `BenchmarkWriter` (gzip 4 + shuffle, one chunk per image,
  streamed with a flush per image so a crash keeps what is written);
* as PNG files in the layout of `cellgen export --format png` (16-bit RGB image per variant,
  8-bit semantic mask, 16-bit cell and nucleus id maps; each file written atomically).

Only writing is timed (best of 3 repeats); bytes are the sizes of the files written.

    python benchmarks/bench_storage.py          # ~1 minute

Writes benchmarks/results/storage.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def samples(n: int, size: int):
    from cellgen import noise
    from cellgen.density import DEFAULT_TIERS
    from cellgen.masks import Masks
    from cellgen.pipeline import SourceItem, make_sample
    from cellgen.simulate import SimulationConfig, simulate_image

    cfg = SimulationConfig(size=size, count=(5, 45), touching=0.6)
    params = {v: noise.get_preset(v) for v in ("gaussian", "poisson")}
    out = []
    for s in range(n):
        sim = simulate_image(s, cfg)
        item = SourceItem(Masks(sim.semantic, sim.cell, sim.nucleus), sim.image, s)
        out.append(make_sample(item, cfg.pixel_size_um, DEFAULT_TIERS, params))
    return out, params, cfg


def write_h5(path, data, params, cfg):
    from cellgen.datasets.h5 import BenchmarkWriter
    from cellgen.density import DEFAULT_TIERS

    with BenchmarkWriter(path, len(data), (cfg.size, cfg.size), pixel_size_um=cfg.pixel_size_um,
                         tier_scheme=DEFAULT_TIERS, variants={k: v.to_json() for k, v in params.items()},
                         recipe={"benchmark": "storage"}) as w:
        for i, s in enumerate(data):
            w.write(i, s)
        return [w.finish()]


def write_png(folder: Path, data):
    from cellgen.datasets.export import _write_image, _write_labels, mask_file

    files = []
    for i, s in enumerate(data):
        for v, img in [("clean", s.image)] + [(k, a) for k, (a, _) in s.noisy.items()]:
            p = (folder / "images" if v == "clean" else folder / "noisy" / v) / f"{i:05d}.png"
            _write_image(p, img, "png")
            files.append(p)
        for kind in ("semantic", "cell", "nucleus"):
            p = mask_file(folder, kind, i, "png")
            _write_labels(p, getattr(s.masks, kind), "png")
            files.append(p)
    return files


def timed(fn, repeat=3):
    best, result = float("inf"), None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=HERE.parent) as tmp:
            t = time.perf_counter()
            files = fn(Path(tmp))
            best = min(best, time.perf_counter() - t)
            result = (len(files), sum(f.stat().st_size for f in files))
    return best, result


def main():
    sys.path.insert(0, str(HERE))
    from machine import machine_info

    import torch

    torch.set_num_threads(1)
    n, size = 50, 256
    data, params, cfg = samples(n, size)
    raw = sum(s.image.nbytes + sum(a.nbytes for a, _ in s.noisy.values()) + s.masks.semantic.nbytes
              + s.masks.cell.nbytes + s.masks.nucleus.nbytes for s in data)
    t_h5, (nf_h5, b_h5) = timed(lambda d: write_h5(d / "set.h5", data, params, cfg))
    t_png, (nf_png, b_png) = timed(lambda d: write_png(d / "png", data))
    rows = {"hdf5": {"seconds": t_h5, "ms_per_image": 1e3 * t_h5 / n, "files": nf_h5, "bytes": b_h5},
            "png": {"seconds": t_png, "ms_per_image": 1e3 * t_png / n, "files": nf_png, "bytes": b_png}}
    result = {"what": f"{n} simulated {size}x{size} images, variants clean+gaussian+poisson, masks semantic/cell/"
                      "nucleus; in-memory arrays written as one HDF5 set vs PNG files",
              "command": "python benchmarks/bench_storage.py", "machine": machine_info(threads=1),
              "uncompressed_bytes": raw, "results": rows,
              "png_over_hdf5_time": t_png / t_h5, "png_over_hdf5_bytes": b_png / b_h5}
    print(json.dumps(result, indent=2))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "storage.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
