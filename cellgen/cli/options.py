"""Option parsers, shared option decorators and argument helpers of the command line."""

from __future__ import annotations

import json

import click

from cellgen.defaults import default_checkpoint  # noqa: F401 - commands take it from here
from cellgen.errors import CellgenError

WORKERS = click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
                       help="Local worker processes; the work is sharded by image index, same bytes as 1.")
SCHEDULER = click.option("--scheduler", metavar="ADDRESS",
                         help="Dask distributed scheduler (tcp://host:8786) to shard the work over.")
NOISE_MODE = click.option("--noise-mode", default="random", show_default=True,
                          type=click.Choice(["random", "const", "none"]),
                          help="Generator noise: 'random' draws each image's noise from its seed; 'const' shares "
                               "one field (the official protocol: near-identical layouts across seeds).")


def parse_count(text: str):
    try:
        if ":" in text:
            lo, hi = (int(t) for t in text.split(":", 1))
            return (lo, hi)
        return int(text)
    except ValueError:
        raise click.BadParameter(f"expected N or LOW:HIGH, got {text!r}") from None


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_seeds(text: str) -> list[int]:
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


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not values:
        raise click.BadParameter("no values given", param_hint=name)
    return values


def load_generator(checkpoint, device):
    from cellgen.gen.generator import ContourGenerator

    return ContourGenerator.load(checkpoint or default_checkpoint("generator"), device=device)


def set_file(target: str):
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


def parse_settings(pairs) -> dict:
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
