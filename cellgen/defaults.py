"""Where the shipped default checkpoints live, and how a user points elsewhere.

Lookup order for kind ``generator`` / ``renderer``: ``$CELLGEN_GENERATOR`` /
``$CELLGEN_RENDERER``, then the folder ``$CELLGEN_CHECKPOINTS``, then the models installed
with the package (``cellgen/checkpoints/``, which a wheel carries: ``setup.py`` copies the
files named in :data:`FILES` there, with their model cards), then the repository's
``checkpoints/`` folder next to the package (a source checkout or an editable install).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cellgen.errors import CellgenError

# a literal table: setup.py reads it (without importing cellgen) to put these files, and their
# .json/.md model cards, into the wheel
FILES = {"generator": "contour-generator-small128.pt", "renderer": "renderer-varied256-v2.pt"}
ENV = {"generator": "CELLGEN_GENERATOR", "renderer": "CELLGEN_RENDERER"}


PACKAGED = Path(__file__).resolve().parent / "checkpoints"
REPOSITORY = Path(__file__).resolve().parent.parent / "checkpoints"


def checkpoints_dir() -> Path:
    if os.environ.get("CELLGEN_CHECKPOINTS"):
        return Path(os.environ["CELLGEN_CHECKPOINTS"])
    return PACKAGED if PACKAGED.is_dir() else REPOSITORY


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


def model_cards(folder=None) -> list[dict]:
    """The model cards (``NAME.json`` beside ``NAME.pt``) in ``folder`` (default: the
    checkpoints folder), each with ``file``, ``default`` (one of :data:`FILES`) and
    ``weights_present`` added; sorted by file name."""
    folder = Path(folder) if folder is not None else checkpoints_dir()
    cards = []
    for card in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            meta = json.loads(card.read_text())
        except ValueError:
            raise CellgenError(f"{card} is not valid JSON (a model card)") from None
        pt = card.with_suffix(".pt")
        cards.append(dict(meta, file=pt.name, default=pt.name in FILES.values(), weights_present=pt.exists()))
    return cards
