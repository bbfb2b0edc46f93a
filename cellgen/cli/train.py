"""``cellgen train``: the contour generator and the renderer on your own data."""

from __future__ import annotations

import click

from cellgen.cli.root import OrderedGroup, cli
from cellgen.cli.options import DEVICE_OPTION, QUIET


@cli.group(cls=OrderedGroup)
def train():
    """Train the contour generator or the renderer on your own masks and images."""


@train.command("contours")
@click.option("--data", required=True, type=click.Path(), help="Benchmark set (HDF5) or folder of exported masks.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--preset", default="small256", show_default=True, type=click.Choice(["tiny", "small128", "small256", "paper512"]))
@click.option("--kimg", type=float, help="Training length in thousands of real images shown.")
@click.option("--steps", type=click.IntRange(1), help="Training length in generator steps (instead of --kimg).")
@click.option("--batch", type=click.IntRange(1), help="Batch size [default: the preset's].")
@click.option("--augment", default="ada", show_default=True, help="ada, none, or a fixed probability.")
@click.option("--seed", default=0, show_default=True, type=int)
@DEVICE_OPTION
@click.option("--no-dihedral", is_flag=True, help="Do not show real maps in random flips/rotations.")
@click.option("--max-minutes", type=float, help="Stop (and save) after this wall time; rerun to continue.")
@click.option("--no-resume", is_flag=True, help="Start over even if the folder holds a snapshot.")
@click.option("--init", "init", type=click.Path(dir_okay=False),
              help="Continue training, e.g. on other data: a contour-generator checkpoint of the same preset (G and "
                   "G_ema; D starts fresh) or a run folder's snapshot.pt (G, D and G_ema carry on).")
@click.option("--d-warmup-kimg", default=0.0, show_default=True, type=click.FloatRange(0),
              help="With --init: train the fresh D alone (G frozen) for this many kimg first.")
@click.option("--export-every", "export_every", type=click.FloatRange(0, min_open=True), metavar="KIMG",
              help="Keep the EMA generator every KIMG kimg as OUTPUT/generators/generator-STEP.pt, to rank them "
                   "afterwards with 'cellgen eval contours --checkpoint ...'.")
@QUIET
def train_contours_cmd(data, output, preset, kimg, steps, batch, augment, seed, device, no_dihedral, max_minutes,
                       no_resume, init, d_warmup_kimg, export_every, quiet):
    """StyleGAN2 on label maps; writes OUTPUT/generator.pt, snapshots, samples, log.jsonl."""
    from cellgen.gen.train import ContourTrainingConfig, train_contours

    try:
        augment = float(augment)
    except ValueError:
        pass
    config = ContourTrainingConfig(preset=preset, kimg=kimg, steps=steps, batch=batch, seed=seed, augment=augment,
                                   dihedral=not no_dihedral, init=init, d_warmup_kimg=d_warmup_kimg,
                                   export_every_kimg=export_every)
    path = train_contours(data, output, config, device=device, progress=not quiet, max_minutes=max_minutes,
                          resume=not no_resume)
    click.echo(f"wrote {path}")


@train.command("renderer")
@click.option("--data", required=True, type=click.Path(), help="Benchmark set (HDF5) or exported folder of image+mask pairs.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--preset", default="varied256", show_default=True,
              type=click.Choice(["tiny", "small256", "varied256", "paper1024"]),
              help="varied256: small256 with resize-convolution upsampling, per-cell appearance inputs drawn "
                   "from a seed (the background level set exactly), a noise input, and EfficientNet-Lite0 "
                   "perceptual, region-mean and power-spectrum losses.")
@click.option("--steps", type=click.IntRange(1), help="Training length in steps.")
@click.option("--epochs", type=float, help="Training length in passes over the data (instead of --steps).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--crop", type=click.IntRange(16), help="Training crop side [default: the preset's size].")
@click.option("--max-minutes", type=float, help="Stop (and save) after this wall time; rerun to continue.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False), help="VGG19 weights file to add the perceptual loss.")
@click.option("--init", type=click.Path(dir_okay=False), help="Start from a renderer checkpoint (e.g. the shipped "
              "one, to fine-tune on your images) or a run's snapshot.pt, instead of random weights.")
@click.option("--adapt-init", is_flag=True, help="With --init: build --preset's network and copy the init weights "
              "where they fit (new input channels start at zero, transposed-convolution kernels seed resize-convolutions).")
@click.option("--decay-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Last fraction of the steps over which the learning rate decays to 0.")
@click.option("--seed", default=0, show_default=True, type=int)
@DEVICE_OPTION
@click.option("--no-resume", is_flag=True)
@QUIET
def train_renderer_cmd(data, output, preset, steps, epochs, batch, crop, max_minutes, vgg_weights, init, adapt_init,
                       decay_fraction, seed, device, no_resume, quiet):
    """Pix2PixHD mask -> image; writes OUTPUT/renderer.pt, snapshots, triptychs, log.jsonl."""
    from cellgen.render.train import RendererTrainingConfig, train_renderer

    config = RendererTrainingConfig(preset=preset, steps=steps, epochs=epochs, batch=batch, seed=seed,
                                    decay_fraction=decay_fraction, config_overrides={"size": crop} if crop else None,
                                    vgg_weights=vgg_weights, init_from=init, adapt_init=adapt_init)
    path = train_renderer(data, output, config, device=device, progress=not quiet, max_minutes=max_minutes,
                          resume=not no_resume)
    click.echo(f"wrote {path}")


@train.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Checkpoint to write [default: RUN_DIR/generator.pt or renderer.pt].")
@click.option("--half", is_flag=True, help="Store float16 weights (half the size; loaded as float32).")
def train_export(run_dir, output, half):
    """Checkpoint from a run's last snapshot (a run paused by --max-minutes; it stays resumable)."""
    from cellgen.snapshot_export import export_snapshot

    click.echo(f"wrote {export_snapshot(run_dir, output, half=half)}")


@cli.command("calibrate")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Your annotated set (from 'cellgen datasets import').")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--generator-kimg", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Contour generator training length, in thousands of masks shown.")
@click.option("--renderer-steps", default=2000, show_default=True, type=click.IntRange(1),
              help="Renderer training length in steps.")
@click.option("--generator-preset", default="small128", show_default=True,
              type=click.Choice(["tiny", "small128", "small256", "paper512"]))
@click.option("--renderer-preset", default="varied256", show_default=True,
              type=click.Choice(["tiny", "small256", "varied256", "paper1024"]))
@click.option("--from-scratch", is_flag=True, help="Random initial weights instead of fine-tuning the shipped models.")
@click.option("--report-images", default=32, show_default=True, type=click.IntRange(8),
              help="Generated images the quality report compares with your set.")
@click.option("--segmenter-steps", default=300, show_default=True, type=click.IntRange(1),
              help="Training steps of the report's Table-3 U-Net.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Stop (and save) after this wall time; rerun the same command to continue.")
@click.option("--seed", default=0, show_default=True, type=int)
@DEVICE_OPTION
@QUIET
def calibrate_cmd(data, output, generator_kimg, renderer_steps, generator_preset, renderer_preset, from_scratch,
                  report_images, segmenter_steps, max_minutes, seed, device, quiet):
    """Train the generator and renderer on your set; writes OUTPUT/generator.pt, renderer.pt, report.md.

    Then 'cellgen sample --checkpoint OUTPUT/generator.pt --renderer OUTPUT/renderer.pt' draws
    graded sets that look like your data."""
    from cellgen.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(generator_preset=generator_preset, renderer_preset=renderer_preset,
                               generator_kimg=generator_kimg, renderer_steps=renderer_steps,
                               fine_tune=not from_scratch, seed=seed, report_images=report_images,
                               segmenter_steps=segmenter_steps)
    state = calibrate(data, output, config, max_minutes=max_minutes, device=device, progress=not quiet)
    if state["done"]:
        click.echo(f"wrote {output}/generator.pt, {output}/renderer.pt and {output}/report.md")
    else:
        click.echo(f"paused after {max_minutes} min; run the same command again to continue")
