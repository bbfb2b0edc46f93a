"""Noise variants: stability under a 1-ADU change of the clean image, and time per image.

Issue 12 finds clean images that differ by 1 ADU between CPU instruction sets. This measures
what each noise variant makes of that: +1 ADU on a random 1% of the pixels of a simulated
2 x 256 x 256 clean image, the variant drawn with the same seed on both, and counted

* pixels of the noisy image that changed, and how many of them lie outside the bumped 1%;
* the largest change (ADU);
* seconds per image (one process, one thread).

The camera chain draws per-pixel uniforms from the seed and inverts the Poisson and Gamma
CDFs, so only bumped pixels can change; the classic presets (bytes frozen) use numpy's
samplers, whose stream shifts after a changed draw.

    OMP_NUM_THREADS=1 python benchmarks/bench_noise.py      # ~1 minute

Writes benchmarks/results/noise.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = ("moderate", "poisson", "severe", "ccd-icx285@200", "emccd-ixon888@200", "scmos-orca-fusion@200",
            "cellpose3")


def main(n_images: int = 3) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from machine import machine_info, write_results

    from cellgen import noise
    from cellgen.pipeline import to_uint16
    from cellgen.simulate import SimulationConfig, simulate_image

    info = machine_info(threads=1)
    sims = [simulate_image(s, SimulationConfig(size=256, count=10 + 10 * s)) for s in range(n_images)]
    rows = []
    for name in VARIANTS:
        params = noise.get_preset(name)
        changed, outside, largest, seconds = [], [], [], []
        for sim in sims:
            clean = to_uint16(sim.image)
            idx = np.random.default_rng(0).choice(clean.size, clean.size // 100, replace=False)
            bumped = clean.copy()
            bumped.flat[idx] = np.minimum(bumped.flat[idx].astype(int) + 1, 65535)
            start = time.perf_counter()
            a, _ = noise.apply_noise(clean, params, noise.variant_seed(sim.seed, name), pixel_size_um=0.5, cell=sim.cell)
            seconds.append(time.perf_counter() - start)
            b, _ = noise.apply_noise(bumped, params, noise.variant_seed(sim.seed, name), pixel_size_um=0.5, cell=sim.cell)
            diff = np.flatnonzero(a.ravel() != b.ravel())
            changed.append(diff.size)
            outside.append(len(set(diff.tolist()) - set(idx.tolist())))
            largest.append(int(np.abs(a.astype(int) - b.astype(int)).max()))
        row = {"variant": name, "pixels": int(sims[0].image.size), "bumped": int(sims[0].image.size // 100),
               "changed_mean": float(np.mean(changed)), "changed_outside_bumped_mean": float(np.mean(outside)),
               "max_abs_diff_adu": max(largest), "seconds_per_image": float(np.median(seconds))}
        rows.append(row)
        print(f"{name:<24} changed {row['changed_mean']:9.1f} px (outside bumped {row['changed_outside_bumped_mean']:9.1f}),"
              f" max |diff| {row['max_abs_diff_adu']:5d} ADU, {row['seconds_per_image']:.3f} s/img")
    path = write_results("noise", "noise variants: pixels changed by +1 ADU on 1% of a clean image; s/image",
                         "OMP_NUM_THREADS=1 python benchmarks/bench_noise.py", info, rows)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
