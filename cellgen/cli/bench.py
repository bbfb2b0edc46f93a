"""``cellgen bench``: segment a set with a method and score it; compare results."""

from __future__ import annotations

from pathlib import Path

import click

from cellgen.cli.root import OrderedGroup, cli, command_line
from cellgen.cli.options import SCHEDULER, WORKERS, parse_settings, set_file


@cli.group(cls=OrderedGroup, invoke_without_command=True)
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
@click.option("--jobs", type=click.IntRange(1), hidden=True, help="Deprecated name of --workers.")
@WORKERS
@SCHEDULER
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
    from cellgen.bench.report import format_table, write_reports
    from cellgen.bench.runner import run_bench
    from cellgen.datasets.h5 import BenchmarkSet

    data = str(set_file(data)[0])  # a registered set name works as well as a path
    options = parse_settings(settings)
    given = dict(model=model, nuclei_model=nuclei_model, diameter=diameter, predictions=predictions)
    options.update({k: v for k, v in given.items() if v is not None})
    out = Path(output) if output else Path("results") / f"{method}-{Path(data).stem}"
    run_bench(data, method, out, options=options, variants=list(variants) or None, tiers=list(tiers) or None,
              limit=limit, progress=not quiet, command=command_line(), workers=max(workers, jobs or 1),
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
    from cellgen.bench.report import _write_csv, compare

    table, rows = compare(results, output)
    click.echo(table)
    if csv_path:
        _write_csv(Path(csv_path), rows)
    click.echo(f"wrote {output}")
