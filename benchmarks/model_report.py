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
* feature-space Fréchet distance (``cellgen.quality``) per density tier: a set sampled with
  the public pipeline (``cellgen.pipeline.generated_set``, psi = 1, at the size
  ``cellgen sample`` uses) against the training corpora, masks against ``--data`` and
  images against ``--render-data``; FD-EffNetLite0 always, the standard FID as well with
  ``--inception-weights``;
* density: cell count range and tier populations across psi in {-1, -0.5, 0, 0.5, 1};
* ``fig4_psi.png``, like the paper's Fig. 4: rows of seeds, columns of psi, the label map
  and the rendered image;
* speed: seconds for one image (contours + masks + render + Poisson noise, written to a
  set) through ``generated_set`` on this CPU, median of repeats after a warm-up, with the
  CPU model and thread count.

Set ``OMP_NUM_THREADS`` (1 on a shared machine); the report records the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from cellgen import density, noise
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
from cellgen.pipeline import generated_set, to_uint16
from cellgen.preview import composite, outlined, semantic_rgb
from cellgen.quality import report_rows
from machine import cpu_model  # benchmarks/machine.py: scripts here run with their folder on sys.path

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


def contour_section(gen, data, n, out, pixel_size, size=None, psi_seeds=48, noise_mode="random"):
    with BenchmarkSet(data) as ds:
        idx = np.linspace(0, ds.n - 1, min(n, ds.n)).round().astype(int)
        real = [ds.masks(int(i)) for i in idx]
    t = time.perf_counter()
    scores = np.concatenate([gen.label_maps(list(range(s, min(s + 16, n))), psi=1.0, noise_mode=noise_mode)
                             for s in range(0, n, 16)])
    fake = masks_from_scores(scores)
    gen_seconds = (time.perf_counter() - t) / n
    valid = float(np.mean([validate(m.cell, m.nucleus, m.semantic) == [] and m.count > 0 for m in fake]))
    rc, ra, rn = mask_stats(real, pixel_size)
    fc, fa, fn = mask_stats(fake, pixel_size)
    # density across psi on masks as `cellgen sample` makes them: label maps resampled to the
    # output size, density measured at that size's pixel size, tiers by the default scheme
    size = int(size or gen.resolution)
    out_px = pixel_size * gen.resolution / size
    tiers = density.DEFAULT_TIERS
    per_psi = {}
    seeds = list(range(psi_seeds))
    for psi in PSIS:
        scores = np.concatenate([gen.label_maps(seeds[s:s + 16], psi=psi, output_size=size, noise_mode=noise_mode)
                                 for s in range(0, len(seeds), 16)])
        measures = [density.measure(m.cell, out_px) for m in masks_from_scores(scores)]
        c = [int(m["count"]) for m in measures]
        names = [tiers.assign(m[tiers.measure]) for m in measures]
        per_psi[str(psi)] = {"count_min": int(min(c)), "count_max": int(max(c)), "count_mean": float(np.mean(c)),
                             "tiers": {t: names.count(t) for t in tiers.names}}
    all_tiers = {t: sum(v["tiers"][t] for v in per_psi.values()) for t in tiers.names}
    sweep_seeds = list(range(30))
    table = psi_sweep(gen, sweep_seeds, PSIS, pixel_size, noise_mode=noise_mode)
    direction = fit_density_direction(gen, range(1000, 1100), pixel_size, noise_mode=noise_mode)
    dtable = direction_sweep(gen, direction, sweep_seeds, [-3, -1.5, 0, 1.5, 3], pixel_size, noise_mode=noise_mode)
    _figure_contours(out / "contours.png", real[:6], fake[:6], (rc, ra, rn), (fc, fa, fn))
    return {
        "noise_mode": noise_mode, "n_generated": n, "n_training_masks": len(real),
        "valid_fraction": valid,
        "count": {"training_mean": float(rc.mean()), "generated_mean": float(fc.mean()), "ks": ks(rc, fc)},
        "cell_area_um2": {"training_median": float(np.median(ra)), "generated_median": float(np.median(fa))
                          if len(fa) else float("nan"), "ks": ks(ra, fa)},
        "nucleus_area_um2": {"training_median": float(np.median(rn)), "generated_median": float(np.median(fn))
                             if len(fn) else float("nan"), "ks": ks(rn, fn)},
        "count_by_psi": per_psi,
        "psi_density": {"seeds": psi_seeds, "size": size, "pixel_size_um": out_px, "tier_scheme": json.loads(tiers.to_json()),
                        "count_range": [min(v["count_min"] for v in per_psi.values()),
                                        max(v["count_max"] for v in per_psi.values())],
                        "tier_population": all_tiers},
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


def _timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Median (and range) of wall seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "max_s": float(max(times)),
            "repeats": repeats, "warmup": warmup}


def speed_section(gen, rend, size, pixel_size, repeats: int = 7):
    """Seconds for ONE image on this CPU, end to end through the public pipeline
    (``generated_set``: label map -> exact masks -> render -> Poisson noise -> HDF5), and
    per stage; each the median of ``repeats`` after a warm-up call."""
    import torch

    seed, psi = 0, 0.5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one.h5"
        total = _timed(lambda: generated_set(path, gen, [(seed, psi)], renderer=rend, pixel_size_um=pixel_size,
                                             batch_size=1, size=size, variants=["poisson"], overwrite=True,
                                             progress=False), repeats)
    scores = gen.label_maps([seed], psi=psi, output_size=size)
    contours = _timed(lambda: masks_from_scores(gen.label_maps([seed], psi=psi, output_size=size)), repeats)
    m = masks_from_scores(scores)[0]
    render = _timed(lambda: rend.render(m.semantic, m.cell, m.nucleus), repeats)
    image = to_uint16(rend.render(m.semantic, m.cell, m.nucleus))
    noisy = _timed(lambda: noise.apply_noise(image, noise.get_preset("poisson"), noise.variant_seed(seed, "poisson")),
                   repeats)
    return {"image_size": size, "contour_resolution": gen.resolution, "seed": seed, "psi": psi,
            "total": total, "contours": contours, "render": render, "noise": noisy,
            "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "torch": torch.__version__}


def quality_section(gen, rend, args, size, pixel_size, out):
    """FD per tier between a set sampled at psi = 1 (the training distribution, untruncated)
    and the corpora: masks against the generator's corpus, images against the renderer's."""
    from cellgen.quality import load_backbone, quality_report

    pairs = [(s, 1.0) for s in range(args.n_fd)]
    backbones = ["efficientnet-lite0"] + (["inception"] if args.inception_weights else [])
    result = {"n_generated": len(pairs), "psi": 1.0, "size": size, "pixel_size_um": pixel_size}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.h5"
        t = time.perf_counter()
        generated_set(path, gen, pairs, renderer=rend, pixel_size_um=pixel_size, size=size, variants=[],
                      noise_mode=args.noise_mode,
                      progress=True)
        result["sampling_s"] = time.perf_counter() - t
        for name in backbones:
            net = load_backbone(name, inception_weights=args.inception_weights)
            masks = quality_report(path, args.data, backbone=net, what=["masks"], max_images=args.max_reference,
                                   progress=True)
            images = quality_report(path, args.render_data or args.data, backbone=net, what=["images"],
                                    max_images=args.max_reference, progress=True)
            result[net.metric] = {"masks": masks, "images": images}
    return result


# label-map class colours: background, cytoplasm, nucleus, boundary (docs/format.md)
LABEL_COLOURS = np.array([(0.0, 0.0, 0.0), (0.1, 0.65, 0.2), (0.2, 0.35, 0.95), (1.0, 0.85, 0.1)], np.float32)


def fig4(gen, rend, path, size=None, seeds=(0, 1, 2), render: bool = True, noise_mode: str = "random"):
    """Like the paper's Fig. 4: for each seed (rows) and psi (columns) the generated label
    map in class colours and, below it, the image rendered from its exact masks as RGB
    (nucleus blue, cytoplasm green: ``cellgen.preview.composite``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if render else 1
    fig, axes = plt.subplots(rows * len(seeds), len(PSIS), figsize=(2.2 * len(PSIS), 2.25 * rows * len(seeds)),
                             squeeze=False)
    for i, seed in enumerate(seeds):
        for j, psi in enumerate(PSIS):
            # the same calls generated_set makes: scores at the output size -> exact masks -> render
            scores = gen.label_maps([seed], psi=psi, output_size=size, noise_mode=noise_mode)
            m = masks_from_scores(scores)[0]
            ax = axes[rows * i, j]
            ax.imshow(LABEL_COLOURS[np.argmax(scores[0], axis=0)], interpolation="nearest")
            ax.set_title(f"seed {seed}, psi {psi:g}: {m.count} cells", fontsize=7)
            ax.set_axis_off()
            if render:
                axes[rows * i + 1, j].imshow(composite(rend.render(m.semantic, m.cell, m.nucleus)))
                axes[rows * i + 1, j].set_axis_off()
    fig.suptitle("label maps (background black, cytoplasm green, nucleus blue, boundary yellow) and rendered "
                 "images (nucleus blue, cytoplasm green)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
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
        f"Generator noise mode: `{c.get('noise_mode', 'const')}` (`random`: each seed draws its own noise; "
        "`const`: one shared field, the official protocol). Layout diversity, precision/recall and the goals: "
        "`cellgen eval contours` (`contours/report.md`).",
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
        "| images per tier (" + "/".join(c["psi_density"]["tier_population"]) + ") | " + " | ".join(
            "/".join(str(n) for n in v["tiers"].values()) for v in c["count_by_psi"].values()) + " |",
        "",
        f"{c['psi_density']['seeds']} seeds per psi, masks at {c['psi_density']['size']} px "
        f"({c['psi_density']['pixel_size_um']:g} um/px) as `cellgen sample` makes them. Cell counts reached across "
        f"psi: {c['psi_density']['count_range'][0]}-{c['psi_density']['count_range'][1]}; tier populations over all "
        "psi: " + ", ".join(f"{t} {n}" for t, n in c["psi_density"]["tier_population"].items()) + ".",
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
              "![rendering](render_eval.png)", ""]
    lines += _texture_markdown(r.get("texture"))
    lines += _fd_markdown(report.get("quality"))
    lines += ["## Sampling speed on this CPU", "",
              f"One {sp['image_size']} x {sp['image_size']} image through `cellgen.pipeline.generated_set` (label map "
              f"at {sp['contour_resolution']} px resampled to {sp['image_size']} px, exact masks, rendering, Poisson "
              f"noise, written to a set): **{sp['total']['median_s']:.3f} s** (median of {sp['total']['repeats']} after "
              f"{sp['total']['warmup']} warm-up; range {sp['total']['min_s']:.3f}-{sp['total']['max_s']:.3f} s). "
              f"Stages: contours + masks {sp['contours']['median_s']:.3f} s, rendering {sp['render']['median_s']:.3f} s, "
              f"noise {sp['noise']['median_s']:.4f} s.", "",
              f"CPU: {sp['cpu']} ({sp['logical_cpus']} logical CPUs, shared); torch {sp['torch']} with "
              f"{sp['torch_threads']} thread(s), OMP_NUM_THREADS={sp['omp_num_threads']}.", ""]
    path.write_text("\n".join(lines))


def _texture_markdown(t: dict | None) -> list[str]:
    """Texture of rendered vs real held-out images (cellgen.render.texture)."""
    if not t:
        return []
    real, rend, ratio = t["real"], t["rendered"], t["ratio"]
    lines = ["### Texture and intensity (same held-out masks)", "",
             "| channel | quantity | real | rendered | rendered / real |", "|---|---|---|---|---|"]
    for ch in ("nucleus", "cytoplasm"):
        cb_r, cb_f = real["checkerboard"][ch]["median"], rend["checkerboard"][ch]["median"]
        lines.append(f"| {ch} | checkerboard amplitude (median) | {100 * cb_r:.4f}% | {100 * cb_f:.4f}% | |")
        iv = ratio.get("interval", {})
        bg_iv = iv.get("background_std", {}).get(ch)
        bg_iv = f" ({bg_iv[0]:.2f}-{bg_iv[1]:.2f})" if bg_iv else ""
        lines.append(f"| {ch} | background std | {real['background_std'][ch]:.4f} | {rend['background_std'][ch]:.4f} "
                     f"| {ratio['background_std'][ch]:.2f}{bg_iv} |")
        for q in ("median", "std"):
            lines.append(f"| {ch} | per-cell mean intensity, {q} | {real['cell_means'][ch][q]:.3f} | "
                         f"{rend['cell_means'][ch][q]:.3f} | {ratio['cell_means'][ch][q]:.2f} |")
        band_iv = iv.get("power_spectrum", {}).get(ch) or [None] * len(ratio["power_spectrum"][ch]["ratio_per_band"])
        bands = ", ".join(f"{v:.2f}" + (f" ({b[0]:.2f}-{b[1]:.2f})" if b else "")
                          for v, b in zip(ratio["power_spectrum"][ch]["ratio_per_band"], band_iv))
        lines.append(f"| {ch} | power spectrum, octave bands from low to Nyquist | | | {bands} |")
    lines.append("")
    if "interval" in ratio:
        iv = ratio["interval"]
        lines += [f"In brackets: {100 * iv['level']:.0f}% bootstrap intervals over the {iv['n_images'][0]} held-out masks "
                  "(what sampling alone moves a ratio by at this many images).", ""]
    if "seed_variation" in t:
        sv = t["seed_variation"]
        corr = ", ".join(f"{k} {v:.2f}" for k, v in sv["cell_mean_correlation"].items())
        lines += [f"Two renders of each mask with different seeds differ by {sv['mean_abs_pixel_difference']:.4f} per "
                  f"pixel on average (full scale 1); correlation of a cell's mean intensity between them: {corr} "
                  "(1 would mean every cell looks the same whatever the seed).", ""]
    return lines


def _fd_markdown(q: dict | None) -> list[str]:
    if not q:
        return []
    lines = ["## Feature-space Fréchet distance to the training corpora, per density tier", "",
             f"{q['n_generated']} images sampled at psi = 1 through `generated_set` ({q['size']} px, "
             f"{q['pixel_size_um']:g} um/px) in {q['sampling_s']:.0f} s. Masks are compared with the generator's "
             "corpus, images with the renderer's. `split-half` is the distance between two halves of the corpus: what "
             "sampling noise alone gives at that many images (FD shrinks with more images, so compare values at "
             "equal counts only). FD-EffNetLite0 uses ImageNet EfficientNet-Lite0 features and is **not** comparable "
             "with Inception FID values; see docs/quality.md.", ""]
    for metric in ("FD-EffNetLite0", "FID"):
        if metric not in q:
            continue
        lines += [f"| {metric} | tier | generated | corpus | {metric} | corpus split-half |", "|---|---|---|---|---|---|"]
        for kind in ("masks", "images"):
            rep = q[metric][kind]
            reference = Path(rep["sets"]["reference"]["path"]).name
            for _, tier, n_gen, n_ref, fd, fl in report_rows({"results": {kind: rep["results"].get(kind)}}, digits=1):
                if tier is None:
                    lines.append(f"| {kind} | (no images) | | | | |")
                    continue
                lines.append(f"| {kind} vs `{reference}` | {tier} | {n_gen} | {n_ref} | {fd} | {fl} |")
        lines.append("")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--data", required=True, help="the generator's training corpus (HDF5)")
    ap.add_argument("--render-data", help="the renderer's training pairs (HDF5) [default: --data]")
    ap.add_argument("--heldout", required=True, help="held-out image+mask pairs (HDF5) for rendering fidelity")
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("--n-fd", type=int, default=200, help="images sampled (psi = 1) for the Fréchet distances")
    ap.add_argument("--max-reference", type=int, default=500, help="corpus images used for the Fréchet distances")
    ap.add_argument("--inception-weights", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: adds the standard FID")
    ap.add_argument("--size", type=int, help="output image size [default: as `cellgen sample`: the renderer's scale]")
    ap.add_argument("--no-render-figure", action="store_true", help="label maps only in fig4")
    ap.add_argument("--noise-mode", default="random", choices=["random", "const", "none"],
                    help="generator noise: per-seed (default) or the official shared field")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from cellgen.render.renderer import Renderer

    started = time.perf_counter()
    gen = ContourGenerator.load(args.generator)
    rend = Renderer.load(args.renderer)
    with BenchmarkSet(args.data) as ds:
        pixel_size = ds.pixel_size_um
    # the output size `cellgen sample` picks: label maps drawn at the renderer's scale
    size = args.size or gen.resolution
    if not args.size and rend.info.get("pixel_size_um"):
        size = round(gen.resolution * pixel_size / float(rend.info["pixel_size_um"]))
    rend.check_size(size, size)
    out_px = pixel_size * gen.resolution / size
    report = {"generator": {"path": args.generator, "sha256": gen.sha256, "info": gen.info},
              "contours": contour_section(gen, args.data, args.n, out, pixel_size, size=size, noise_mode=args.noise_mode)}
    _, rendering = render_section(args.renderer, args.render_data or args.data, args.heldout, out)
    report["renderer"] = {"path": args.renderer, "sha256": rend.sha256, "info": rend.info}
    report["rendering"] = rendering
    report["quality"] = quality_section(gen, rend, args, size, out_px, out)
    report["speed"] = speed_section(gen, rend, size, out_px)
    fig4(gen, rend, out / "fig4_psi.png", size=size, render=not args.no_render_figure, noise_mode=args.noise_mode)
    report["report_wall_s"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    write_markdown(report, out / "report.md")
    print(json.dumps({k: report[k] for k in ("contours", "speed")}, indent=2, default=float))
    print(f"report written to {out}/ in {report['report_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
