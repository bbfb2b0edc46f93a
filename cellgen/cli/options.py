"""Option parsers, shared option decorators and argument helpers of the command line."""

from __future__ import annotations

import json
import math

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


#: more images than this in one command is a typo, not a benchmark (and would not fit anyway)
MAX_IMAGES = 10_000_000
#: seeds are stored as int64 and feed numpy/torch generators: 0 <= seed <= MAX_SEED
MAX_SEED = 2**62


class FiniteFloat(click.ParamType):
    """A number that must be finite (no nan, inf) and lie in a range: checked before any work."""

    name = "number"

    def __init__(self, min=None, max=None, min_open=False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"expected a number, got {value!r}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, got {value}", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            self.fail(f"must be {'above' if self.min_open else 'at least'} {self.min:g}, got {value}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"must be at most {self.max:g}, got {value}", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
FRACTION = FiniteFloat(min=0, max=1)


class OutputFile(click.Path):
    """A file to write: not empty, not a folder (checked before any work)."""

    def __init__(self):
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        if not str(value).strip():
            self.fail("the output file name is empty", param, ctx)
        return super().convert(value, param, ctx)


OUTPUT_FILE = OutputFile()


class Device(click.ParamType):
    """``cpu``, ``cuda`` or ``cuda:N``; whether that GPU exists is checked when models load."""

    name = "device"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        kind, _, index = text.partition(":")
        if kind == "cpu" and not index or kind == "cuda" and (not index or index.isdigit()):
            return text
        self.fail(f"unknown device {value!r}; use cpu, cuda or cuda:N", param, ctx)


DEVICE = Device()

# options many commands share, spelt and explained the same way everywhere
DEVICE_OPTION = click.option("--device", default="cpu", show_default=True, type=DEVICE, help="cpu, cuda or cuda:N.")
QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace an existing output file.")


def tier_options(command):
    """``--tier-measure`` and ``--tier-thresholds``: the density tiers a set is graded by."""
    command = click.option("--tier-thresholds", default="700,1600", show_default=True,
                           help="Tier boundaries on that measure.")(command)
    return click.option("--tier-measure", default="cells_per_mm2", show_default=True,
                        help="Density measure that defines tiers.")(command)


def parse_count(text: str):
    try:
        if ":" in text:
            lo, hi = (int(t) for t in text.split(":", 1))
            count = (lo, hi)
        else:
            lo = hi = count = int(text)
    except ValueError:
        raise click.BadParameter(f"expected N or LOW:HIGH, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise click.BadParameter(f"expected N >= 0 or LOW:HIGH with 0 <= LOW <= HIGH, got {text!r}")
    return count


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_seeds(text: str) -> list[int]:
    """``0-299``, ``1,5,9`` or a mix (``0-9,20-29``) -> list of seeds, in order."""
    ranges = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            ranges.append(range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1))
    except ValueError:
        raise click.BadParameter(f"expected seeds like 0-299 or 1,5,9, got {text!r}", param_hint="--seeds") from None
    if any(r.start < 0 or r.stop - 1 > MAX_SEED for r in ranges):
        raise click.BadParameter(f"seeds must lie in 0..{MAX_SEED}, got {text!r}", param_hint="--seeds")
    total = sum(len(r) for r in ranges)  # counted before a list of a billion seeds is made
    if total > MAX_IMAGES:
        raise click.BadParameter(f"{total} seeds is more than the {MAX_IMAGES} one command can make",
                                 param_hint="--seeds")
    seeds = [s for r in ranges for s in r]
    if not seeds:
        raise click.BadParameter("no seeds given", param_hint="--seeds")
    return seeds


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"values must be finite numbers, got {text!r}", param_hint=name)
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
