"""Commands that make sets: simulate, sample, render, preview, export."""

from __future__ import annotations

import click

from cellgen.cli.root import cli, command_line, print_summary
from cellgen.cli.options import (
    DEVICE_OPTION,
    FRACTION,
    MAX_SEED,
    NOISE_MODE,
    NON_NEGATIVE,
    OUTPUT_FILE,
    OVERWRITE,
    POSITIVE,
    QUIET,
    SCHEDULER,
    WORKERS,
    default_checkpoint,
    load_generator,
    parse_count,
    parse_floats,
    parse_list,
    parse_seeds,
    tier_options,
)
from cellgen.cli.noise_axis import noise_axis_options


@cli.command()
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="HDF5 benchmark set to write.")
@click.option("--n", "n_images", default=10, show_default=True, type=click.IntRange(1), help="Number of images.")
@click.option("--count", default="12", show_default=True, help="Cells per image: N, or LOW:HIGH drawn per image.")
@click.option("--density", type=NON_NEGATIVE, default=None, help="Target cells per mm^2 (overrides --count).")
@click.option("--size", default=256, show_default=True, type=click.IntRange(32), help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED), help="Image i uses seed SEED + i.")
@click.option("--pixel-size", default=0.5, show_default=True, type=POSITIVE, help="Micrometres per pixel.")
@click.option("--cell-radius", default=9.0, show_default=True, type=POSITIVE, help="Mean cell radius in um.")
@click.option("--touching", default=0.5, show_default=True, type=FRACTION, help="0 keeps cells apart, 1 packs them.")
@click.option("--clustering", default=0.3, show_default=True, type=FRACTION, help="Fraction of cells placed next to another.")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True,
              help="Image variants: clean, noise presets, cameras (ccd-icx285, ...; NAME@PHOTONS), cellpose3.")
@noise_axis_options
@tier_options
@OVERWRITE
@QUIET
def simulate(output, n_images, count, density, size, seed, pixel_size, cell_radius, touching, clustering,
             noise_args, tier_measure, tier_thresholds, overwrite, quiet):
    """Write a benchmark set from the procedural cell simulator (no weights needed)."""
    from cellgen.density import TierScheme
    from cellgen.pipeline import simulate_set
    from cellgen.simulate import SimulationConfig, count_for_density

    cells = count_for_density(density, size, pixel_size) if density is not None else parse_count(count)
    config = SimulationConfig(
        size=size, count=cells, pixel_size_um=pixel_size, cell_radius_um=cell_radius,
        touching=touching, clustering=clustering,
    )
    tiers = TierScheme.parse(tier_measure, tier_thresholds)
    path = simulate_set(
        output, config, n_images, seed, **noise_args, tiers=tiers,
        command=command_line(), overwrite=overwrite, progress=not quiet,
    )
    print_summary(path)


@cli.command()
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="HDF5 benchmark set to write.")
@click.option("--checkpoint", help="Contour generator (.pt, or an official stylegan2-ada .pkl) [default: shipped].")
@click.option("--renderer", help="Renderer checkpoint (.pt) [default: shipped; 'none' for masks only].")
@click.option("--psi", default="1", show_default=True, help="Truncation psi value(s), comma-separated; any real.")
@click.option("--seeds", default="0-9", show_default=True, help="Seeds: 0-299, 1,5,9 ... (each seed x each psi).")
@click.option("--tier", "target_tier", help="Targeted: draw (seed, psi) until --n masks fall in this density tier.")
@click.option("--count", "target_count", help="Targeted: draw until --n masks have LOW:HIGH cells.")
@click.option("--n", "n_target", type=click.IntRange(1), help="Images to collect with --tier/--count.")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True,
              help="Image variants (with a renderer): as for simulate.")
@noise_axis_options
@click.option("--pixel-size", type=POSITIVE, help="um/px [default: the generator's training data].")
@click.option("--size", type=click.IntRange(8), help="Image side in px; label maps are resampled to it "
              "[default: the renderer's training scale, else the generator's resolution].")
@tier_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@DEVICE_OPTION
@NOISE_MODE
@WORKERS
@SCHEDULER
@OVERWRITE
@QUIET
def sample(output, checkpoint, renderer, psi, seeds, target_tier, target_count, n_target, noise_args, pixel_size,
           size, tier_measure, tier_thresholds, batch_size, device, noise_mode, workers, scheduler, overwrite, quiet):
    """Generate a benchmark set: contours -> exact masks -> rendered images -> noise variants."""
    from cellgen.density import TierScheme
    from cellgen.pipeline import generated_set, matched_size
    from cellgen.resources import check_model_memory

    psis, seed_list = parse_floats(psi, "--psi"), parse_seeds(seeds)  # bad options fail before models load
    gen = load_generator(checkpoint, device)
    rend = None
    if (renderer or "").lower() != "none":
        from cellgen.render.renderer import Renderer

        rend = Renderer.load(renderer or default_checkpoint("renderer"), device=device)
    size = size or matched_size(gen, rend)
    check_model_memory(size, batch_size)  # before any draw: --size 100000 is refused, with the estimate
    if rend is not None:
        rend.check_size(size, size)
    pixel_size = pixel_size or gen.pixel_size_at(size)
    tiers = TierScheme.parse(tier_measure, tier_thresholds)
    extra = {}
    if target_tier or target_count:
        if not n_target:
            raise click.UsageError("--tier/--count need --n (how many images to collect)")
        from cellgen.density_control import draw_acceptance, targeted_draws

        if target_tier and target_tier not in tiers.names:
            raise click.BadParameter(f"choose from {', '.join(tiers.names)}", param_hint="--tier")
        count = None
        if not target_tier:
            count = parse_count(target_count) if ":" in target_count else (parse_count(target_count),) * 2
        accept = draw_acceptance(tiers, tier=target_tier or None, count=count)
        accepted, draws = targeted_draws(gen, accept, n_target, psis, pixel_size, first_seed=seed_list[0],
                                         batch_size=batch_size, output_size=size, noise_mode=noise_mode)
        pairs = [(a[0], a[1]) for a in accepted]
        extra = {"target": {"tier": target_tier, "count": target_count, "n": n_target, "draws": draws}}
        if not quiet:
            click.echo(f"accepted {len(pairs)} of {draws} draws")
    else:
        pairs = [(s, p) for s in seed_list for p in psis]
    set_args = dict(pixel_size_um=pixel_size, batch_size=batch_size, size=size, recipe_extra=extra, noise_mode=noise_mode,
                    **noise_args, tiers=tiers, command=command_line(), overwrite=overwrite,
                    progress=not quiet)
    if workers > 1 or scheduler:
        from cellgen.sample_shards import sample_sharded

        # workers load the models from their files; same bytes as the single-process branch
        path = sample_sharded(output, checkpoint or default_checkpoint("generator"), pairs, device=device,
                              renderer=None if rend is None else (renderer or default_checkpoint("renderer")),
                              workers=workers, scheduler=scheduler, **set_args)
    else:
        path = generated_set(output, gen, pairs, renderer=rend, **set_args)
    print_summary(path)


@cli.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Set whose masks to render.")
@click.option("-o", "--output", required=True, type=OUTPUT_FILE, help="New set with images.")
@click.option("--checkpoint", help="Renderer checkpoint [default: shipped].")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True, help="Image variants: as for simulate.")
@noise_axis_options
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@DEVICE_OPTION
@OVERWRITE
@QUIET
def render(data, output, checkpoint, noise_args, batch_size, device, overwrite, quiet):
    """Render images for a set's masks into a new set, for example a masks-only set."""
    from cellgen.pipeline import rendered_set
    from cellgen.render.renderer import Renderer

    rend = Renderer.load(checkpoint or default_checkpoint("renderer"), device=device)
    path = rendered_set(output, data, rend, batch_size=batch_size, **noise_args,
                        command=command_line(), overwrite=overwrite, progress=not quiet)
    print_summary(path)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--variant", default="clean", show_default=True, help="Image variant to show.")
@click.option("--per-tier", default=4, show_default=True, type=click.IntRange(1, 32), help="Images per tier row.")
@click.option("--no-outlines", is_flag=True, help="Show images without mask outlines.")
def preview(file, output, variant, per_tier, no_outlines):
    """Montage of a set's images with mask outlines, one row per density tier."""
    from cellgen.preview import preview_set

    preview_set(file, output, variant=variant, per_tier=per_tier, outlines=not no_outlines)
    click.echo(f"wrote {output}")


@cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["tiff", "png", "ome-tiff", "ome-zarr"]), default="tiff",
              show_default=True, help="Files per image and mask (tiff, png), the same as OME-TIFF with the pixel "
              "size, or one OME-Zarr (NGFF) image per image with labels/cells and labels/nuclei.")
@click.option("--variants", default=None, help="Variants to export (default: all).")
@QUIET
def export_cmd(file, out_dir, fmt, variants, quiet):
    """Write a set as files per image and mask (TIFF, PNG, OME-TIFF) or as OME-Zarr images."""
    from cellgen.datasets.export import export_set

    export_set(file, out_dir, fmt, parse_list(variants) if variants else None, progress=not quiet)
    click.echo(f"exported {file} to {out_dir}")
