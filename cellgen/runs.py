"""Training run folders, whichever network they train.

A run folder holds ``snapshot.pt`` (weights, optimiser and RNG state at the last tick; its
``kind`` says which trainer wrote it), ``log.jsonl`` and sample images; the trainers resume
from it, and refuse to when an option that changes the result differs from the snapshot's.

Public API: :func:`load_snapshot`, :func:`changed_options`, :func:`data_digest`,
:func:`append_log`, :func:`trim_log`, :func:`out_of_time`
(:func:`cellgen.snapshot_export.export_snapshot` writes a run's checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from cellgen.errors import ChecksumMismatch
from cellgen.fileio import atomic_path, sha256_of


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


def append_log(path, record: dict, sort_keys: bool = False) -> None:
    """Append ``record`` as one JSON line to a run's ``log.jsonl``."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=sort_keys) + "\n")


def trim_log(path, step: int, resume: bool = True) -> None:
    """Drop log lines of steps after the snapshot's ``step`` (a run killed between its log line
    and its snapshot), or all of them when the run starts over."""
    path = Path(path)
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step] if resume else []
    if keep != lines:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep))


def out_of_time(started: float, max_minutes: float | None) -> bool:
    """Whether a run started at ``started`` (``time.time()``) has used up ``max_minutes``."""
    return max_minutes is not None and time.time() - started > 60.0 * max_minutes
