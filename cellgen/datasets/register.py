"""Maintainer tool: (re)build registered sets from their recipes and record what they are.

    python -m cellgen.datasets.register NAME [NAME ...]     # or --all
    python -m cellgen.datasets.register --all --registry path/to/registry.json

For each set (its latest version, or ``NAME@VERSION``) the recipe in the registry is run
and the entry gets the new file's ``sha256``, ``size_bytes``, ``fingerprint``
(:mod:`cellgen.datasets.fingerprint`) and ``built_with``. Run it whenever a change to the
generator, renderer, noise model or file layout changes what a recipe produces; commit the
registry it writes. The registry is rewritten atomically after each set, so an interrupted
run keeps the sets already done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path

_COMPACT = ("mean", "values", "shape")  # fingerprint lists: one line each in the registry file


def dumps_registry(data: dict) -> str:
    """The registry as indented JSON, with fingerprint tables kept on one line each."""
    tables: list[list] = []

    def strip(obj):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in _COMPACT and isinstance(v, list):
                    tables.append(v)
                    out[k] = f"@@table{len(tables) - 1}@@"
                else:
                    out[k] = strip(v)
            return out
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    text = json.dumps(strip(data), indent=2)
    for i, table in enumerate(tables):
        text = text.replace(f'"@@table{i}@@"', json.dumps(table, separators=(",", ":")), 1)
    return text + "\n"


def register(names: list[str], registry_path: Path, work_dir: Path, progress: bool = True) -> list[dict]:
    """Build each set and write its entry into ``registry_path``; returns one record per set."""
    import h5py

    from cellgen import __version__
    from cellgen.datasets import fingerprint, registry

    done = []
    for text in names:
        data = registry.load_registry(registry_path)
        name, version, entry = registry.resolve(text, data)
        out = work_dir / f"{name}-{version}.h5"
        start = time.perf_counter()
        built = registry.build(f"{name}@{version}", out, check=False, progress=progress, registry=data)
        seconds = time.perf_counter() - start
        entry.update(sha256=built.sha256, size_bytes=out.stat().st_size, fingerprint=fingerprint.fingerprint(out),
                     built_with=f"cellgen {__version__}, h5py {h5py.__version__}")
        with atomic_path(registry_path) as tmp:
            Path(tmp).write_text(dumps_registry(data))
        out.unlink()
        record = {"set": f"{name}@{version}", "sha256": built.sha256, "size_bytes": entry["size_bytes"],
                  "build_seconds": round(seconds, 1)}
        print(json.dumps(record), flush=True)
        done.append(record)
    return done


def main(argv=None) -> int:
    from cellgen.datasets import registry

    parser = argparse.ArgumentParser(prog="python -m cellgen.datasets.register", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="NAME or NAME@VERSION (default version: latest)")
    parser.add_argument("--all", action="store_true", help="every set in the registry (latest versions)")
    parser.add_argument("--registry", type=Path, default=registry.REGISTRY_FILE, help="registry file to update")
    parser.add_argument("--work-dir", type=Path, default=Path("."), help="where the sets are built (then deleted)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        names = list(args.names)
        if args.all:
            names += [n for n in registry.load_registry(args.registry)["sets"] if n not in names]
        if not names:
            parser.error("name a set, or pass --all")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        register(names, args.registry, args.work_dir, progress=not args.quiet)
    except CellgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
