"""Training run folders, whichever network they train.

A run folder holds ``snapshot.pt`` (weights, optimiser and RNG state at the last tick; its
``kind`` says which trainer wrote it), ``log.jsonl`` and sample images; the trainers resume
from it, and refuse to when an option that changes the result differs from the snapshot's.

Public API: :func:`load_snapshot`, :func:`changed_options`, :func:`data_digest`
(:func:`cellgen.snapshot_export.export_snapshot` writes a run's checkpoint).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cellgen.errors import ChecksumMismatch
from cellgen.fileio import sha256_of


def load_snapshot(path, kind: str) -> dict:
    """A run's snapshot; a stale ``.json`` beside a complete ``.pt`` is dropped first.

    ``snapshot.pt`` is replaced atomically before its ``.json``: a run killed between the two
    leaves a complete snapshot and a sidecar whose sha256 is the previous one's.
    """
    from cellgen.checkpoint import load_checkpoint

    path = Path(path)
    try:
        return load_checkpoint(path, kind)
    except ChecksumMismatch:
        path.with_suffix(".json").unlink()
        return load_checkpoint(path, kind)


def changed_options(saved: dict, now: dict, ignore=()) -> list[str]:
    """Names of the options recorded in ``saved`` whose values in ``now`` differ.

    Options an older snapshot did not record are not compared, so runs started by an
    earlier version still resume; ``ignore`` names options that may change (a moved path).
    """
    return [k for k in sorted(saved) if k not in ignore and saved[k] != now.get(k)]


def data_digest(data) -> str:
    """sha256 of training data: the file's, or for a folder, of its files' relative paths and
    contents in sorted order (so a copied or moved folder keeps its digest)."""
    data = Path(data)
    if data.is_file():
        return sha256_of(data)
    h = hashlib.sha256()
    for f in sorted(p for p in data.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(data).as_posix()}\0{sha256_of(f)}\n".encode())
    return h.hexdigest()
