"""Renderers side by side against the simulator, on the same held-out masks.

    OMP_NUM_THREADS=1 python benchmarks/renderer_compare.py --heldout heldout.h5 \
        --renderer checkpoints/renderer-varied256.pt --renderer checkpoints/renderer-varied256-v2.pt \
        -o docs/reports/default/renderer_compare.png

Top: one held-out mask as the simulator drew it and as each renderer draws it under two
seeds (nucleus channel magenta, cytoplasm green, both on a fixed 0-0.8 scale, so the
background's brightness can be compared between panels). Bottom, over ``--n`` held-out
images (each renderer with seeds 1000 + i, as ``cellgen eval render``): the radially averaged
power spectrum per channel as a ratio to the simulator's, the per-cell mean intensities, and
the background pixel distribution, with the simulator's in black. Also prints the
:mod:`cellgen.render.texture` ratios of each renderer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _rgb(img: np.ndarray, top: float = 0.8) -> np.ndarray:
    n, c = np.clip(img[0] / top, 0, 1), np.clip(img[1] / top, 0, 1)
    return np.stack([n, c, n], -1)


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellgen.render import texture
    from cellgen.render.data import open_pairs
    from cellgen.render.renderer import Renderer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", required=True, help="held-out set with real (simulated) images")
    ap.add_argument("--renderer", action="append", required=True, help="renderer checkpoint (repeat)")
    ap.add_argument("--n", type=int, default=32, help="held-out images for the statistics")
    ap.add_argument("--index", type=int, default=3, help="held-out image shown on top")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)

    src = open_pairs(args.heldout)
    try:
        pairs = [src.get(i) for i in range(min(args.n, len(src)))]
    finally:
        src.close()
    img = np.stack([p.image for p in pairs])
    sem, cell, nuc = (np.stack([getattr(p, k) for p in pairs]) for k in ("semantic", "cell", "nucleus"))
    seeds = list(range(1000, 1000 + len(pairs)))
    real_stats = texture.image_statistics(img, sem, cell)
    edges = np.asarray(real_stats["power_spectrum"]["band_edges"])
    centres = np.sqrt(edges[:-1] * edges[1:])

    names, renders, stats, shown = [], [], [], []
    for path in args.renderer:
        r = Renderer.load(path)
        names.append(Path(path).stem)
        renders.append(r.render_batch(sem, cell, nuc, seeds=seeds))
        k = args.index
        shown.append([r.render(sem[k], cell[k], nuc[k], seed=s) for s in (1, 2)])
        stats.append(texture.image_statistics(renders[-1], sem, cell))
        ratio = texture.compare(stats[-1], real_stats, paired=True)
        print(names[-1], {key: ratio[key] for key in ("background_std", "cell_means")})
        print("  power spectrum per octave (low -> Nyquist):",
              {ch: np.round(v["ratio_per_band"], 2).tolist() for ch, v in ratio["power_spectrum"].items()})

    cols = 1 + 2 * len(names)
    fig = plt.figure(figsize=(3.0 * max(cols, 6), 6.6))
    grid = fig.add_gridspec(2, max(cols, 6), height_ratios=[1.15, 1])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(_rgb(img[args.index]))
    ax.set_title("simulator (real)")
    ax.axis("off")
    for j, (name, pair) in enumerate(zip(names, shown)):
        for s, im in enumerate(pair):
            ax = fig.add_subplot(grid[0, 1 + 2 * j + s])
            ax.imshow(_rgb(im))
            ax.set_title(f"{name}\nseed {s + 1}", fontsize=9)
            ax.axis("off")

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bottom = grid[1, :].subgridspec(1, 4, wspace=0.35)
    ax_ps = [fig.add_subplot(bottom[0, i]) for i in range(2)]
    ax_cm = fig.add_subplot(bottom[0, 2])
    ax_bg = fig.add_subplot(bottom[0, 3])
    real_cm = real_stats["_cell_means_raw"]
    bins = np.linspace(0, 1, 41)
    ax_cm.hist(real_cm["nucleus"], bins, histtype="step", color="k", label="simulator, nucleus")
    ax_cm.hist(real_cm["cytoplasm"], bins, histtype="step", color="k", ls="--", label="simulator, cytoplasm")
    bg_bins = np.linspace(0, 0.25, 51)
    ax_bg.hist(img[:, 1][cell == 0], bg_bins, histtype="step", color="k", density=True, label="simulator")
    for j, (name, rendered, st) in enumerate(zip(names, renders, stats)):
        col = colours[j % len(colours)]
        for a, ch in zip(ax_ps, texture.CHANNELS):
            a.semilogx(centres, np.divide(st["power_spectrum"][ch], real_stats["power_spectrum"][ch]), "o-", color=col,
                       label=name)
        cm = st["_cell_means_raw"]
        ax_cm.hist(cm["nucleus"], bins, histtype="step", color=col, label=f"{name}, nucleus")
        ax_cm.hist(cm["cytoplasm"], bins, histtype="step", color=col, ls="--")
        ax_bg.hist(rendered[:, 1][cell == 0], bg_bins, histtype="step", color=col, density=True, label=name)
    for c, a in enumerate(ax_ps):
        a.axhspan(0.9, 1.1, color="0.9")
        a.axhline(1, color="k", lw=0.8)
        a.set_xlabel("frequency (cycles / pixel)")
        a.set_ylabel("power / simulator's")
        a.set_title(f"power spectrum, {('nucleus', 'cytoplasm')[c]} channel", fontsize=9)
    ax_ps[0].legend(fontsize=7)
    ax_cm.set_xlabel("per-cell mean intensity")
    ax_cm.set_title("cells", fontsize=9)
    ax_cm.legend(fontsize=6)
    ax_bg.set_xlabel("background pixel, cytoplasm channel")
    ax_bg.set_yscale("log")
    ax_bg.set_title("background (all images pooled)", fontsize=9)
    ax_bg.legend(fontsize=7)
    fig.savefig(args.output, dpi=90, bbox_inches="tight")
    print("wrote", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
