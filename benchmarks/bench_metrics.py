"""Instance-metric speed: cellgen.bench.metrics vs cellpose.metrics.average_precision.

Same label images for both (simulated 512x512, tens to hundreds of cells, predictions made
by eroding/shifting/dropping truth objects); both compute matches at the same IoU thresholds
(0.5:0.05:0.95), in the same process, one after the other, so the ratio is measured in one
run on one machine state. Each is warmed up first (CellPose's overlap counter is compiled by
numba on its first call); times are the best of 5 repeats over 8 images per class. cellgen's
`instance_counts` computes more than CellPose's `average_precision` (also PQ, SEG,
split/merge counts), and the APs must agree (`max_abs_ap_difference`).

Prints one JSON line per image class and writes benchmarks/results/metrics_speed.json.

    python benchmarks/bench_metrics.py        # ~30 seconds
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellgen.bench import metrics
from cellgen.masks import relabel_sequential
from cellgen.simulate import SimulationConfig, simulate_image


def prediction_from(truth: np.ndarray, rng) -> np.ndarray:
    pred = ndi.grey_erosion(truth, size=(3, 3)) * (ndi.binary_erosion(truth > 0))
    pred = np.roll(pred, rng.integers(-2, 3), axis=1)
    drop = rng.random(truth.max() + 1) < 0.05
    pred[drop[pred]] = 0
    return relabel_sequential(pred).astype(np.int32)  # cellpose counts objects by max id


def timed(fn, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    import torch

    torch.set_num_threads(1)  # neither metric uses torch; keeps CellPose's import from taking both cores
    from cellpose import metrics as cp_metrics

    rng = np.random.default_rng(0)
    thresholds = metrics.THRESHOLDS
    results = []
    for count, radius in ((30, 9.0), (120, 5.0), (300, 3.2)):
        cfg = SimulationConfig(size=512, count=count, cell_radius_um=radius, touching=0.9)
        truths = [simulate_image(s, cfg).cell.astype(np.int32) for s in range(8)]
        preds = [prediction_from(t, rng) for t in truths]
        metrics.instance_counts(truths[0], preds[0])  # warm-up: numba compiles CellPose's kernel here
        cp_metrics.average_precision(truths[:1], preds[:1], threshold=list(thresholds))
        ours = timed(lambda: [metrics.instance_counts(t, p) for t, p in zip(truths, preds)])
        theirs = timed(lambda: cp_metrics.average_precision(truths, preds, threshold=list(thresholds)))
        # same answer, not only the same speed
        ap_ours = np.array([metrics.instance_metrics(metrics.instance_counts(t, p))["ap"] for t, p in zip(truths, preds)])
        ap_theirs = cp_metrics.average_precision(truths, preds, threshold=list(thresholds))[0]
        row = {"cells": count, "images": len(truths), "size": 512, "cellgen_s_per_image": ours / len(truths),
               "cellpose_s_per_image": theirs / len(truths), "speedup": theirs / ours,
               "max_abs_ap_difference": float(np.abs(ap_ours - ap_theirs).max())}
        print(json.dumps(row))
        results.append(row)
    out = Path(__file__).parent / "results" / "metrics_speed.json"
    out.parent.mkdir(exist_ok=True)
    from importlib.metadata import version

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import machine_info

    out.write_text(json.dumps({"command": "python benchmarks/bench_metrics.py",
                               "machine": machine_info(threads=1), "cellpose": version("cellpose"),
                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
