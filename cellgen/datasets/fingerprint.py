"""What "the same set" means across machines: a per-array fingerprint of a set file.

A set rebuilt from its recipe on another CPU is the same set when

* every mask array, every metadata column and every attribute is identical (exact sha256
  of its values), and the file holds the same arrays with the same shapes and dtypes;
* every image array (``images``, ``noisy/<variant>/images``) has, per image and channel, a
  mean within :data:`IMAGE_MEAN_TOLERANCE` ADU of the registered one;
* every SNR array (``noisy/<variant>/snr_db``) is within :data:`SNR_TOLERANCE_DB` per value.

The tolerances exist because float32 convolutions round differently with other instruction
sets (oneDNN and MKL choose kernels per CPU): a clean image then differs by 1 ADU in a
fraction of a percent of its pixels, and a noise draw from it by a few ADU in a few pixels.
Masks are made in float64 (:mod:`cellgen.gen.generator`) and do not move. The file sha256
stays the check for downloads; this fingerprint is what a local rebuild is held to. The
rules are written down in ``docs/format.md`` ("The same set on every machine").

Everything here reads HDF5 with h5py and numpy only (no torch).

Public API: :func:`fingerprint`, :func:`compare`, :func:`compare_files`, :class:`ArrayCheck`,
:func:`summary_line`, :data:`SCHEME`, :data:`IMAGE_MEAN_TOLERANCE`, :data:`SNR_TOLERANCE_DB`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import h5py
import numpy as np

from cellgen.errors import DatasetError

SCHEME = 1
#: largest accepted change of one image channel's mean (ADU); measured across instruction
#: sets with float32 rendering: at most 0.0011 ADU (docs/format.md)
IMAGE_MEAN_TOLERANCE = 0.05
#: largest accepted change of one stored SNR value (dB); measured: at most 0.015 dB
SNR_TOLERANCE_DB = 0.1
_DECIMALS = 3  # stored means and SNRs are rounded to 0.001 (ADU or dB)
_IMAGE = re.compile(r"^(images|noisy/[^/]+/images)$")
_SNR = re.compile(r"^noisy/[^/]+/snr_db$")


def kind_of(name: str) -> str:
    """``image``, ``snr`` or ``exact``: how an array of a set is compared."""
    if _IMAGE.match(name):
        return "image"
    if _SNR.match(name):
        return "snr"
    return "exact"


# ----------------------------------------------------------------------------- computing


def _open(path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise DatasetError(f"no such file: {path}") from None
    except OSError:
        raise DatasetError(f"{path} is not a readable HDF5 file (corrupt, truncated or another format)") from None


def _plain(value):
    """An attribute value as JSON-able data (bytes as text, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OS" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _attr_digest(value) -> str:
    data = json.dumps(_plain(value), sort_keys=True, allow_nan=True).encode()
    return hashlib.sha256(data).hexdigest()


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return dict(sorted(found.items()))


def _attributes(f: h5py.File) -> dict[str, str]:
    """``object/attribute`` (``/name`` for the root) -> sha256 of its value."""
    out = {f"/{k}": _attr_digest(v) for k, v in f.attrs.items()}
    objects: list[str] = []
    f.visit(objects.append)
    for name in objects:
        for k, v in f[name].attrs.items():
            out[f"{name}/{k}"] = _attr_digest(v)
    return dict(sorted(out.items()))


def _rows(d: h5py.Dataset):
    """The dataset one leading-axis row (one image) at a time; small arrays in one read."""
    if d.ndim == 0:
        yield d[()]
        return
    if d.nbytes <= 1 << 24:
        yield from d[()]
        return
    for i in range(d.shape[0]):
        yield d[i]


def _hash_dataset(d: h5py.Dataset, stats=None) -> str:
    """sha256 over dtype, shape and the values (strings as UTF-8, NUL-separated)."""
    h = hashlib.sha256(f"{d.dtype.str if not h5py.check_string_dtype(d.dtype) else 'str'}{d.shape}".encode())
    if h5py.check_string_dtype(d.dtype):
        for s in np.atleast_1d(d.asstr()[()]):
            h.update(str(s).encode() + b"\0")
        return h.hexdigest()
    for row in _rows(d):
        row = np.ascontiguousarray(row)
        h.update(row.astype(row.dtype.newbyteorder("<"), copy=False).tobytes())
        if stats is not None:
            stats(row)
    return h.hexdigest()


def fingerprint(path) -> dict:
    """The fingerprint of a set file (see the module docstring), JSON-able."""
    arrays: dict[str, dict] = {}
    with _open(path) as f:
        for name, d in _datasets(f).items():
            entry = {"kind": kind_of(name), "shape": list(d.shape), "dtype": str(d.dtype)}
            if entry["kind"] == "image" and d.ndim >= 3:
                means = []

                def stats(row, means=means):
                    x = row.astype(np.float64).reshape(row.shape[0], -1)  # (channels, pixels)
                    means.append(np.round(x.mean(axis=1), _DECIMALS).tolist())

                entry["sha256"] = _hash_dataset(d, stats)
                entry["mean"] = means
            elif entry["kind"] == "snr":
                entry["sha256"] = _hash_dataset(d)
                entry["values"] = np.round(d[()].astype(np.float64), _DECIMALS).tolist()
            else:
                entry["kind"] = "exact"
                entry["sha256"] = _hash_dataset(d)
            arrays[name] = entry
        attributes = _attributes(f)
    return {"scheme": SCHEME, "arrays": arrays, "attributes": attributes}


# ----------------------------------------------------------------------------- comparing


@dataclass
class ArrayCheck:
    """The verdict on one array (or on the attributes) of a set against a reference."""

    name: str
    status: str  # identical | within tolerance | different | missing | unexpected
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "within tolerance")

    def line(self) -> str:
        return f"{self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def _worst(diff: np.ndarray, what: str, unit: str) -> tuple[float, str]:
    """Largest difference and where it is, for per-(image, channel) tables."""
    if diff.size == 0:
        return 0.0, ""
    flat = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)))
    img, ch = np.unravel_index(flat, diff.shape) if diff.ndim == 2 else (flat, 0)
    return float(diff.flat[flat]), f"max |d {what}| {diff.flat[flat]:.4g} {unit} at image {img} channel {ch}"


def _compare_tables(name, kind, mine, ref, tol) -> ArrayCheck:
    a, b = np.asarray(mine, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return ArrayCheck(name, "different", f"summary of shape {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    diff[np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))] = 0.0
    _, where = _worst(diff, "mean" if kind == "image" else "SNR", "ADU" if kind == "image" else "dB")
    # stored values are rounded: allow the rounding on both sides on top of the tolerance
    limit = tol + 10.0 ** -_DECIMALS
    bad = ~(diff <= limit)
    n_rows = int(bad.reshape(len(bad), -1).any(axis=1).sum()) if bad.size else 0
    if n_rows:
        return ArrayCheck(name, "different", f"{n_rows} of {len(a)} images beyond the tolerance of {tol:g}; {where}")
    return ArrayCheck(name, "within tolerance", f"{where}; tolerance {tol:g}" if where else "")


def compare(mine: dict, ref: dict) -> list[ArrayCheck]:
    """Check a fingerprint against a reference one, array by array (then the attributes)."""
    if not isinstance(ref, dict) or ref.get("scheme") != SCHEME or mine.get("scheme") != SCHEME:
        scheme = ref.get("scheme") if isinstance(ref, dict) else None
        raise DatasetError(f"fingerprint scheme {scheme!r} is not known to this cellgen "
                           f"(it reads scheme {SCHEME}); upgrade cellgen")
    try:
        return _compare(mine, ref)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DatasetError(f"the reference fingerprint is malformed ({type(err).__name__}: {err})") from None


def _compare(mine: dict, ref: dict) -> list[ArrayCheck]:
    checks: list[ArrayCheck] = []
    a_arr, r_arr = mine["arrays"], ref["arrays"]
    for name in sorted(set(a_arr) | set(r_arr)):
        if name not in a_arr:
            checks.append(ArrayCheck(name, "missing", "the reference has it"))
            continue
        if name not in r_arr:
            checks.append(ArrayCheck(name, "unexpected", "the reference has no such array"))
            continue
        a, r = a_arr[name], r_arr[name]
        if a["shape"] != r["shape"] or a["dtype"] != r["dtype"]:
            checks.append(ArrayCheck(name, "different", f"{a['dtype']} {tuple(a['shape'])}, reference "
                                                        f"{r['dtype']} {tuple(r['shape'])}"))
        elif a["sha256"] == r["sha256"]:
            checks.append(ArrayCheck(name, "identical"))
        elif r["kind"] == "image":
            checks.append(_compare_tables(name, "image", a["mean"], r["mean"], IMAGE_MEAN_TOLERANCE))
        elif r["kind"] == "snr":
            checks.append(_compare_tables(name, "snr", a["values"], r["values"], SNR_TOLERANCE_DB))
        else:
            checks.append(ArrayCheck(name, "different", "exact array: its values differ"))
    a_att, r_att = mine["attributes"], ref["attributes"]
    odd = sorted(k for k in set(a_att) | set(r_att) if a_att.get(k) != r_att.get(k))
    if odd:
        shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        checks.append(ArrayCheck("attributes", "different", f"{shown} differ"))
    else:
        checks.append(ArrayCheck("attributes", "identical", f"{len(r_att)} attributes"))
    return checks


def compare_files(path, reference) -> list[ArrayCheck]:
    """Two set files array by array: the fingerprint verdict, plus the pixel differences
    themselves (max |diff|, share of values and images that differ) for arrays that differ."""
    checks = compare(fingerprint(path), fingerprint(reference))
    with _open(path) as fa, _open(reference) as fb:
        for c in checks:
            if c.status not in ("within tolerance", "different") or c.name not in fa or c.name not in fb:
                continue
            da, db = fa[c.name], fb[c.name]
            if da.shape != db.shape or h5py.check_string_dtype(da.dtype) or da.dtype.kind not in "iufb":
                continue
            worst, n_diff, rows = 0.0, 0, 0
            for ra, rb in zip(_rows(da), _rows(db)):
                d = np.abs(np.asarray(ra, np.float64) - np.asarray(rb, np.float64))
                d[np.isnan(d) & np.isnan(np.asarray(ra, np.float64))] = 0.0
                k = int(np.count_nonzero(d))
                if k:
                    n_diff, rows, worst = n_diff + k, rows + 1, max(worst, float(np.nanmax(d)))
            size = max(1, int(np.prod(da.shape)))
            extra = (f"max |diff| {worst:g} in {n_diff / size:.4%} of values, {rows} of "
                     f"{da.shape[0] if da.ndim else 1} images")
            c.detail = f"{c.detail}; {extra}" if c.detail else extra
    return checks


def summary_line(checks: list[ArrayCheck], reference: str = "the registered set") -> str:
    """One line: which check passed, or which arrays failed."""
    bad = [c for c in checks if not c.ok]
    if bad:
        return f"differs from {reference}: " + "; ".join(c.line() for c in bad[:4]) + (
            f"; and {len(bad) - 4} more" if len(bad) > 4 else "")
    loose = [c.name for c in checks if c.status == "within tolerance"]
    if not loose:
        return f"every array and attribute identical to {reference}"
    return (f"the same set as {reference}: masks, metadata and attributes identical; {', '.join(loose)} within the "
            f"image tolerance ({IMAGE_MEAN_TOLERANCE:g} ADU per image mean, {SNR_TOLERANCE_DB:g} dB SNR)")
