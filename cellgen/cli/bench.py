"""``cellgen bench``: segment a set with a method and score it; compare results."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cellgen.cli.root import OrderedGroup, cli, command_line
from cellgen.cli.options import POSITIVE, QUIET, SCHEDULER, WORKERS, parse_settings, set_file


@cli.group(cls=OrderedGroup, invoke_without_command=True)
@click.option("--method", help="watershed, cellprofiler, cellpose, deepcell or predictions.")
@click.option("--data", type=click.Path(dir_okay=False), help="Benchmark set (HDF5) to segment and score.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Results folder [default: results/METHOD-SET].")
@click.option("--model", help="Model name or weights path (cellpose: cyto3/cyto2/cyto or PATH; deepcell: PATH).")
@click.option("--nuclei-model", help="CellPose model for nuclei (name or PATH).")
@click.option("--diameter", type=POSITIVE, help="Expected cell diameter in pixels (CellPose); default automatic.")
@click.option("--predictions", type=click.Path(), help="With --method predictions: HDF5 file or folder of label maps.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Method setting, e.g. --set threshold_method=otsu.")
@click.option("--variant", "variants", multiple=True, help="Image variant(s) to score [default: all in the set].")
@click.option("--tier", "tiers", multiple=True, help="Density tier(s) to score [default: all].")
@click.option("--limit", type=click.IntRange(1), help="Score at most this many images.")
@click.option("--exclude-border", "exclude_border", default=0, show_default=True, type=click.IntRange(0), metavar="PX",
              help="Drop true and predicted objects with a pixel within PX of the image border before matching "
                   "(the NeurIPS 2022 cell-segmentation challenge uses 2).")
@click.option("--jobs", type=click.IntRange(1), hidden=True, help="Deprecated name of --workers.")
@WORKERS
@SCHEDULER
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(10), help="Bootstrap resamples for CIs.")
@QUIET
@click.pass_context
def bench(ctx, method, data, output, model, nuclei_model, diameter, predictions, settings, variants, tiers,
          limit, exclude_border, jobs, workers, scheduler, n_boot, quiet):
    """Segment a set with a method and score it per density tier and noise variant."""
    if ctx.invoked_subcommand is not None:
        return
    if not method or not data:
        raise click.UsageError("cellgen bench needs --method and --data (or a subcommand: compare, setup)", ctx)
    from cellgen.bench.report import format_table, write_reports
    from cellgen.bench.runner import run_bench
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.datasets.verification import check_before_scoring

    path, entry = set_file(data)  # a registered set name works as well as a path
    check_before_scoring(path, entry)  # a corrupt or altered set is refused before any segmenting
    data = str(path)
    options = parse_settings(settings)
    given = dict(model=model, nuclei_model=nuclei_model, diameter=diameter, predictions=predictions)
    options.update({k: v for k, v in given.items() if v is not None})
    out = Path(output) if output else Path("results") / f"{method}-{Path(data).stem}"
    run_bench(data, method, out, options=options, variants=list(variants) or None, tiers=list(tiers) or None,
              limit=limit, progress=not quiet, command=command_line(), workers=max(workers, jobs or 1),
              scheduler=scheduler, exclude_border=exclude_border)
    with BenchmarkSet(data) as ds:
        tier_names = list(ds.tier_scheme.names)
    rows = write_reports(out, tier_names, n_boot=n_boot)
    click.echo(format_table(rows))
    from cellgen.bench.noise_axis import format_snr_table, read_snr_rows

    if read_snr_rows(out):  # per SNR tier x density tier: snr.csv, density_x_snr.png
        click.echo("\nper SNR tier (snr.csv, density_x_snr.png):\n" + format_snr_table(read_snr_rows(out)))
    click.echo(f"results in {out}/ (per_image.csv, summary.csv, summary.json, summary.png, crowding.csv, crowding.png)")


@bench.command("setup")
@click.argument("method", type=click.Choice(["deepcell"]))
def bench_setup(method):
    """Create a method's side environment now (deepcell: Python 3.10 + deepcell 0.12.10, ~2 GB)."""
    from cellgen.bench.methods.deepcell_env import ensure_deepcell_env

    click.echo(f"deepcell environment ready at {ensure_deepcell_env(progress=True)}")


@bench.command("compare")
@click.argument("results", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="Plot to write.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the table as CSV.")
@click.option("--real", "real_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Results folder(s) scored on real images [default: told by the scored sets' image sources].")
@click.option("--metric", default="f1@0.5", show_default=True, help="Score the transfer report ranks methods by.")
@click.option("--synthetic-variant", default="clean", show_default=True,
              help="Synthetic image variant compared with the real images.")
def bench_compare(results, output, csv_path, real_dirs, metric, synthetic_variant):
    """Several results folders side by side: one table and one plot.

    When some folders scored a real set and others a synthetic one, a transfer report
    follows: per density tier, the methods' rank agreement (Kendall's tau) between real and
    synthetic images and each method's score gap (OUTPUT-transfer.png / .json)."""
    from cellgen.bench.report import _write_csv, compare, compare_crowding
    from cellgen.bench.transfer import format_transfer, plot_transfer, split_results, transfer_report
    from cellgen.fileio import atomic_path

    table, rows = compare(list(results) + [d for d in real_dirs if d not in results], output)
    click.echo(table)
    if csv_path:
        _write_csv(Path(csv_path), rows)
    click.echo(f"wrote {output}")
    crowded = compare_crowding(results, Path(output).with_suffix("").as_posix() + "-crowding.png")
    if crowded:
        click.echo(f"wrote {crowded} (scores per object crowding, clean images)")
    real, synthetic = split_results(results, real_dirs)
    if real and synthetic:
        report = transfer_report(real, synthetic, metric=metric, synthetic_variant=synthetic_variant)
        stem = Path(output).with_suffix("")
        with atomic_path(Path(f"{stem}-transfer.json")) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        plot_transfer(report, f"{stem}-transfer.png")
        click.echo(format_transfer(report))
        click.echo(f"wrote {stem}-transfer.png and {stem}-transfer.json")
