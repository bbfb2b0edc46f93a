"""Where the shipped default checkpoints live, and how a user points elsewhere.

Lookup order for kind ``generator`` / ``renderer``: ``$CELLGEN_GENERATOR`` /
``$CELLGEN_RENDERER``, then ``$CELLGEN_CHECKPOINTS/{generator,renderer}.pt``, then the
repository's ``checkpoints/`` folder next to the package.
"""

from __future__ import annotations

import os
from pathlib import Path

from cellgen.errors import CellgenError

FILES = {"generator": "contour-generator-small128.pt", "renderer": "renderer-small256.pt"}
ENV = {"generator": "CELLGEN_GENERATOR", "renderer": "CELLGEN_RENDERER"}


def checkpoints_dir() -> Path:
    if os.environ.get("CELLGEN_CHECKPOINTS"):
        return Path(os.environ["CELLGEN_CHECKPOINTS"])
    return Path(__file__).resolve().parent.parent / "checkpoints"


def default_checkpoint(kind: str) -> Path:
    if os.environ.get(ENV[kind]):
        return Path(os.environ[ENV[kind]])
    path = checkpoints_dir() / FILES[kind]
    if not path.exists():
        raise CellgenError(
            f"no default {kind} checkpoint at {path}; pass --checkpoint/--renderer PATH, "
            f"or train one with 'cellgen train {'contours' if kind == 'generator' else 'renderer'}'"
        )
    return path
