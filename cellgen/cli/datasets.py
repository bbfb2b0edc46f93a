"""``cellgen datasets``: verify, inspect, list, download, build and real sets."""

from __future__ import annotations

import json

import click

from cellgen.cli.root import OrderedGroup, cli, command_line, print_summary
from cellgen.errors import CellgenError
from cellgen.cli.options import OVERWRITE, QUIET, set_file, tier_options


@cli.group(cls=OrderedGroup)
def datasets():
    """Benchmark-set files: verify and inspect."""


@datasets.command()
@click.argument("target")
@click.option("--against", metavar="NAME|FILE",
              help="Also compare array by array with a registered set's fingerprint (NAME[@VERSION]) or with "
                   "another set file: one line per array, exit 1 when they are not the same set.")
def verify(target, against):
    """Check a set (FILE or registered NAME): checksum, schema, shapes, dtypes, masks, tiers."""
    from cellgen.datasets import registry
    from cellgen.datasets.h5 import verify as verify_set

    path, entry = set_file(target)
    if entry is not None and not registry.is_registered_file(path, entry):
        raise CellgenError(f"{path} does not match the registered sha256 of {target}: corrupt or altered")
    if against:
        _compare_with(path, against)
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
    from cellgen.datasets.info import cells_text, set_info

    file, _ = set_file(target)
    data = set_info(file)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{file}: {data['n_images']} images {data['image_size'][0]}x{data['image_size'][1]} "
               f"at {data['pixel_size_um']} um/px")
    click.echo(f"  tiers ({data['tier_scheme']['measure']} thresholds {data['tier_scheme']['thresholds']}): "
               + ", ".join(f"{k} {v}" for k, v in data["tiers"].items()))
    click.echo(f"  cells per image: {cells_text(data)}")
    for v, s in data["variants"].items():
        click.echo(f"  variant {v}: " + (f"SNR {s['snr_db_mean']:.1f} dB; {s['description']}; SNR tiers "
                                         + ", ".join(f"{t} {n}" for t, n in s["snr_tiers"].items() if n)
                                         if s else "noise-free"))
    for k in ("cellgen_version", "command", "generator_sha256", "renderer_sha256"):
        click.echo(f"  {k}: {data['provenance'].get(k) or '-'}")


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
@QUIET
def datasets_download(name, url, quiet):
    """Fetch NAME[@VERSION] into the cache (resumes, checks sha256)."""
    from cellgen.datasets import registry

    click.echo(f"{registry.download(name, url=url, progress=not quiet)}")


@datasets.command("build")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of the cache.")
@click.option("--no-check", is_flag=True, help="Keep the result even if its sha256 differs from the registry.")
@QUIET
def datasets_build(name, output, no_check, quiet):
    """Rebuild NAME[@VERSION] from its recipe and check it is the registered set: the registered
    sha256, or (on a CPU that rounds differently) a matching fingerprint; see docs/format.md."""
    from cellgen.datasets import registry

    built = registry.build(name, output, check=not no_check, progress=not quiet)
    click.echo(f"built {built.path}\nsha256 {built.sha256}\naccepted: {built.check}")


def _compare_with(path, against: str) -> None:
    """``verify --against``: one line per array, then the verdict; exit 1 unless the same set."""
    from pathlib import Path

    from cellgen.datasets import fingerprint, registry

    if Path(against).exists() or against.endswith((".h5", ".hdf5")):
        checks, reference = fingerprint.compare_files(path, against), against
    else:
        name, version, entry = registry.resolve(against)
        if not entry.get("fingerprint"):
            raise CellgenError(f"{name}@{version} has no registered fingerprint to compare with")
        checks = fingerprint.compare(fingerprint.fingerprint(path), entry["fingerprint"])
        reference = f"registered {name}@{version}"
    for c in checks:
        click.echo(f"  {c.line()}")
    line = fingerprint.summary_line(checks, reference)
    if not all(c.ok for c in checks):
        raise CellgenError(f"{path} {line}")
    click.echo(f"{path}: {line}")


@datasets.command("real")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write [default: NAME.h5].")
@OVERWRITE
def datasets_real(name, output, overwrite):
    """Build a small real reference set from data a package ships (dsb2018)."""
    from cellgen.datasets.real import build_real_set

    path = build_real_set(name, output or f"{name}.h5", overwrite=overwrite)
    print_summary(path)


@datasets.command("import")
@click.argument("source", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HDF5 benchmark set to write.")
@click.option("--cells", type=click.Path(), help="Cell labels: a folder matched by file name, or a label stack.")
@click.option("--nuclei", type=click.Path(), help="Nucleus labels: a folder matched by file name, or a label stack.")
@click.option("--masks-are", type=click.Choice(["cell", "nucleus"]),
              help="What CellPose-style NAME_masks.tif label [default: nucleus when --channels maps only the "
                   "nucleus, else cell].")
@click.option("--channels", help="Which image channel is which, e.g. nucleus=0,cytoplasm=1 "
              "[default: nucleus=0 for one channel, nucleus=0,cytoplasm=1 for more].")
@click.option("--pixel-size", type=float, help="Micrometres per pixel [default: from the OME / ImageJ metadata].")
@click.option("--intensity", default="dtype", show_default=True, type=click.Choice(["dtype", "max", "percentile"]),
              help="Scaling to [0, 1]: the integer type's range (values kept exactly), the set's maximum per "
                   "channel, or each image's 0.1-99.9 percentiles.")
@click.option("--drop-cells-without-nucleus", is_flag=True,
              help="Leave out annotated cells that contain no annotated nucleus (else they are refused).")
@tier_options
@OVERWRITE
@QUIET
def datasets_import(source, output, cells, nuclei, masks_are, channels, pixel_size, intensity,
                    drop_cells_without_nucleus, tier_measure, tier_thresholds, overwrite, quiet):
    """Import annotated images (CellPose folders, image + label folders, TIFF stacks) as a set."""
    from cellgen.datasets.importing import import_set, parse_channels
    from cellgen.density import TierScheme

    path = import_set(source, output, cells=cells, nuclei=nuclei, masks_are=masks_are,
                      channels=parse_channels(channels), pixel_size_um=pixel_size, scaling=intensity,
                      drop_cells_without_nucleus=drop_cells_without_nucleus,
                      tiers=TierScheme.parse(tier_measure, tier_thresholds), command=command_line(),
                      overwrite=overwrite, progress=not quiet)
    print_summary(path)
