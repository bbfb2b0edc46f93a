"""Writing files so that an interrupted or failed write never leaves a half file in place."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
from pathlib import Path

from cellgen.errors import CellgenError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any written file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if getattr(err, "errno", None) == 28:
            raise CellgenError(f"disk full while writing {path}") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(tmp):
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in blocks (files may be gigabytes)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path) -> str:
    """The sha256 hex digest of a file: what checkpoints, sets and the registry are identified by."""
    return file_digest(path, "sha256")


def write_csv_rows(path, rows: list[dict], fields: list[str] | None = None) -> None:
    """A CSV table of ``rows`` (header from ``fields`` or the first row), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            if rows or fields:
                writer = csv.DictWriter(fh, fieldnames=fields or list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


def read_csv_rows(path) -> list[dict]:
    """The rows of a CSV table as dicts of strings; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
