"""The ``cellgen`` command line: a thin layer over the pipeline modules."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
import sys

import click

from cellgen import __version__
from cellgen.errors import CellgenError

_NOT_CONTENT = {"--overwrite", "-q", "--quiet"}
_OUTPUT = {"-o", "--output"}
# where the work runs never changes the result: left out of the recorded command, so a set
# made on 8 workers has the bytes of one made in one process
_WHERE = {"--workers", "--scheduler"}


def _command_line() -> str:
    """The command as typed, recorded as provenance: only what decides the content, so the
    same options written to another file name give the same bytes."""
    kept, skip = [], False
    for token in sys.argv[1:]:
        if skip:
            skip = False
        elif token in _OUTPUT or token in _WHERE:
            skip = True
        elif token not in _NOT_CONTENT and not any(token.startswith(o + "=") for o in _OUTPUT | _WHERE):
            kept.append(token)
    return shlex.join(["cellgen", *kept])


_WORKERS = click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
                        help="Local worker processes; the work is sharded by image index, same bytes as 1.")
_SCHEDULER = click.option("--scheduler", metavar="ADDRESS",
                          help="Dask distributed scheduler (tcp://host:8786) to shard the work over.")


def _parse_count(text: str):
    try:
        if ":" in text:
            lo, hi = (int(t) for t in text.split(":", 1))
            return (lo, hi)
        return int(text)
    except ValueError:
        raise click.BadParameter(f"expected N or LOW:HIGH, got {text!r}") from None


def _parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class _Group(click.Group):
    def list_commands(self, ctx):  # keep the order commands were added: the pipeline's order
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellgen")
def cli():
    """Synthetic fluorescent-cell segmentation benchmarks with exact masks."""


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HDF5 benchmark set to write.")
@click.option("--n", "n_images", default=10, show_default=True, type=click.IntRange(1), help="Number of images.")
@click.option("--count", default="12", show_default=True, help="Cells per image: N, or LOW:HIGH drawn per image.")
@click.option("--density", type=float, default=None, help="Target cells per mm^2 (overrides --count).")
@click.option("--size", default=256, show_default=True, type=click.IntRange(32), help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Image i uses seed SEED + i.")
@click.option("--pixel-size", default=0.5, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Micrometres per pixel.")
@click.option("--cell-radius", default=9.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Mean cell radius in um.")
@click.option("--touching", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="0 keeps cells apart, 1 packs them.")
@click.option("--clustering", default=0.3, show_default=True, type=click.FloatRange(0, 1), help="Fraction of cells placed next to another.")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True, help="Image variants: clean and noise presets.")
@click.option("--tier-measure", default="cells_per_mm2", show_default=True, help="Density measure that defines tiers.")
@click.option("--tier-thresholds", default="700,1600", show_default=True, help="Tier boundaries on that measure.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def simulate(output, n_images, count, density, size, seed, pixel_size, cell_radius, touching, clustering,
             variants, tier_measure, tier_thresholds, overwrite, quiet):
    """Write a benchmark set from the procedural cell simulator (no weights needed)."""
    from cellgen.density import TierScheme
    from cellgen.pipeline import simulate_set
    from cellgen.simulate import SimulationConfig, count_for_density

    cells = count_for_density(density, size, pixel_size) if density is not None else _parse_count(count)
    config = SimulationConfig(
        size=size, count=cells, pixel_size_um=pixel_size, cell_radius_um=cell_radius,
        touching=touching, clustering=clustering,
    )
    tiers = TierScheme.parse(tier_measure, tier_thresholds)
    path = simulate_set(
        output, config, n_images, seed, variants=_parse_list(variants), tiers=tiers,
        command=_command_line(), overwrite=overwrite, progress=not quiet,
    )
    _print_summary(path)


def _parse_seeds(text: str) -> list[int]:
    """``0-299``, ``1,5,9`` or a mix (``0-9,20-29``) -> list of seeds, in order."""
    seeds = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise click.BadParameter(f"expected seeds like 0-299 or 1,5,9, got {text!r}", param_hint="--seeds") from None
    if not seeds:
        raise click.BadParameter("no seeds given", param_hint="--seeds")
    return seeds


def _parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not values:
        raise click.BadParameter("no values given", param_hint=name)
    return values


def _generator(checkpoint, device):
    from cellgen.gen.generator import ContourGenerator

    return ContourGenerator.load(checkpoint or _default_checkpoint("generator"), device=device)


def _default_checkpoint(kind: str):
    from cellgen.defaults import default_checkpoint

    return default_checkpoint(kind)


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HDF5 benchmark set to write.")
@click.option("--checkpoint", help="Contour generator (.pt, or an official stylegan2-ada .pkl) [default: shipped].")
@click.option("--renderer", help="Renderer checkpoint (.pt) [default: shipped; 'none' for masks only].")
@click.option("--psi", default="1", show_default=True, help="Truncation psi value(s), comma-separated; any real.")
@click.option("--seeds", default="0-9", show_default=True, help="Seeds: 0-299, 1,5,9 ... (each seed x each psi).")
@click.option("--tier", "target_tier", help="Targeted: draw (seed, psi) until --n masks fall in this density tier.")
@click.option("--count", "target_count", help="Targeted: draw until --n masks have LOW:HIGH cells.")
@click.option("--n", "n_target", type=click.IntRange(1), help="Images to collect with --tier/--count.")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True, help="Image variants (with a renderer).")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="um/px [default: the generator's training data].")
@click.option("--size", type=click.IntRange(8), help="Image side in px; label maps are resampled to it "
              "[default: the renderer's training scale, else the generator's resolution].")
@click.option("--tier-measure", default="cells_per_mm2", show_default=True)
@click.option("--tier-thresholds", default="700,1600", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@_WORKERS
@_SCHEDULER
@click.option("--overwrite", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def sample(output, checkpoint, renderer, psi, seeds, target_tier, target_count, n_target, variants, pixel_size,
           size, tier_measure, tier_thresholds, batch_size, device, workers, scheduler, overwrite, quiet):
    """Generate a benchmark set: contours -> exact masks -> rendered images -> noise variants."""
    from cellgen.density import TierScheme
    from cellgen.pipeline import generated_set, matched_size

    psis, seed_list = _parse_floats(psi, "--psi"), _parse_seeds(seeds)  # bad options fail before models load
    gen = _generator(checkpoint, device)
    rend = None
    if (renderer or "").lower() != "none":
        from cellgen.render.renderer import Renderer

        rend = Renderer.load(renderer or _default_checkpoint("renderer"), device=device)
    size = size or matched_size(gen, rend)
    if rend is not None:
        rend.check_size(size, size)
    pixel_size = pixel_size or gen.pixel_size_at(size)
    tiers = TierScheme.parse(tier_measure, tier_thresholds)
    extra = {}
    if target_tier or target_count:
        if not n_target:
            raise click.UsageError("--tier/--count need --n (how many images to collect)")
        from cellgen.density_control import targeted_draws

        if target_tier:
            if target_tier not in tiers.names:
                raise click.BadParameter(f"choose from {', '.join(tiers.names)}", param_hint="--tier")
            accept = lambda m: tiers.assign(m[tiers.measure]) == target_tier  # noqa: E731
        else:
            lo, hi = _parse_count(target_count) if ":" in target_count else (int(target_count),) * 2
            accept = lambda m: lo <= m["count"] <= hi  # noqa: E731
        accepted, draws = targeted_draws(gen, accept, n_target, psis, pixel_size, first_seed=seed_list[0],
                                         batch_size=batch_size, output_size=size)
        pairs = [(a[0], a[1]) for a in accepted]
        extra = {"target": {"tier": target_tier, "count": target_count, "n": n_target, "draws": draws}}
        if not quiet:
            click.echo(f"accepted {len(pairs)} of {draws} draws")
    else:
        pairs = [(s, p) for s in seed_list for p in psis]
    set_args = dict(pixel_size_um=pixel_size, batch_size=batch_size, size=size, recipe_extra=extra,
                    variants=_parse_list(variants), tiers=tiers, command=_command_line(), overwrite=overwrite,
                    progress=not quiet)
    if workers > 1 or scheduler:
        from cellgen.distributed import sample_sharded

        # workers load the models from their files; same bytes as the single-process branch
        path = sample_sharded(output, checkpoint or _default_checkpoint("generator"), pairs, device=device,
                              renderer=None if rend is None else (renderer or _default_checkpoint("renderer")),
                              workers=workers, scheduler=scheduler, **set_args)
    else:
        path = generated_set(output, gen, pairs, renderer=rend, **set_args)
    _print_summary(path)


@cli.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Set whose masks to render.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="New set with images.")
@click.option("--checkpoint", help="Renderer checkpoint [default: shipped].")
@click.option("--variants", default="clean,gaussian,poisson", show_default=True)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def render(data, output, checkpoint, variants, batch_size, device, overwrite, quiet):
    """Render images for a set's masks into a new set, for example a masks-only set."""
    from cellgen.pipeline import rendered_set
    from cellgen.render.renderer import Renderer

    rend = Renderer.load(checkpoint or _default_checkpoint("renderer"), device=device)
    path = rendered_set(output, data, rend, batch_size=batch_size, variants=_parse_list(variants),
                        command=_command_line(), overwrite=overwrite, progress=not quiet)
    _print_summary(path)


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
@click.option("--format", "fmt", type=click.Choice(["tiff", "png"]), default="tiff", show_default=True)
@click.option("--variants", default=None, help="Variants to export (default: all).")
@click.option("-q", "--quiet", is_flag=True)
def export_cmd(file, out_dir, fmt, variants, quiet):
    """Write a set as one TIFF/PNG file per image and per mask."""
    from cellgen.datasets.export import export_set

    export_set(file, out_dir, fmt, _parse_list(variants) if variants else None, progress=not quiet)
    click.echo(f"exported {file} to {out_dir}")


@cli.group(cls=_Group)
def checkpoints():
    """Installed model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """Checkpoints in the default folder ($CELLGEN_CHECKPOINTS or the repository's checkpoints/)."""
    from cellgen.defaults import FILES, checkpoints_dir

    folder = checkpoints_dir()
    cards = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not cards:
        click.echo(f"no checkpoints in {folder}")
        return
    defaults = set(FILES.values())
    for card in cards:
        meta = json.loads(card.read_text())
        info = meta.get("info", {})
        pt = card.with_suffix(".pt")
        mark = " (default)" if pt.name in defaults else ""
        click.echo(f"{pt.name}{mark}: {meta.get('kind')}, preset {meta.get('config', {}).get('preset', '?')}, "
                   f"{info.get('steps', '?')} steps, {meta.get('storage')}, sha256 {meta.get('sha256', '?')[:16]}..."
                   + ("" if pt.exists() else "  [weights file missing]"))


@cli.group(cls=_Group)
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
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-dihedral", is_flag=True, help="Do not show real maps in random flips/rotations.")
@click.option("--max-minutes", type=float, help="Stop (and save) after this wall time; rerun to continue.")
@click.option("--no-resume", is_flag=True, help="Start over even if the folder holds a snapshot.")
@click.option("-q", "--quiet", is_flag=True)
def train_contours_cmd(data, output, preset, kimg, steps, batch, augment, seed, device, no_dihedral, max_minutes,
                       no_resume, quiet):
    """StyleGAN2 on label maps; writes OUTPUT/generator.pt, snapshots, samples, log.jsonl."""
    from cellgen.gen.train import train_contours

    try:
        augment = float(augment)
    except ValueError:
        pass
    path = train_contours(data, output, preset, kimg=kimg, steps=steps, batch=batch, seed=seed, device=device,
                          resume=not no_resume, augment=augment, progress=not quiet, dihedral=not no_dihedral,
                          max_minutes=max_minutes)
    click.echo(f"wrote {path}")


@train.command("renderer")
@click.option("--data", required=True, type=click.Path(), help="Benchmark set (HDF5) or exported folder of image+mask pairs.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--preset", default="small256", show_default=True, type=click.Choice(["tiny", "small256", "paper1024"]))
@click.option("--steps", type=click.IntRange(1), help="Training length in steps.")
@click.option("--epochs", type=float, help="Training length in passes over the data (instead of --steps).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--max-minutes", type=float, help="Stop (and save) after this wall time; rerun to continue.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False), help="VGG19 weights file to add the perceptual loss.")
@click.option("--init", type=click.Path(dir_okay=False), help="Start from a renderer checkpoint (e.g. the shipped "
              "one, to fine-tune on your images) or a run's snapshot.pt, instead of random weights.")
@click.option("--decay-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Last fraction of the steps over which the learning rate decays to 0.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-resume", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def train_renderer_cmd(data, output, preset, steps, epochs, batch, max_minutes, vgg_weights, init, decay_fraction,
                       seed, device, no_resume, quiet):
    """Pix2PixHD mask -> image; writes OUTPUT/renderer.pt, snapshots, triptychs, log.jsonl."""
    from cellgen.render.train import train_renderer

    path = train_renderer(data, output, preset, steps=steps, epochs=epochs, batch=batch, seed=seed, device=device,
                          resume=not no_resume, progress=not quiet, vgg_weights=vgg_weights, max_minutes=max_minutes,
                          init_from=init, decay_fraction=decay_fraction)
    click.echo(f"wrote {path}")


@train.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Checkpoint to write [default: RUN_DIR/generator.pt or renderer.pt].")
@click.option("--half", is_flag=True, help="Store float16 weights (half the size; loaded as float32).")
def train_export(run_dir, output, half):
    """Checkpoint from a run's last snapshot (a run paused by --max-minutes; it stays resumable)."""
    from cellgen.checkpoint import load_checkpoint
    from cellgen.gen.train import SNAPSHOT_KIND as GEN_RUN
    from cellgen.gen.train import export_generator
    from cellgen.render.train import SNAPSHOT_KIND as RENDER_RUN
    from cellgen.render.train import export_renderer

    snap = Path(run_dir) / "snapshot.pt"
    kind = load_checkpoint(snap).get("kind")
    if kind == GEN_RUN:
        path = export_generator(run_dir, output, half=half)
    elif kind == RENDER_RUN:
        path = export_renderer(run_dir, output, half=half)
    else:
        raise CellgenError(f"{snap} is a '{kind}' checkpoint, not a training snapshot")
    click.echo(f"wrote {path}")


@cli.group("eval", cls=_Group)
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
@click.option("--device", default="cpu", show_default=True)
def eval_render(checkpoint, data, output, heldout, segmenter_steps, max_images, seed, device):
    """Rendering fidelity (the paper's Table 3): a U-Net trained on real pairs segments rendered images."""
    from cellgen.render.evaluate import evaluate_renderer
    from cellgen.render.renderer import Renderer

    rend = Renderer.load(checkpoint or _default_checkpoint("renderer"), device=device)
    result = evaluate_renderer(rend, data, heldout=heldout, max_images=max_images, segmenter_steps=segmenter_steps, seed=seed,
                               device=device, out_dir=output, progress=True)
    click.echo(json.dumps({k: v for k, v in result.items() if k in ("rendered", "real")}, indent=2, default=float))
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
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for quality.json.")
@click.option("-q", "--quiet", is_flag=True)
def eval_quality(generated, reference, backbone, inception_weights, what, max_images, batch_size, device, output, quiet):
    """Feature-space Fréchet distance of generated vs training images and masks, per density tier."""
    from pathlib import Path

    from cellgen.fileio import atomic_path
    from cellgen.quality import load_backbone, quality_report, report_rows

    kinds = _parse_list(what)
    if not kinds or any(k not in ("images", "masks") for k in kinds):
        raise click.BadParameter("use images, masks or images,masks", param_hint="--what")
    net = load_backbone(backbone, inception_weights=inception_weights, device=device)
    result = quality_report(generated, reference, backbone=net, what=kinds, max_images=max_images,
                            batch_size=batch_size, progress=not quiet)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "quality.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    click.echo(f"{'':8}{'tier':8}{'n gen':>7}{'n ref':>7}{result['metric']:>16}{'ref split-half':>16}")
    for kind, tier, n_gen, n_ref, fd, floor in report_rows(result):
        if tier is None:
            click.echo(f"{kind:8}(no images in one of the sets)")
            continue
        click.echo(f"{kind:8}{tier:8}{n_gen:>7}{n_ref:>7}{fd:>16}{floor:>16}")
    click.echo(f"results in {out / 'quality.json'}")


@cli.group("gen", cls=_Group)
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
@click.option("--device", default="cpu", show_default=True)
def psi_sweep_cmd(checkpoint, seeds, psi, fit_seeds, alphas, measure, pixel_size, output, device):
    """Density vs psi per seed, its monotonic fraction, and the same for a fitted density direction."""
    from pathlib import Path

    from cellgen.density_control import (
        direction_sweep,
        fit_density_direction,
        monotonic_fraction,
        plot_sweep,
        psi_sweep,
    )
    from cellgen.fileio import atomic_path

    gen = _generator(checkpoint, device)
    pixel_size = pixel_size or float(gen.info.get("pixel_size_um", 0.5))
    seeds, psis, alphas = _parse_seeds(seeds), _parse_floats(psi, "--psi"), _parse_floats(alphas, "--alphas")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = psi_sweep(gen, seeds, psis, pixel_size, measure)
    direction = fit_density_direction(gen, _parse_seeds(fit_seeds), pixel_size, measure=measure)
    dtable = direction_sweep(gen, direction, seeds, alphas, pixel_size, measure=measure)
    result = {
        "generator_sha256": gen.sha256, "measure": measure, "seeds": seeds, "psi": psis, "psi_table": table.tolist(),
        "psi_monotonic_fraction": monotonic_fraction(table), "direction_alphas": alphas,
        "direction_table": dtable.tolist(), "direction_monotonic_fraction": monotonic_fraction(dtable),
        "direction_fit_r2": direction.r2, "direction_fit_seeds": direction.n_fit,
    }
    with atomic_path(out / "psi_sweep.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    plot_sweep(psis, table, out / "psi_sweep.png", "psi", measure,
               f"psi: {100 * result['psi_monotonic_fraction']:.0f}% of seeds monotonic")
    plot_sweep(alphas, dtable, out / "direction_sweep.png", "alpha along density direction", measure,
               f"W direction: {100 * result['direction_monotonic_fraction']:.0f}% of seeds monotonic")
    click.echo(f"psi: {100 * result['psi_monotonic_fraction']:.0f}% of {len(seeds)} seeds change {measure} "
               f"monotonically; density direction: {100 * result['direction_monotonic_fraction']:.0f}% "
               f"(fit R^2 {direction.r2:.2f}); results in {out}/")


@cli.group(cls=_Group)
def datasets():
    """Benchmark-set files: verify and inspect."""


def _set_file(target: str):
    """A registered NAME[@VERSION] (from the cache) or a file path -> (path, registry entry or None)."""
    from pathlib import Path

    from cellgen.datasets import registry

    if Path(target).exists() or target.endswith((".h5", ".hdf5")):
        return Path(target), None
    name, version, entry = registry.resolve(target)
    path = registry.cached_path(name, version)
    if not path.exists():
        raise CellgenError(f"{name}@{version} is not in the cache ({path}); "
                           f"run 'cellgen datasets download {name}' or 'cellgen datasets build {name}'")
    return path, entry


@datasets.command()
@click.argument("target")
def verify(target):
    """Check a set (FILE or registered NAME): checksum, schema, shapes, dtypes, masks, tiers."""
    from cellgen.checkpoint import sha256_of
    from cellgen.datasets.h5 import verify as verify_set

    path, entry = _set_file(target)
    if entry is not None and entry.get("sha256") and sha256_of(path) != entry["sha256"]:
        raise CellgenError(f"{path} does not match the registered sha256 of {target}: corrupt or altered")
    summary = verify_set(path)
    tiers = " ".join(f"{k}:{v}" for k, v in summary["tiers"].items())
    click.echo(
        f"OK {path}: {summary['n_images']} images {summary['image_size'][0]}x{summary['image_size'][1]}, "
        f"variants {','.join(summary['variants']) or 'none (masks only)'}, tiers {tiers}"
        + (", sha256 matches the registry" if entry is not None else "")
    )


@datasets.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(target, as_json):
    """Counts per tier and variant, and provenance, of a FILE or registered NAME."""
    from cellgen.datasets.info import set_info

    file, _ = _set_file(target)
    data = set_info(file)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{file}: {data['n_images']} images {data['image_size'][0]}x{data['image_size'][1]} "
               f"at {data['pixel_size_um']} um/px")
    click.echo(f"  tiers ({data['tier_scheme']['measure']} thresholds {data['tier_scheme']['thresholds']}): "
               + ", ".join(f"{k} {v}" for k, v in data["tiers"].items()))
    for v, s in data["variants"].items():
        click.echo(f"  variant {v}: " + (f"SNR {s['snr_db_mean']:.1f} dB; {s['params']}" if s else "noise-free"))
    for k in ("cellgen_version", "command", "generator_sha256", "renderer_sha256"):
        click.echo(f"  {k}: {data['provenance'].get(k) or '-'}")


def _parse_settings(pairs) -> dict:
    """``--set KEY=VALUE`` method settings; values parsed as JSON where they can be."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            out[key.replace("-", "_")] = value
    return out


@cli.group(cls=_Group, invoke_without_command=True)
@click.option("--method", help="watershed, cellprofiler, cellpose, deepcell or predictions.")
@click.option("--data", type=click.Path(dir_okay=False), help="Benchmark set (HDF5) to segment and score.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Results folder [default: results/METHOD-SET].")
@click.option("--model", help="Model name or weights path (cellpose: cyto3/cyto2/cyto or PATH; deepcell: PATH).")
@click.option("--nuclei-model", help="CellPose model for nuclei (name or PATH).")
@click.option("--diameter", type=float, help="Expected cell diameter in pixels (CellPose); default automatic.")
@click.option("--predictions", type=click.Path(), help="With --method predictions: HDF5 file or folder of label maps.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Method setting, e.g. --set threshold_method=otsu.")
@click.option("--variant", "variants", multiple=True, help="Image variant(s) to score [default: all in the set].")
@click.option("--tier", "tiers", multiple=True, help="Density tier(s) to score [default: all].")
@click.option("--limit", type=click.IntRange(1), help="Score at most this many images.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1), help="Worker processes, one image each.")
@_WORKERS
@_SCHEDULER
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(10), help="Bootstrap resamples for CIs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def bench(ctx, method, data, output, model, nuclei_model, diameter, predictions, settings, variants, tiers,
          limit, jobs, workers, scheduler, n_boot, quiet):
    """Segment a set with a method and score it per density tier and noise variant."""
    if ctx.invoked_subcommand is not None:
        return
    if not method or not data:
        raise click.UsageError("cellgen bench needs --method and --data (or a subcommand: compare, setup)", ctx)
    from pathlib import Path

    from cellgen.bench.report import format_table, write_reports
    from cellgen.bench.runner import run_bench
    from cellgen.datasets.h5 import BenchmarkSet

    data = str(_set_file(data)[0])  # a registered set name works as well as a path
    options = _parse_settings(settings)
    given = dict(model=model, nuclei_model=nuclei_model, diameter=diameter, predictions=predictions)
    options.update({k: v for k, v in given.items() if v is not None})
    out = Path(output) if output else Path("results") / f"{method}-{Path(data).stem}"
    run_bench(data, method, out, options=options, variants=list(variants) or None, tiers=list(tiers) or None,
              limit=limit, jobs=jobs, progress=not quiet, command=_command_line(), workers=workers,
              scheduler=scheduler)
    with BenchmarkSet(data) as ds:
        tier_names = list(ds.tier_scheme.names)
    rows = write_reports(out, tier_names, n_boot=n_boot)
    click.echo(format_table(rows))
    click.echo(f"results in {out}/ (per_image.csv, summary.csv, summary.json, summary.png)")


@bench.command("setup")
@click.argument("method", type=click.Choice(["deepcell"]))
def bench_setup(method):
    """Create a method's side environment now (deepcell: Python 3.10 + deepcell 0.12.10, ~2 GB)."""
    from cellgen.bench.methods.deepcell import ensure_deepcell_env

    click.echo(f"deepcell environment ready at {ensure_deepcell_env(progress=True)}")


@bench.command("compare")
@click.argument("results", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="Plot to write.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
def bench_compare(results, output, csv_path):
    """Several results folders side by side: one table and one plot."""
    from pathlib import Path

    from cellgen.bench.report import _write_csv, compare

    table, rows = compare(results, output)
    click.echo(table)
    if csv_path:
        _write_csv(Path(csv_path), rows)
    click.echo(f"wrote {output}")


@datasets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def datasets_list(as_json):
    """Registered benchmark sets: name, version, size, sha256, addresses, license."""
    from cellgen.datasets import registry

    reg = registry.load_registry()
    if as_json:
        click.echo(json.dumps(reg, indent=2))
        return
    for name, s in reg["sets"].items():
        for version, e in s["versions"].items():
            cached = registry.cached_path(name, version).exists()
            size = f"{e['size_bytes'] / 1e6:.1f} MB" if e.get("size_bytes") else "?"
            where = ", ".join(e.get("urls", []) + e.get("mirrors", [])) or "not published: build locally"
            click.echo(f"{name}@{version}{' (latest)' if version == s['latest'] else ''}"
                       f"{'  [cached]' if cached else ''}\n  {e['description']}\n"
                       f"  {size}, schema {e.get('schema_version')}, sha256 {e.get('sha256') or '?'}\n"
                       f"  download: {where}\n  license: {e.get('license')}\n  cite: {e.get('citation')}")


@datasets.command("download")
@click.argument("name")
@click.option("--url", help="Download from this mirror instead of the registered addresses.")
@click.option("-q", "--quiet", is_flag=True)
def datasets_download(name, url, quiet):
    """Fetch NAME[@VERSION] into the cache (resumes, checks sha256)."""
    from cellgen.datasets import registry

    click.echo(f"{registry.download(name, url=url, progress=not quiet)}")


@datasets.command("build")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of the cache.")
@click.option("--no-check", is_flag=True, help="Keep the result even if its sha256 differs from the registry.")
@click.option("-q", "--quiet", is_flag=True)
def datasets_build(name, output, no_check, quiet):
    """Rebuild NAME[@VERSION] from its recipe and check it has the registered sha256."""
    from cellgen.datasets import registry

    path, digest = registry.build(name, output, check=not no_check, progress=not quiet)
    click.echo(f"built {path}\nsha256 {digest}")


@datasets.command("real")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write [default: NAME.h5].")
@click.option("--overwrite", is_flag=True)
def datasets_real(name, output, overwrite):
    """Build a small real reference set from data a package ships (dsb2018)."""
    from cellgen.datasets.real import build_real_set

    path = build_real_set(name, output or f"{name}.h5", overwrite=overwrite)
    _print_summary(path)


def _print_summary(path):
    from cellgen.datasets.info import set_info

    data = set_info(path)
    tiers = ", ".join(f"{k} {v}" for k, v in data["tiers"].items())
    variants = ", ".join(data["variants"]) or "none (masks only)"
    click.echo(f"wrote {path}: {data['n_images']} images, tiers: {tiers}; variants: {variants}")


def main(argv=None):
    """Entry point: user-facing errors become one line on stderr and exit status 1."""
    try:
        cli.main(args=argv, prog_name="cellgen", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cellgen: aborted", err=True)
        sys.exit(130)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "cellgen"
        click.echo(f"cellgen: error: {err.format_message()} (see '{where} --help')", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        click.echo(f"cellgen: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except CellgenError as err:
        click.echo(f"cellgen: error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("cellgen: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
