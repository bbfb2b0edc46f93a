"""The same set on every CPU: how much a sampled set moves when the kernels change.

For each kernel setting (the default, oneDNN held to SSE4.1 / AVX2 / AVX-512, ATen's vector
kernels off) and each precision (contour generator, renderer), a fresh process samples the
images of ``cellgen sample --psi 1 --seeds 0-3`` (shipped models, 256 px, Gaussian and
Poisson variants) and the set is compared with the default setting's set of the same
precision: share of pixels that differ and the largest difference per image array, whether
masks are identical, and whether the fingerprint check accepts it as the same set. The
seconds per image of each precision (default setting) give the cost of float64.

    python benchmarks/bench_same_set.py            # about 10 min on 2 busy cores
    python benchmarks/bench_same_set.py --quick    # 2 settings, 2 precisions
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "default": {},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ONEDNN_MAX_CPU_ISA=AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
}
#: (generator, renderer): cellgen 0.1.0 sampled all in float32; the default now is the second
PRECISIONS = [("float32", "float32"), ("float64", "float32"), ("float64", "float64")]

_CHILD = """
import sys, time
from cellgen.defaults import default_checkpoint
from cellgen.gen.generator import ContourGenerator
from cellgen.pipeline import generated_set
from cellgen.render.renderer import Renderer
out, gen_precision, rend_precision = sys.argv[1:4]
g = ContourGenerator.load(default_checkpoint("generator"), precision=gen_precision)
r = Renderer.load(default_checkpoint("renderer"), precision=rend_precision)
start = time.perf_counter()
generated_set(out, g, [(s, 1.0) for s in range(4)], renderer=r, pixel_size_um=0.5, size=256, batch_size=4,
              variants=["gaussian", "poisson"], overwrite=True, progress=False)
print(f"SECONDS {(time.perf_counter() - start) / 4:.4f}")
"""


def _sample(out: Path, precision: tuple[str, str], env: dict) -> float:
    run = subprocess.run([sys.executable, "-c", _CHILD, str(out), *precision], capture_output=True, text=True, check=False,
                         env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env))
    if run.returncode:
        raise SystemExit(f"sampling failed under {env}: {run.stderr.strip().splitlines()[-1]}")
    return float(run.stdout.split("SECONDS")[-1])


def _differences(path: Path, reference: Path) -> dict:
    import h5py
    import numpy as np

    from cellgen.datasets import fingerprint

    row = {}
    with h5py.File(path) as a, h5py.File(reference) as b:
        for name, key in (("images", "clean"), ("noisy/gaussian/images", "gaussian"),
                          ("noisy/poisson/images", "poisson")):
            d = np.abs(a[name][()].astype(np.int64) - b[name][()].astype(np.int64))
            row[f"{key}_pixels_differing"] = float(np.count_nonzero(d) / d.size)
            row[f"{key}_max_diff_adu"] = int(d.max())
        row["masks_identical"] = all(np.array_equal(a[f"masks/{k}"][()], b[f"masks/{k}"][()])
                                     for k in ("semantic", "cell", "nucleus"))
    checks = fingerprint.compare(fingerprint.fingerprint(path), fingerprint.fingerprint(reference))
    row["same_set"] = all(c.ok for c in checks)
    row["not_identical"] = [c.name for c in checks if c.status != "identical"]
    return row


def main() -> None:
    from machine import machine_info, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="default and SSE41 only, two precisions")
    args = parser.parse_args()
    settings = dict(list(SETTINGS.items())[:2]) if args.quick else SETTINGS
    precisions = PRECISIONS[:2] if args.quick else PRECISIONS
    info = machine_info(threads=1)
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            tag = f"generator {precision[0]}, renderer {precision[1]}"
            ref = Path(tmp) / f"{'-'.join(precision)}-default.h5"
            seconds[tag] = _sample(ref, precision, {})
            print(f"{tag}: {seconds[tag]:.2f} s per image", flush=True)
            for name, env in settings.items():
                if not env:
                    continue
                out = Path(tmp) / f"{'-'.join(precision)}-{name}.h5"
                _sample(out, precision, env)
                row = {"precision": tag, "setting": name, **_differences(out, ref)}
                print(row, flush=True)
                rows.append(row)
    base = seconds[f"generator {PRECISIONS[0][0]}, renderer {PRECISIONS[0][1]}"]
    cost = {k: {"seconds_per_image": round(v, 3), "ratio_to_all_float32": round(v / base, 2)}
            for k, v in seconds.items()}
    path = write_results("same_set", __doc__.split("\n\n")[0], " ".join(["python", *sys.argv]), info, rows,
                         cost_per_image=cost)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
