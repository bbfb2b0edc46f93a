"""Crash-safe writing of a set: complete images committed in small, atomically renamed parts.

While ``FILE`` is written, its images live in the folder ``FILE.partial/``:

* ``recipe.json`` -- the recipe of the run that owns the folder (written first, atomically);
* ``part-START-STOP.h5`` -- images ``START..STOP-1``, complete; each part is written as
  ``*.tmp``, synced and renamed, so a part either exists whole or not at all;
* ``*.tmp`` -- a part (or the final merge) being written: never trusted, deleted on resume.

When every image is committed the parts are copied, compressed chunk by compressed chunk,
in index order into ``FILE.partial/merged.h5.tmp``, which is synced and renamed to ``FILE``;
then the folder is removed. No moment of a SIGKILL can leave anything that a rerun cannot
use: it finds the committed parts, drops the rest and continues. The copy writes exactly
what a single uninterrupted pass would, so the result has the same bytes however often the
run was interrupted (and however the images were split into parts).

Public API: :class:`Staging`, :func:`copy_images`, :func:`sync_file`, :func:`check_free_space`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from cellgen.errors import DatasetError

_PART = re.compile(r"^part-(\d{9})-(\d{9})\.h5$")
#: bytes kept free beyond what a write needs: HDF5 metadata, other programs
FREE_MARGIN = 4 << 20


def sync_file(path):
    """Push a file's data to the disk, so a rename after it never names an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path):
    with contextlib.suppress(OSError):  # not every file system lets a folder be synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_free_space(folder, needed: int, what: str):
    """Refuse (one line) when ``folder``'s file system has less than ``needed`` bytes free."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_MARGIN:
        raise DatasetError(
            f"not enough disk space for {what}: about {_mb(needed + FREE_MARGIN)} needed, {_mb(free)} free "
            f"on {folder}; free space and rerun the same command to resume"
        )


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _is_disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) == 28 or "No space" in str(err) or "file write failed" in str(err)


def check_output(path) -> Path:
    """``path`` as an output file name, refused (one line) when it cannot be one."""
    if not str(path).strip():
        raise DatasetError("the output file name is empty (-o '')")
    path = Path(path)
    if path.is_dir() or not path.name or path.name in (".", ".."):
        raise DatasetError(f"{path} is a folder; give a file name such as {path / 'set.h5'}")
    return path


def staging_folder(path) -> Path:
    """Where the images of ``path`` are committed while it is written."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class Staging:
    """The ``FILE.partial/`` folder of one set being written (see the module docstring)."""

    def __init__(self, path: Path, recipe_json: str):
        self.path = Path(path)
        self.folder = staging_folder(self.path)
        self.recipe_json = recipe_json

    # -- lifecycle ---------------------------------------------------------------------------
    def clear(self):
        """Remove every trace of an earlier run (``--overwrite``), including older layouts."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
        elif self.folder.exists():  # a single-file .partial of cellgen <= 0.x
            self.folder.unlink()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.folder.with_name(self.folder.name + ".repack"))

    def open(self) -> int:
        """Create or resume the folder; returns how many images are already committed."""
        legacy = self.folder.with_name(self.folder.name + ".repack")
        with contextlib.suppress(FileNotFoundError):
            os.remove(legacy)  # a repack copy of the old single-file writer: rebuilt from the parts
        if self.folder.exists() and not self.folder.is_dir():
            # the old single-file .partial: a crash could leave it unreadable, so it is never
            # resumed in place; its images are rewritten from the command's source instead
            print(f"cellgen: note: {self.folder} is an interrupted write of an older cellgen; starting over",
                  file=sys.stderr)
            self.folder.unlink()
        recipe_file = self.folder / "recipe.json"
        if self.folder.is_dir() and recipe_file.exists():
            try:
                theirs = json.loads(recipe_file.read_text())
            except ValueError:
                theirs = None
            if theirs != json.loads(self.recipe_json):
                raise DatasetError(
                    f"{self.folder} is left from a run with other options; rerun that command to finish it, "
                    "or pass --overwrite to start over"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = recipe_file.with_name("recipe.json.tmp")
            tmp.write_text(self.recipe_json)
            sync_file(tmp)
            os.replace(tmp, recipe_file)
            _sync_dir(self.folder)
        return self._committed()

    def _committed(self) -> int:
        """Images 0..k-1 covered by whole parts; anything else in the folder is dropped."""
        parts = {}
        for f in self.folder.iterdir():
            m = _PART.match(f.name)
            if m:
                parts[int(m.group(1))] = (int(m.group(2)), f)
            elif f.name != "recipe.json":
                f.unlink()  # a part or merge cut short
        k = 0
        while k in parts:
            stop, f = parts.pop(k)
            if not _readable(f, stop - k):
                f.unlink()  # renamed but not whole: can only follow a power loss, not a kill
                break
            k = stop
        for stop, f in parts.values():  # beyond a gap: not usable in order
            f.unlink()
        return k

    def parts(self) -> list[Path]:
        found = sorted((int(m.group(1)), f) for f in self.folder.iterdir() if (m := _PART.match(f.name)))
        return [f for _, f in found]

    def commit(self, start: int, stop: int, write_part) -> None:
        """Write images ``start..stop-1`` with ``write_part(h5file)`` and make them count."""
        final = self.folder / f"part-{start:09d}-{stop:09d}.h5"
        tmp = final.with_name(final.name + ".tmp")
        try:
            with h5py.File(tmp, "w", track_order=False) as f:
                write_part(f)
            sync_file(tmp)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, (OSError, RuntimeError)) and _is_disk_full(err):
                raise DatasetError(f"disk full while writing {self.path} ({stop - start} images not saved); "
                                   "free space and rerun the same command to resume") from None
            if isinstance(err, OSError):
                raise DatasetError(f"cannot write {tmp}: {str(err).splitlines()[0]}; "
                                   "rerun the same command to resume") from None
            raise
        os.replace(tmp, final)
        _sync_dir(self.folder)

    def publish(self, write_final) -> Path:
        """Write the whole set with ``write_final(path)`` and move it to ``FILE``; clean up."""
        tmp = self.folder / "merged.h5.tmp"
        try:
            write_final(tmp)
            sync_file(tmp)
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, (OSError, RuntimeError)) and _is_disk_full(err):
                raise DatasetError(f"disk full while merging {self.path}; every image is kept in {self.folder}: "
                                   "free space and rerun the same command to finish") from None
            raise
        os.replace(tmp, self.path)
        _sync_dir(self.path.parent)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.path

    def done_before(self) -> bool:
        """``FILE`` is in place and this folder is what a killed run left right after the rename."""
        if not (self.folder.is_dir() and self.path.exists()):
            return False
        try:
            with h5py.File(self.path, "r") as f:
                whole = int(f.attrs.get("n_written", -1)) == int(f.attrs.get("n_images", -2))
                same = f.attrs.get("recipe") == self.recipe_json
        except OSError:
            return False
        if whole and same:
            shutil.rmtree(self.folder, ignore_errors=True)
            return True
        return False


def _readable(path: Path, n: int) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("n_part", -1)) == n
    except OSError:
        return False


def copy_images(dst: h5py.File, index: int, src: h5py.File, j: int, order: list[tuple[str, str | None]],
                columns: list[str]):
    """Image ``j`` of ``src`` -> image ``index`` of ``dst``: compressed chunks copied as they are
    (no second compression), each followed by its SNR row where it has one, then the metadata
    values; the order is the one the writer has always written in, which keeps the bytes."""
    for name, snr in order:
        d = src[name]
        offset = (j,) + (0,) * (d.ndim - 1)
        mask, raw = d.id.read_direct_chunk(offset)
        dst[name].id.write_direct_chunk((index,) + offset[1:], raw, mask)
        if snr is not None:
            dst[snr][index] = src[snr][j]
    for column in columns:
        d = src[f"metadata/{column}"]
        value = index if column == "index" else (d.asstr()[j] if h5py.check_string_dtype(d.dtype) else d[j])
        dst[f"metadata/{column}"][index] = value


def stored_bytes(f: h5py.File) -> int:
    """Bytes the datasets of an open file take on disk (what a copy of them needs)."""
    total = 0

    def add(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.id.get_storage_size()

    f.visititems(add)
    return total


def raw_bytes(shape, dtype) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize
