"""``cellgen eval`` (model quality) and ``cellgen gen`` (contour generator analysis)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cellgen.cli.root import OrderedGroup, cli
from cellgen.cli.options import (
    DEVICE_OPTION,
    NOISE_MODE,
    QUIET,
    default_checkpoint,
    load_generator,
    parse_floats,
    parse_list,
    parse_seeds,
)
from cellgen.errors import CellgenError


@cli.group("eval", cls=OrderedGroup)
def eval_group():
    """Measure the quality of the learned models."""


@eval_group.command("render")
@click.option("--checkpoint", help="Renderer checkpoint [default: shipped].")
@click.option("--data", required=True, type=click.Path(), help="The renderer's real image+mask pairs.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for JSON + figure.")
@click.option("--heldout", type=click.Path(), help="Image+mask pairs the renderer never saw [default: a split of --data].")
@click.option("--segmenter-steps", default=300, show_default=True, type=click.IntRange(1))
@click.option("--max-images", default=64, show_default=True, type=click.IntRange(2))
@click.option("--seed", default=0, show_default=True, type=int)
@DEVICE_OPTION
def eval_render(checkpoint, data, output, heldout, segmenter_steps, max_images, seed, device):
    """Rendering fidelity (the paper's Table 3): a U-Net trained on real pairs segments rendered images."""
    from cellgen.render.evaluate import evaluate_renderer
    from cellgen.render.renderer import Renderer

    rend = Renderer.load(checkpoint or default_checkpoint("renderer"), device=device)
    result = evaluate_renderer(rend, data, heldout=heldout, max_images=max_images, segmenter_steps=segmenter_steps, seed=seed,
                               device=device, out_dir=output, progress=True)
    click.echo(json.dumps({k: v for k, v in result.items() if k in ("rendered", "real")}, indent=2, default=float))
    tex = result["texture"]
    ratio, iv = tex["ratio"], tex["ratio"]["interval"]
    for name in ("nucleus", "cytoplasm"):
        ps = ratio["power_spectrum"][name]
        bg_lo, bg_hi = iv["background_std"][name]
        band_lo, band_hi = iv["power_spectrum"][name][ps["worst_band"]]
        click.echo(f"{name} channel: checkerboard {100 * tex['rendered']['checkerboard'][name]['median']:.3f}% "
                   f"(real {100 * tex['real']['checkerboard'][name]['median']:.3f}%), background std x"
                   f"{ratio['background_std'][name]:.2f} of real ({bg_lo:.2f}-{bg_hi:.2f}), per-cell mean std "
                   f"x{ratio['cell_means'][name]['std']:.2f}, worst power-spectrum band "
                   f"x{ps['ratio_per_band'][ps['worst_band']]:.2f} ({band_lo:.2f}-{band_hi:.2f})")
    click.echo(f"(in brackets: {100 * iv['level']:.0f}% bootstrap intervals over {iv['n_images'][0]} held-out images; "
               "more images (--max-images, a larger --heldout) narrow them)")
    if "seed_variation" in tex:
        click.echo(f"between seeds: cell mean correlation {tex['seed_variation']['cell_mean_correlation']}")
    click.echo(f"results in {output}/")


@eval_group.command("quality")
@click.option("--generated", required=True, type=click.Path(dir_okay=False), help="Generated benchmark set (HDF5).")
@click.option("--reference", required=True, type=click.Path(dir_okay=False), help="Training (reference) set (HDF5).")
@click.option("--backbone", default="efficientnet-lite0", show_default=True,
              type=click.Choice(["efficientnet-lite0", "inception"]),
              help="Feature network: FD-EffNetLite0 (packaged weights) or the standard FID Inception.")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (for --backbone inception).")
@click.option("--what", default="images,masks", show_default=True, help="Compare images, masks or both.")
@click.option("--max-images", type=click.IntRange(2), help="Evenly spaced images per set [default: all].")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@DEVICE_OPTION
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for quality.json.")
@QUIET
def eval_quality(generated, reference, backbone, inception_weights, what, max_images, batch_size, device, output, quiet):
    """Feature-space Fréchet distance of generated vs training images and masks, per density tier."""
    from cellgen.quality import load_backbone, quality_report, report_table, write_report

    kinds = parse_list(what)
    if not kinds or any(k not in ("images", "masks") for k in kinds):
        raise click.BadParameter("use images, masks or images,masks", param_hint="--what")
    net = load_backbone(backbone, inception_weights=inception_weights, device=device)
    result = quality_report(generated, reference, backbone=net, what=kinds, max_images=max_images,
                            batch_size=batch_size, progress=not quiet)
    path = write_report(result, output)
    click.echo("\n".join(report_table(result)))
    click.echo(f"results in {path}")


def _expand_folders(paths) -> list[str]:
    """Each folder among ``paths`` becomes the .pt files in it, in name order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.pt"))
            if not found:
                raise CellgenError(f"{p} is a folder with no .pt checkpoints in it")
            out += [str(f) for f in found]
        elif p.is_file():
            out.append(str(p))
        else:
            raise CellgenError(f"no such checkpoint: {p}")
    return out


@eval_group.command("contours")
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="Contour generator(s) [default: shipped], or a folder of them (all its .pt files, e.g. a "
                   "run's generators/); several are ranked for picking a snapshot.")
@click.option("--reference", required=True, type=click.Path(dir_okay=False), help="The generator's training corpus (HDF5).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the report.")
@click.option("--n", "n_images", default=256, show_default=True, type=click.IntRange(8),
              help="Generated maps (psi 1) for precision/recall, FD and KS.")
@click.option("--n-reference", default=512, show_default=True, type=click.IntRange(8), help="Corpus maps used.")
@click.option("--n-diversity", default=64, show_default=True, type=click.IntRange(2), help="Maps per side for the IoU.")
@click.option("--psi-seeds", default=48, show_default=True, type=click.IntRange(0), help="Seeds of the psi sweep.")
@click.option("--first-seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--k", default=3, show_default=True, type=click.IntRange(1), help="k of the k-NN manifolds (P/R).")
@NOISE_MODE
@DEVICE_OPTION
@QUIET
def eval_contours(checkpoints, reference, output, n_images, n_reference, n_diversity, psi_seeds, first_seed, k,
                  noise_mode, device, quiet):
    """Contour generator vs its corpus: layout diversity (pairwise IoU, near-duplicates), precision and
    recall, FD-EffNetLite0 per tier with the corpus floor, KS of count and areas, density control over psi."""
    from cellgen.gen.eval_report import rank_folder
    from cellgen.gen.evaluate import evaluate_contours, load_reference, rank_checkpoints, selection_key, write_report
    from cellgen.quality import load_backbone

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    paths = _expand_folders(checkpoints) or [default_checkpoint("generator")]
    say("corpus features")
    ref = load_reference(reference, load_backbone(device=device), n=n_reference, n_diversity=n_diversity)
    opts = dict(n=n_images, n_diversity=n_diversity, psi_seeds=psi_seeds, noise_mode=noise_mode,
                first_seed=first_seed, k=k, progress=say)
    out = Path(output)
    if len(paths) == 1:
        results = [(paths[0], evaluate_contours(load_generator(paths[0], device), ref, **opts))]
    else:
        results = rank_checkpoints(paths, ref, **opts)
    for i, (path, result) in enumerate(results):
        folder = out if len(results) == 1 else out / rank_folder(i, path)
        write_report(result, folder)
        g = result["goals"]
        click.echo(f"{path}: {len(g['failed'])} goal(s) failed{': ' + ', '.join(g['failed']) if g['failed'] else ''}; "
                   f"IoU ratio {g['diversity_ratio']['value']:.2f}, P {g['precision']['value']:.2f} "
                   f"R {g['recall']['value']:.2f}, worst FD/floor {g['fd_floor_ratio_worst_tier']['value'] or float('nan'):.2f} "
                   f"-> {folder}/report.md")
    if len(results) > 1:
        from cellgen.fileio import atomic_path
        from cellgen.gen.eval_report import ranking_markdown, training_figure

        training_figure(results, out / "training.png")
        with atomic_path(out / "ranking.md") as tmp:
            tmp.write_text(ranking_markdown(results))
        click.echo(f"best: {results[0][0]} (key {selection_key(results[0][1])}); all ranked in {out / 'ranking.md'}, "
                   f"measures in training order in {out / 'training.png'}")


@cli.group("gen", cls=OrderedGroup)
def gen_group():
    """Contour generator analysis."""


@gen_group.command("psi-sweep")
@click.option("--checkpoint", help="Contour generator [default: shipped].")
@click.option("--seeds", default="0-29", show_default=True)
@click.option("--psi", default="-1,-0.5,0,0.5,1", show_default=True)
@click.option("--fit-seeds", default="1000-1099", show_default=True, help="Seeds to fit the W density direction on.")
@click.option("--alphas", default="-3,-1.5,0,1.5,3", show_default=True, help="Steps along the density direction.")
@click.option("--measure", default="count", show_default=True)
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False))
@DEVICE_OPTION
@NOISE_MODE
def psi_sweep_cmd(checkpoint, seeds, psi, fit_seeds, alphas, measure, pixel_size, output, device, noise_mode):
    """Density vs psi per seed, its monotonic fraction, and the same for a fitted density direction."""
    from cellgen.density_control import sweep_report

    seeds, psis, alphas = parse_seeds(seeds), parse_floats(psi, "--psi"), parse_floats(alphas, "--alphas")
    fit_seeds = parse_seeds(fit_seeds)
    gen = load_generator(checkpoint, device)
    pixel_size = pixel_size or float(gen.info.get("pixel_size_um", 0.5))
    result = sweep_report(gen, output, seeds, psis, fit_seeds, alphas, pixel_size, measure, noise_mode=noise_mode)
    click.echo(f"psi: {100 * result['psi_monotonic_fraction']:.0f}% of {len(seeds)} seeds change {measure} "
               f"monotonically; density direction: {100 * result['direction_monotonic_fraction']:.0f}% "
               f"(fit R^2 {result['direction_fit_r2']:.2f}); results in {output}/")
