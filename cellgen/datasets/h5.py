"""The benchmark-set HDF5 layout: writer, lazy reader and verifier.

The layout is documented in ``docs/format.md``; :data:`SCHEMA_VERSION` names its version.
In short (N images of H x W):

* root attributes: ``format`` = ``"cellgen-benchmark"``, ``schema_version``, provenance
  (``cellgen_version``, ``command``, ``recipe`` JSON, ``generator_sha256``,
  ``renderer_sha256``), ``pixel_size_um``, ``tier_scheme`` JSON, ``channel_names``,
  ``n_images``, ``image_size``, ``intensity_full_scale``, ``variants``.
* ``images`` (N, 2, H, W) uint16, channel 0 nucleus, 1 cytoplasm (absent in masks-only sets)
* ``masks/semantic`` (N, H, W) uint8; ``masks/cell``, ``masks/nucleus`` (N, H, W) uint32
* ``noisy/<variant>/images`` (N, 2, H, W) uint16 ADU, attribute ``params`` (JSON);
  ``noisy/<variant>/snr_db`` (N, 2) float32
* ``metadata/<column>`` (N,): one 1-D dataset per column (see :data:`METADATA_COLUMNS`)

Image datasets are chunked one image per chunk and gzip-compressed. The writer commits
complete images in small part files under ``PATH.partial/`` (atomic renames, see
:mod:`cellgen.datasets.staging`) and merges them into ``PATH`` when every image is in. An
interrupted run (Ctrl-C, SIGTERM, SIGKILL, full disk) resumes from the last committed part, and
its file ends up byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cellgen import __version__
from cellgen.datasets.staging import (
    Staging,
    check_free_space,
    check_output,
    copy_images,
    staging_folder,
    stored_bytes,
)
from cellgen.density import TierScheme
from cellgen.errors import CellgenError, DatasetError
from cellgen.masks import Masks, validate

FORMAT = "cellgen-benchmark"
SCHEMA_VERSION = 1
CHANNELS = ("nucleus", "cytoplasm")
FULL_SCALE = 65535
CLEAN = "clean"

#: metadata columns every set has: name -> (dtype, meaning)
METADATA_COLUMNS = {
    "index": ("int64", "image index in the set"),
    "seed": ("int64", "seed that produced the image (simulator seed or generator seed)"),
    "psi": ("float64", "truncation psi of the contour generator (NaN when not generated)"),
    "source": ("str", "what produced the image: simulate, stylegan2, real:<name>"),
    "tier": ("str", "density tier from the set's tier_scheme"),
    "count": ("float64", "number of cells"),
    "cells_per_mm2": ("float64", "cells per mm^2"),
    "area_fraction": ("float64", "fraction of pixels inside cells"),
    "touching_fraction": ("float64", "fraction of cells touching another cell"),
    "mean_nn_distance_um": ("float64", "mean nearest-neighbour centroid distance (um)"),
}
_STR = h5py.string_dtype("utf-8")
_GZIP = dict(compression="gzip", compression_opts=4, shuffle=True)


@dataclass
class Sample:
    """One image's record as written to / read from a set."""

    masks: Masks
    image: np.ndarray | None = None  # (2, H, W) uint16
    noisy: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # variant -> (ADU, snr_db)
    meta: dict = field(default_factory=dict)


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode, track_order=False)
    except FileNotFoundError:
        raise DatasetError(f"no such file: {path}") from None
    except OSError as err:
        text = str(err)
        if "No such file" in text:
            raise DatasetError(f"no such file: {path}") from None
        if "signature" in text or "not an HDF5" in text or "file format" in text or "truncated" in text.lower():
            raise DatasetError(f"{path} is not a readable HDF5 file (corrupt, truncated or another format)") from None
        raise DatasetError(f"cannot open {path}: {text.splitlines()[0]}") from None


class BenchmarkWriter:
    """Streams a benchmark set to disk, one image at a time, in index order.

    ``recipe`` is a JSON-serialisable description of everything that decides the content;
    a leftover ``PATH.partial/`` whose recipe matches is resumed (``start`` images are already
    in), any other is refused; ``overwrite`` always starts clean. Images are committed in
    parts every :attr:`PART_SECONDS` (or :attr:`PART_IMAGES`), so an interruption loses at
    most that much work; :meth:`finish` merges the parts into ``PATH``.
    """

    def __init__(
        self,
        path,
        n_images: int,
        image_size: tuple[int, int],
        *,
        pixel_size_um: float,
        tier_scheme: TierScheme,
        variants: dict[str, str],
        with_images: bool = True,
        recipe: dict,
        command: str = "",
        generator_sha256: str = "",
        renderer_sha256: str = "",
        extra_attrs: dict | None = None,
        overwrite: bool = False,
    ):
        self.path = check_output(path)
        self.partial = staging_folder(self.path)
        self.n = int(n_images)
        self.size = tuple(int(s) for s in image_size)
        self.variants = dict(variants)  # name -> params JSON
        self.with_images = with_images
        self.recipe_json = json.dumps(recipe, sort_keys=True)
        if self.variants and not with_images:
            raise DatasetError("noisy variants need images; a masks-only set has none")
        self.attrs = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "cellgen_version": __version__,
            "command": command,
            "recipe": self.recipe_json,
            "generator_sha256": generator_sha256,
            "renderer_sha256": renderer_sha256,
            "pixel_size_um": float(pixel_size_um),
            "tier_scheme": tier_scheme.to_json(),
            "channel_names": json.dumps(list(CHANNELS)),
            "n_images": self.n,
            "image_size": np.asarray(self.size, dtype=np.int64),
            "intensity_full_scale": FULL_SCALE if with_images else 0,
            "variants": json.dumps(([CLEAN] if with_images else []) + list(self.variants)),
            "compartments": json.dumps(["cell", "nucleus"]),
        }
        self.attrs.update(extra_attrs or {})
        self._staging = Staging(self.path, self.recipe_json)
        self._order = ([("images", None)] if with_images else []) + [
            ("masks/semantic", None), ("masks/cell", None), ("masks/nucleus", None)
        ] + [(f"noisy/{name}/images", f"noisy/{name}/snr_db") for name in self.variants]
        self._buffer: list[dict] = []
        self._last_commit = time.monotonic()
        self.finished = False
        self._failed = False
        if overwrite:
            self._staging.clear()
        elif self.path.exists():
            if not self._staging.done_before():
                raise DatasetError(f"{self.path} already exists; pass --overwrite to replace it")
            self.finished = True  # a killed run had just put it in place
        self.start = self.n if self.finished else self._staging.open()
        self.resumed = self.start > 0
        self._written = self.start

    # -- layout -----------------------------------------------------------------------
    def _create(self, path: Path) -> h5py.File:
        try:
            f = h5py.File(path, "w", track_order=False)
        except OSError as err:
            raise DatasetError(f"cannot create {path}: {str(err).splitlines()[0]}") from None
        for key, value in self.attrs.items():
            f.attrs[key] = value
        f.attrs["n_written"] = 0
        self._layout(f, self.n)
        return f

    def _layout(self, f: h5py.File, n: int):
        h, w = self.size
        if self.with_images:
            self._dataset(f, "images", (n, 2, h, w), np.uint16, chunk=(1, 2, h, w))
        self._dataset(f, "masks/semantic", (n, h, w), np.uint8, chunk=(1, h, w))
        self._dataset(f, "masks/cell", (n, h, w), np.uint32, chunk=(1, h, w))
        self._dataset(f, "masks/nucleus", (n, h, w), np.uint32, chunk=(1, h, w))
        for name, params in self.variants.items():
            d = self._dataset(f, f"noisy/{name}/images", (n, 2, h, w), np.uint16, chunk=(1, 2, h, w))
            d.attrs["params"] = params
            self._dataset(f, f"noisy/{name}/snr_db", (n, 2), np.float32)
        for column, (dtype, meaning) in METADATA_COLUMNS.items():
            d = self._dataset(f, f"metadata/{column}", (n,), _STR if dtype == "str" else np.dtype(dtype))
            d.attrs["description"] = meaning

    @staticmethod
    def _dataset(f, name, shape, dtype, chunk=None):
        kwargs = dict(track_times=False)
        if chunk is not None and shape[0] > 0:
            kwargs.update(chunks=chunk, **_GZIP)
        return f.create_dataset(name, shape=shape, dtype=dtype, **kwargs)

    # -- writing ----------------------------------------------------------------------
    #: a part is committed after this many images, seconds or bytes, whichever comes first
    PART_IMAGES = 64
    PART_SECONDS = 5.0
    PART_BYTES = 64 << 20

    def write(self, index: int, sample: Sample) -> None:
        """Add image ``index``; it is on disk for good once its part is committed (seconds later)."""
        if index != self._written:
            raise DatasetError(f"images must be written in order: expected index {self._written}, got {index}")
        masks = sample.masks
        problems = validate(masks.cell, masks.nucleus, masks.semantic, self.size)
        if problems:
            raise DatasetError(f"image {index}: invalid masks: {problems[0]}")
        row = {"masks/semantic": masks.semantic, "masks/cell": masks.cell, "masks/nucleus": masks.nucleus}
        if self.with_images:
            row["images"] = _checked(sample.image, (2, *self.size), np.uint16, f"image {index}")
        for name in self.variants:
            if name not in sample.noisy:
                raise DatasetError(f"image {index}: noisy variant '{name}' missing")
            adu, snr = sample.noisy[name]
            row[f"noisy/{name}/images"] = _checked(adu, (2, *self.size), np.uint16, f"{name} image {index}")
            row[f"noisy/{name}/snr_db"] = np.asarray(snr, np.float32)
        meta = dict(sample.meta, index=index)
        for column, (dtype, _) in METADATA_COLUMNS.items():
            row[f"metadata/{column}"] = meta.get(column, "" if dtype == "str" else (np.nan if dtype == "float64" else -1))
        self._buffer.append(row)
        self._written += 1
        if (len(self._buffer) >= self.PART_IMAGES or time.monotonic() - self._last_commit >= self.PART_SECONDS
                or len(self._buffer) * self._image_bytes() >= self.PART_BYTES):
            self._commit()

    def _image_bytes(self) -> int:
        h, w = self.size
        return h * w * (9 + 4 * ((1 if self.with_images else 0) + len(self.variants)))

    def _commit(self):
        if not self._buffer:
            return
        rows, start = self._buffer, self._written - len(self._buffer)
        check_free_space(self._staging.folder, len(rows) * self._image_bytes(), f"images {start}..{self._written - 1}")

        def write_part(f: h5py.File):
            f.attrs["n_part"] = len(rows)
            self._layout(f, len(rows))
            for name in rows[0]:
                values = [r[name] for r in rows]
                f[name][...] = values if name.startswith("metadata/") else np.stack(values)

        try:
            self._staging.commit(start, self._written, write_part)
        except BaseException:
            self._failed = True  # no second try on the way out (a full disk stays full)
            raise
        self._buffer = []
        self._last_commit = time.monotonic()

    def finish(self, sources: list | None = None) -> Path:
        """Commit what is buffered, merge every image into ``FILE`` atomically; returns its path.

        ``sources``: finished sets (paths, in index order, covering ``0..n``) to merge instead of
        this writer's own parts: the merge of a sharded run.
        """
        if self.finished:
            return self.path
        self._commit()
        if sources is None:
            if self._written != self.n:
                raise DatasetError(f"only {self._written} of {self.n} images were written; "
                                   f"{self._staging.folder} kept for resuming")
            sources = self._staging.parts()
        opened = [h5py.File(p, "r") for p in sources]
        try:
            check_free_space(self.path.parent, sum(stored_bytes(f) for f in opened), f"the final {self.path}")
            columns = list(METADATA_COLUMNS)

            def write_final(tmp: Path):
                with self._create(tmp) as out:
                    index = 0
                    for src in opened:
                        for j in range(int(src.attrs.get("n_part", src.attrs.get("n_images", 0)))):
                            copy_images(out, index, src, j, self._order, columns)
                            index += 1
                            # counted and flushed per image as the writer always did: the same bytes
                            out.attrs["n_written"] = index
                            out.flush()
                    if index != self.n:
                        raise DatasetError(f"the parts hold {index} images, the set needs {self.n}")

            path = self._staging.publish(write_final)
        finally:
            for f in opened:
                f.close()
        self.finished = True
        return path

    def close(self):
        """Commit complete images (also on an error or Ctrl-C: what is done stays done)."""
        if not self.finished and self._buffer and not self._failed:
            self._commit()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
            return
        try:  # keep what is complete, but never hide the error that stopped the run
            self.close()
        except (CellgenError, OSError):
            pass


def _checked(array, shape, dtype, what):
    if array is None:
        raise DatasetError(f"{what}: missing")
    array = np.asarray(array)
    if array.shape != shape:
        raise DatasetError(f"{what}: shape {array.shape}, expected {shape}")
    if array.dtype != dtype:
        raise DatasetError(f"{what}: dtype {array.dtype}, expected {np.dtype(dtype).name}")
    return array


class BenchmarkSet:
    """Lazy, sliceable reader of a benchmark set; nothing is loaded until asked for."""

    def __init__(self, path, allow_partial: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"no such file: {self.path}")
        self._f = _open_h5(self.path, "r")
        f = self._f
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            self._f.close()
            raise DatasetError(f"{self.path} is not a cellgen benchmark set (format attribute {fmt!r})")
        version = int(f.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            self._f.close()
            raise DatasetError(
                f"{self.path} has schema_version {version}; this cellgen (v{__version__}) reads {SCHEMA_VERSION}"
            )
        if not allow_partial and int(f.attrs.get("n_written", -1)) != int(f.attrs.get("n_images", -2)):
            self._f.close()
            raise DatasetError(f"{self.path} is incomplete: an interrupted write (rerun its command to resume)")
        try:
            self.n = int(f.attrs["n_images"])
            self.image_size = tuple(int(s) for s in f.attrs["image_size"])
            self.pixel_size_um = float(f.attrs["pixel_size_um"])
            self.tier_scheme = TierScheme.from_json(f.attrs["tier_scheme"])
            self.variants = json.loads(f.attrs["variants"])
        except (KeyError, ValueError, TypeError, CellgenError) as err:
            self._f.close()
            raise DatasetError(f"{self.path}: missing or unreadable root attribute: {err}") from None
        self._meta: dict[str, np.ndarray] | None = None

    # -- provenance -------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self._f.attrs.items():
            out[k] = v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
        return out

    @property
    def has_images(self) -> bool:
        return "images" in self._f

    @property
    def compartments(self) -> list[str]:
        """The annotated compartments (``cell``, ``nucleus``): an imported nucleus-only set
        stores its nuclei as cells too, and only what is listed here is real."""
        return list(json.loads(self.attrs.get("compartments", '["cell", "nucleus"]')))

    @property
    def metadata(self) -> dict[str, np.ndarray]:
        if self._meta is None:
            group = self._f["metadata"]
            meta = {}
            for name in group:
                d = group[name]
                meta[name] = d.asstr()[()] if h5py.check_string_dtype(d.dtype) else d[()]
            self._meta = meta
        return self._meta

    def noise_params(self, variant: str) -> str:
        self.require_variant(variant)
        return self._f[f"noisy/{variant}/images"].attrs["params"] if variant != CLEAN else ""

    def snr_db(self, variant: str) -> np.ndarray:
        self.require_variant(variant)
        if variant == CLEAN:
            return np.full((self.n, 2), np.inf, np.float32)
        return self._f[f"noisy/{variant}/snr_db"][()]

    # -- data ---------------------------------------------------------------------------
    def require_variant(self, variant: str):
        if variant not in self.variants:
            have = ", ".join(self.variants) or "none (masks-only set)"
            raise DatasetError(f"{self.path} has no image variant '{variant}'; it has: {have}")

    def images(self, index, variant: str = CLEAN) -> np.ndarray:
        """Image(s) of a variant; ``index`` is an int, slice or sorted index array."""
        self.require_variant(variant)
        name = "images" if variant == CLEAN else f"noisy/{variant}/images"
        return self._f[name][index]

    def masks(self, index: int) -> Masks:
        g = self._f["masks"]
        return Masks(g["semantic"][index], g["cell"][index], g["nucleus"][index])

    def masks_array(self, kind: str, index):
        if kind not in ("semantic", "cell", "nucleus"):
            raise DatasetError(f"unknown mask kind '{kind}'; choose semantic, cell or nucleus")
        return self._f[f"masks/{kind}"][index]

    def sample(self, index: int) -> Sample:
        meta = {k: (v[index].item() if hasattr(v[index], "item") else v[index]) for k, v in self.metadata.items()}
        noisy = {
            v: (self._f[f"noisy/{v}/images"][index], self._f[f"noisy/{v}/snr_db"][index])
            for v in self.variants
            if v != CLEAN
        }
        image = self._f["images"][index] if self.has_images else None
        return Sample(self.masks(index), image, noisy, meta)

    def indices(self, tier: str | None = None) -> np.ndarray:
        if tier is None:
            return np.arange(self.n)
        if tier not in self.tier_scheme.names:
            raise DatasetError(f"unknown tier '{tier}'; this set's tiers are: {', '.join(self.tier_scheme.names)}")
        return np.flatnonzero(self.metadata["tier"] == tier)

    def iter_images(self, variant: str = CLEAN, tier: str | None = None):
        """Yield ``(index, image, masks)`` for one variant, optionally one tier."""
        self.require_variant(variant)
        for i in self.indices(tier):
            yield int(i), self.images(int(i), variant), self.masks(int(i))

    def __len__(self):
        return self.n

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pixel_size_of(path) -> float | None:
    """The pixel size (um) a set records, or None when ``path`` is no readable set (a folder)."""
    try:
        with BenchmarkSet(path) as ds:
            return ds.pixel_size_um
    except CellgenError:
        return None


def compartments_of(path) -> list[str] | None:
    """The annotated compartments a set declares, or None when ``path`` is no readable set."""
    try:
        with BenchmarkSet(path) as ds:
            return ds.compartments
    except CellgenError:
        return None


def verify(path) -> dict:
    """Check schema, shapes, dtypes, masks, metadata, tiers and images of a set (see
    :mod:`cellgen.datasets.verification`); returns a summary dict or raises one-line
    :class:`DatasetError`."""
    from cellgen.datasets.verification import verify_set

    return verify_set(path)
