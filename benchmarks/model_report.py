"""Quality report of a contour generator and a renderer against their training corpus.

    python benchmarks/model_report.py --generator G.pt --renderer R.pt --data corpus.h5 \
        --heldout heldout.h5 -o docs/reports/small256

Writes ``report.json``, ``report.md`` and figures into the output folder:

* contours: cell count per image and cell / nucleus area distributions of generated masks
  (psi = 1) against the training masks, with two-sample KS statistics; the share of
  generated label maps that give valid masks; density range across psi in
  {-1, -0.5, 0, 0.5, 1}; psi-sweep and density-direction monotonic fractions;
* rendering: ``cellgen.render.evaluate.evaluate_renderer`` on held-out masks (the paper's
  Table 3 metrics) and intensity statistics;
* speed: seconds per 256 x 256 image for contours + masks + render + noise on this CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from cellgen import noise
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.density_control import (
    direction_sweep,
    fit_density_direction,
    masks_from_scores,
    monotonic_fraction,
    psi_sweep,
)
from cellgen.gen.generator import ContourGenerator
from cellgen.masks import validate
from cellgen.pipeline import to_uint16
from cellgen.preview import composite, outlined, semantic_rgb

PSIS = [-1.0, -0.5, 0.0, 0.5, 1.0]


def mask_stats(masks_list, pixel_size):
    counts, cell_areas, nuc_areas = [], [], []
    for m in masks_list:
        counts.append(int(m.cell.max(initial=0)))
        a = np.bincount(m.cell.ravel())[1:]
        n = np.bincount(m.nucleus.ravel())[1:]
        cell_areas += (a[a > 0] * pixel_size**2).tolist()
        nuc_areas += (n[n > 0] * pixel_size**2).tolist()
    return np.array(counts), np.array(cell_areas), np.array(nuc_areas)


def ks(a, b):
    if len(a) == 0 or len(b) == 0:
        return {"statistic": float("nan"), "pvalue": float("nan")}
    r = ks_2samp(a, b)
    return {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}


def contour_section(gen, data, n, out, pixel_size):
    with BenchmarkSet(data) as ds:
        idx = np.linspace(0, ds.n - 1, min(n, ds.n)).round().astype(int)
        real = [ds.masks(int(i)) for i in idx]
    t = time.perf_counter()
    scores = np.concatenate([gen.label_maps(list(range(s, min(s + 16, n))), psi=1.0) for s in range(0, n, 16)])
    fake = masks_from_scores(scores)
    gen_seconds = (time.perf_counter() - t) / n
    valid = float(np.mean([validate(m.cell, m.nucleus, m.semantic) == [] and m.count > 0 for m in fake]))
    rc, ra, rn = mask_stats(real, pixel_size)
    fc, fa, fn = mask_stats(fake, pixel_size)
    per_psi = {}
    for psi in PSIS:
        ms = masks_from_scores(gen.label_maps(list(range(32)), psi=psi))
        c = [m.count for m in ms]
        per_psi[str(psi)] = {"count_min": int(min(c)), "count_max": int(max(c)), "count_mean": float(np.mean(c))}
    sweep_seeds = list(range(30))
    table = psi_sweep(gen, sweep_seeds, PSIS, pixel_size)
    direction = fit_density_direction(gen, range(1000, 1100), pixel_size)
    dtable = direction_sweep(gen, direction, sweep_seeds, [-3, -1.5, 0, 1.5, 3], pixel_size)
    _figure_contours(out / "contours.png", real[:6], fake[:6], (rc, ra, rn), (fc, fa, fn))
    return {
        "n_generated": n, "n_training_masks": len(real),
        "valid_fraction": valid,
        "count": {"training_mean": float(rc.mean()), "generated_mean": float(fc.mean()), "ks": ks(rc, fc)},
        "cell_area_um2": {"training_median": float(np.median(ra)), "generated_median": float(np.median(fa))
                          if len(fa) else float("nan"), "ks": ks(ra, fa)},
        "nucleus_area_um2": {"training_median": float(np.median(rn)), "generated_median": float(np.median(fn))
                             if len(fn) else float("nan"), "ks": ks(rn, fn)},
        "count_by_psi": per_psi,
        "psi_monotonic_fraction": monotonic_fraction(table),
        "direction_monotonic_fraction": monotonic_fraction(dtable),
        "direction_fit_r2": direction.r2,
        "seconds_per_label_map": gen_seconds,
    }


def _figure_contours(path, real, fake, rstats, fstats):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 6, figsize=(13, 7))
    for j in range(6):
        for row, ms, name in ((0, real, "training"), (1, fake, "generated")):
            ax = axes[row, j]
            ax.set_axis_off()
            if j < len(ms):
                m = ms[j]
                ax.imshow(outlined(semantic_rgb(m.semantic), m.cell, m.nucleus))
                ax.set_title(f"{name}: {m.count} cells", fontsize=8)
    for j, (name, r, f) in enumerate(zip(("cells per image", "cell area (um^2)", "nucleus area (um^2)"),
                                         rstats, fstats)):
        ax = axes[2, j * 2]
        ax.hist([r, f], bins=20, label=["training", "generated"], density=True)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=7)
        axes[2, j * 2 + 1].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_section(renderer_path, data, heldout, out):
    from cellgen.render.evaluate import evaluate_renderer
    from cellgen.render.renderer import Renderer

    rend = Renderer.load(renderer_path)
    result = evaluate_renderer(rend, data, heldout=heldout, out_dir=out, progress=True)
    return rend, result


def speed_section(gen, rend, heldout):
    """Seconds per image of each stage on this CPU: label map + exact masks, rendering, noise."""
    n = 8
    t = time.perf_counter()
    masks_from_scores(gen.label_maps(list(range(n)), psi=0.5))
    contours = (time.perf_counter() - t) / n
    with BenchmarkSet(heldout) as ds:
        ms = [ds.masks(i) for i in range(n)]
    t = time.perf_counter()
    images = rend.render_batch(np.stack([m.semantic for m in ms]), np.stack([m.cell for m in ms]),
                               np.stack([m.nucleus for m in ms]))
    render = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i, im in enumerate(images):
        noise.apply_noise(to_uint16(im), noise.get_preset("poisson"), noise.variant_seed(i, "poisson"))
    noisy = (time.perf_counter() - t) / n
    import torch

    return {"contours_s_per_image": contours, "contour_resolution": gen.resolution,
            "render_s_per_image": render, "render_resolution": int(images.shape[-1]), "noise_s_per_image": noisy,
            "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}


def fig4(gen, rend, path, seeds=(0, 1, 2), render: bool = True):
    """Like the paper's Fig. 4: contours (and rendered images) across psi for a few seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if render else 1
    fig, axes = plt.subplots(rows * len(seeds), len(PSIS), figsize=(2.4 * len(PSIS), 2.3 * rows * len(seeds)),
                             squeeze=False)
    for i, seed in enumerate(seeds):
        for j, psi in enumerate(PSIS):
            m = masks_from_scores(gen.label_maps([seed], psi=psi))[0]
            ax = axes[rows * i, j]
            ax.imshow(outlined(semantic_rgb(m.semantic), m.cell, m.nucleus))
            ax.set_title(f"seed {seed}, psi {psi:g}: {m.count} cells", fontsize=7)
            ax.set_axis_off()
            if render:
                axes[rows * i + 1, j].imshow(composite(rend.render(m.semantic, m.cell, m.nucleus)))
                axes[rows * i + 1, j].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_markdown(report: dict, path: Path):
    c, r, sp = report["contours"], report["rendering"], report["speed"]
    gi, ri = report["generator"]["info"], report["renderer"]["info"]
    lines = [
        "# Model quality report",
        "",
        f"Generator `{Path(report['generator']['path']).name}` (sha256 `{report['generator']['sha256'][:16]}...`): "
        f"{gi.get('kimg')} kimg, {gi.get('steps')} steps, batch {gi.get('batch')}, {gi.get('wall_time_s')} s on "
        f"{gi.get('device')}.",
        f"Renderer `{Path(report['renderer']['path']).name}` (sha256 `{report['renderer']['sha256'][:16]}...`): "
        f"{ri.get('steps')} steps, {ri.get('wall_time_s', ri.get('wall_s', '?'))} s on {ri.get('device')}.",
        "",
        "## Contours: generated (psi = 1) vs training masks",
        "",
        "| quantity | training | generated | KS statistic | KS p |",
        "|---|---|---|---|---|",
        f"| cells per image (mean) | {c['count']['training_mean']:.1f} | {c['count']['generated_mean']:.1f} "
        f"| {c['count']['ks']['statistic']:.3f} | {c['count']['ks']['pvalue']:.2g} |",
        f"| cell area, um^2 (median) | {c['cell_area_um2']['training_median']:.0f} | "
        f"{c['cell_area_um2']['generated_median']:.0f} | {c['cell_area_um2']['ks']['statistic']:.3f} | "
        f"{c['cell_area_um2']['ks']['pvalue']:.2g} |",
        f"| nucleus area, um^2 (median) | {c['nucleus_area_um2']['training_median']:.0f} | "
        f"{c['nucleus_area_um2']['generated_median']:.0f} | {c['nucleus_area_um2']['ks']['statistic']:.3f} | "
        f"{c['nucleus_area_um2']['ks']['pvalue']:.2g} |",
        "",
        f"Label maps giving at least one valid cell: {100 * c['valid_fraction']:.0f}% of {c['n_generated']}.",
        "",
        "| psi | " + " | ".join(c["count_by_psi"]) + " |",
        "|---|" + "---|" * len(c["count_by_psi"]),
        "| cells per image, min-max (mean) | " + " | ".join(
            f"{v['count_min']}-{v['count_max']} ({v['count_mean']:.1f})" for v in c["count_by_psi"].values()) + " |",
        "",
        f"Seeds whose cell count changes monotonically with psi in {{-1, -0.5, 0, 0.5, 1}}: "
        f"{100 * c['psi_monotonic_fraction']:.0f}%; along the W density direction (fit R^2 "
        f"{c['direction_fit_r2']:.2f}): {100 * c['direction_monotonic_fraction']:.0f}%.",
        "",
        "![contours](contours.png)",
        "",
        "![psi](fig4_psi.png)",
        "",
        "## Rendering fidelity (the paper's Table 3 protocol, on held-out masks)",
        "",
        "| images segmented | compartment | aAcc | mIoU | mAcc | mDice | mPrecision | mRecall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ("aAcc", "mIoU", "mAcc", "mDice", "mPrecision", "mRecall")
    for name in ("real", "rendered"):
        for comp in ("cell", "nucleus"):
            m = r.get(name, {}).get(comp)
            if m:
                lines.append(f"| {name} | {comp} | " + " | ".join(f"{100 * m[k]:.2f}" for k in keys) + " |")
    lines += ["| paper, Pix2PixHD | | 95.16 | 88.27 | 94.44 | 93.72 | 93.04 | 94.44 |", "",
              "![rendering](render_eval.png)", "",
              "## Speed on this CPU (seconds per image)", "",
              f"contour label map + exact masks at {sp['contour_resolution']} px: {sp['contours_s_per_image']:.3f}; "
              f"rendering at {sp['render_resolution']} px: {sp['render_s_per_image']:.3f}; Poisson noise: "
              f"{sp['noise_s_per_image']:.4f} ({sp['cpu']}, {sp['torch_threads']} torch thread(s)).", ""]
    path.write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--data", required=True, help="the generator's training corpus (HDF5)")
    ap.add_argument("--render-data", help="the renderer's training pairs (HDF5) [default: --data]")
    ap.add_argument("--heldout", required=True, help="held-out image+mask pairs (HDF5) for rendering fidelity")
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("--no-render-figure", action="store_true",
                    help="contours only in fig4 (when generator and renderer differ in pixel size)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    gen = ContourGenerator.load(args.generator)
    with BenchmarkSet(args.data) as ds:
        pixel_size = ds.pixel_size_um
    report = {"generator": {"path": args.generator, "sha256": gen.sha256, "info": gen.info},
              "contours": contour_section(gen, args.data, args.n, out, pixel_size)}
    rend, rendering = render_section(args.renderer, args.render_data or args.data, args.heldout, out)
    report["renderer"] = {"path": args.renderer, "sha256": rend.sha256, "info": rend.info}
    report["rendering"] = rendering
    report["speed"] = speed_section(gen, rend, args.heldout)
    fig4(gen, rend, out / "fig4_psi.png", render=not args.no_render_figure)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    write_markdown(report, out / "report.md")
    print(json.dumps({k: report[k] for k in ("contours", "speed")}, indent=2, default=float))


if __name__ == "__main__":
    main()
