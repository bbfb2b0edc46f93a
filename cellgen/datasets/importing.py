"""Import a user's annotated images into a benchmark set.

Layouts (SOURCE is a folder unless said otherwise):

- **CellPose-style**: ``NAME.tif`` with ``NAME_masks.tif`` (or the GUI's ``NAME_seg.npy``);
  the masks are one compartment, cells or nuclei (``masks_are``).
- **Image and label folders matched by name**: images in SOURCE, labels in ``cells=DIR``
  and/or ``nuclei=DIR``; a label file matches image ``S`` if its stem is ``S`` or ``S``
  plus ``_masks``, ``_mask``, ``_labels``, ``_label`` or ``_cp_masks``.
- **cellgen's export layout** (``images/``, ``masks/cell/``, ``masks/nucleus/``).
- **Stacks**: SOURCE is one TIFF / OME-TIFF stack (N images along the first axis) with
  ``cells=STACK`` and/or ``nuclei=STACK`` label stacks.

Images become the set's two channels by a channel map (``{"nucleus": 0, "cytoplasm": 1}``);
a compartment without annotation is left out of the set's ``compartments`` attribute, so
the bench scores only what was annotated. Intensities are scaled to [0, 1] and stored at
65535 full scale; the scaling is recorded (``intensity_scaling``): the default ``dtype``
scaling divides by the integer type's maximum, so 8- and 16-bit pixel values are stored
exactly. Where both cells and nuclei are given, each nucleus is assigned to the cell it
overlaps most; densities are measured and tiers assigned as for synthetic sets.

Every input is read and checked before anything is written, and every bad file is named on
its own line; the set is written through the crash-safe writer, so nothing is half-written.

Public API: :func:`import_set`, :func:`find_pairs`, :func:`read_image`, :func:`read_labels`,
:func:`combine_masks`, :data:`SCALINGS`.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from cellgen.density import DEFAULT_TIERS, TierScheme
from cellgen.errors import CellgenError
from cellgen.fileio import file_digest
from cellgen.masks import Masks, relabel_sequential, semantic_from_instances

COMPARTMENTS = ("cell", "nucleus")
CHANNELS = ("nucleus", "cytoplasm")
SCALINGS = ("dtype", "max", "percentile")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LABEL_SUFFIXES = ("_cp_masks", "_masks", "_mask", "_labels", "_label")
# a nucleus with at least this share of its pixels in a second cell is ambiguous, not a slip of the brush
SPAN_FRACTION = 0.1
PERCENTILES = (0.1, 99.9)


class ImportProblem(CellgenError):
    """One input file that cannot be imported (the message names it)."""


@dataclass
class Pair:
    """One image and where its labels come from (a file, or a plane of a stack)."""

    name: str
    image: Path
    labels: dict = field(default_factory=dict)  # compartment -> Path
    index: int | None = None  # plane of a stack


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".npy"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _label_stem(stem: str) -> str | None:
    for suffix in LABEL_SUFFIXES + ("_seg",):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def _match_labels(folder: Path, stems: list[str]) -> tuple[dict, list[str]]:
    """Label files of ``folder`` by image stem; also the label files that match no image."""
    found, unmatched = {}, []
    wanted = set(stems)
    for path in sorted(folder.iterdir()):
        if not (_is_image(path) or path.name.endswith("_seg.npy")):
            continue
        stem = _stem(path)
        key = stem if stem in wanted else _label_stem(stem)
        if key in wanted:
            if key in found and found[key].name.endswith("_seg.npy"):
                found[key] = path  # a mask TIFF wins over the GUI's _seg.npy
            else:
                found.setdefault(key, path)
        else:
            unmatched.append(f"{path}: a label file with no image of the same name")
    return found, unmatched


def find_pairs(source, cells=None, nuclei=None, masks_are: str = "cell") -> tuple[list[Pair], list[str]]:
    """Pair images with their label files; returns the pairs and one problem line per bad file."""
    source = Path(source)
    if not source.exists():
        raise CellgenError(f"{source} does not exist")
    label_paths = {c: Path(p) for c, p in (("cell", cells), ("nucleus", nuclei)) if p is not None}
    for comp, path in label_paths.items():
        if not path.exists():
            raise CellgenError(f"{path} (the {comp} labels) does not exist")
    if source.is_file():
        if not label_paths:
            raise CellgenError(f"{source} is a stack: give its label stack with --cells and/or --nuclei")
        if any(p.is_dir() for p in label_paths.values()):
            raise CellgenError("an image stack needs label stacks (files), not folders")
        n = _stack_length(source)
        return [Pair(f"{_stem(source)}[{i}]", source, dict(label_paths), index=i) for i in range(n)], []
    if not label_paths and (source / "images").is_dir() and (source / "masks").is_dir():
        label_paths = {c: source / "masks" / c for c in COMPARTMENTS if (source / "masks" / c).is_dir()}
        source = source / "images"
    problems = []
    if label_paths:
        if any(p.is_file() for p in label_paths.values()):
            raise CellgenError("a folder of images needs folders of labels, not files")
        images = [p for p in sorted(source.iterdir()) if _is_image(p)]
        pairs = {_stem(p): Pair(_stem(p), p) for p in images}
        for comp, folder in label_paths.items():
            found, unmatched = _match_labels(folder, list(pairs))
            problems += unmatched
            for stem, path in found.items():
                pairs[stem].labels[comp] = path
        for pair in pairs.values():
            missing = [c for c in label_paths if c not in pair.labels]
            if missing:
                problems.append(f"{pair.image}: no {' or '.join(missing)} label file of the same name")
        return list(pairs.values()), problems
    # CellPose-style: images and NAME_masks.tif / NAME_seg.npy side by side
    files = [p for p in sorted(source.iterdir()) if _is_image(p) or p.name.endswith("_seg.npy")]
    images = [p for p in files if _label_stem(_stem(p)) is None and _is_image(p)]
    if not images:
        raise CellgenError(f"{source} holds no images (.tif, .tiff, .png) to import")
    pairs = {_stem(p): Pair(_stem(p), p) for p in images}
    for path in files:
        key = _label_stem(_stem(path))
        if key is None:
            continue
        if key not in pairs:
            problems.append(f"{path}: a label file with no image of the same name")
        elif masks_are not in pairs[key].labels or pairs[key].labels[masks_are].name.endswith("_seg.npy"):
            pairs[key].labels[masks_are] = path
    for pair in pairs.values():
        if not pair.labels:
            problems.append(f"{pair.image}: no {pair.name}_masks.tif or {pair.name}_seg.npy beside it")
    return list(pairs.values()), problems


def _stack_length(path: Path) -> int:
    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape
    if len(shape) < 3:
        raise CellgenError(f"{path} holds one {shape} image, not a stack; put single images in a folder")
    return int(shape[0])


# -- reading -----------------------------------------------------------------------------------

_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "nm": 1e-3, "mm": 1e3,
            "cm": 1e4, "m": 1e6, "\\u00B5m": 1.0}


def _pixel_size_of(tif: tifffile.TiffFile) -> float | None:
    """Micrometres per pixel from OME-XML, else from ImageJ's unit and the resolution tag."""
    if tif.ome_metadata:
        match = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
        if match:
            size = re.search(r'PhysicalSizeX="([^"]+)"', match.group(0))
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', match.group(0))
            if size:
                factor = _UNIT_UM.get(unit.group(1) if unit else "µm")
                value = float(size.group(1)) * factor if factor else None
                if value and np.isfinite(value) and value > 0:
                    return value
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).replace("\\u00B5", "µ")
    tag = tif.pages[0].tags.get("XResolution")
    if unit in _UNIT_UM and tag is not None:
        num, den = tag.value
        if num > 0:
            return float(den) / float(num) * _UNIT_UM[unit]
    return None


def read_image(path, index: int | None = None) -> tuple[np.ndarray, dict]:
    """(C, H, W) array of one image (plane ``index`` of a stack), and what the file says:
    ``pixel_size_um`` (or None)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            import cv2

            data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if data is None:
                raise ImportProblem(f"{path}: not a readable PNG")
            if data.ndim == 3:
                data = data[..., ::-1][..., :3]  # BGR(A) -> RGB
                data = np.moveaxis(data, -1, 0)
            return (data[None] if data.ndim == 2 else data), {"pixel_size_um": None}
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            info = {"pixel_size_um": _pixel_size_of(tif)}
    except ImportProblem:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file, said in one line
        raise ImportProblem(f"{path}: not a readable image ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if index is not None:
        data, axes = data[index], axes[1:]
    return _channels_first(data, axes, path), info


def _channels_first(data: np.ndarray, axes: str, path) -> np.ndarray:
    if data.ndim == 2:
        return data[None]
    if data.ndim != 3:
        raise ImportProblem(f"{path}: expected a 2-D image with channels, got shape {data.shape} (axes {axes})")
    if axes[-1] in "CS" and axes[0] not in "CS":
        return np.moveaxis(data, -1, 0)
    if axes[0] in "CS":
        return data
    # no channel axis named: the short axis is the channel axis
    return data if data.shape[0] <= min(data.shape[1:]) else np.moveaxis(data, -1, 0)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the dict of arrays in a CellPose ``_seg.npy`` and refuses anything else, so
    a crafted file can never run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "slice")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def _read_seg_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = np.lib.format._read_array_header(fh, version)
        if dtype.hasobject:
            obj = _ArraysOnly(io.BytesIO(fh.read())).load()
            if shape == ():
                obj = obj[()] if isinstance(obj, np.ndarray) else obj
            if not isinstance(obj, dict) or "masks" not in obj:
                raise ImportProblem(f"{path}: a _seg.npy without a 'masks' entry")
            return np.asarray(obj["masks"])
    return np.load(path, allow_pickle=False)


def read_labels(path, index: int | None = None) -> np.ndarray:
    """(H, W) integer label image (plane ``index`` of a stack)."""
    path = Path(path)
    try:
        if path.name.endswith(".npy"):
            labels = _read_seg_npy(path)
        elif path.suffix.lower() == ".png":
            import cv2

            labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if labels is None:
                raise ImportProblem(f"{path}: not a readable PNG")
        else:
            labels = tifffile.imread(path)
    except ImportProblem:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file, said in one line
        raise ImportProblem(f"{path}: not a readable label file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ImportProblem(f"{path}: not a readable label file (no image data)")
    if index is not None:
        labels = labels[index]
    labels = np.squeeze(labels)
    if labels.ndim != 2:
        raise ImportProblem(f"{path}: labels must be one 2-D image, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ImportProblem(f"{path}: labels must be whole numbers; found fractions or NaN")
    elif labels.dtype.kind not in "iub":
        raise ImportProblem(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ImportProblem(f"{path}: negative label ids")
    if not labels.any():
        raise ImportProblem(f"{path}: the mask is empty (no labelled object)")
    return labels.astype(np.int64)


# -- masks -------------------------------------------------------------------------------------

def combine_masks(cells: np.ndarray | None, nuclei: np.ndarray | None, drop_cells_without_nucleus: bool = False,
                  where: str = "") -> tuple[Masks, dict]:
    """Instance masks obeying the set's mask contract from a user's cell and/or nucleus labels.

    With both, each nucleus takes the id of the cell it overlaps most and is clipped to it; a
    nucleus with ``SPAN_FRACTION`` of its pixels in a second cell, or mostly outside every
    cell, is refused. With one compartment, the other mask repeats it (the set's
    ``compartments`` attribute says which one is real)."""
    prefix = f"{where}: " if where else ""
    notes = {}
    if cells is None or nuclei is None:
        only = relabel_sequential(cells if cells is not None else nuclei)
        return Masks(semantic_from_instances(only, only), only, only.copy()), notes
    cells = relabel_sequential(cells)
    nuc = relabel_sequential(nuclei)
    n_cells, n_nuc = int(cells.max()), int(nuc.max())
    table = np.bincount(nuc.ravel() * (n_cells + 1) + cells.ravel(),
                        minlength=(n_nuc + 1) * (n_cells + 1)).reshape(n_nuc + 1, n_cells + 1)[1:]
    size = table.sum(1)
    in_cells = table[:, 1:]
    owner = in_cells.argmax(1) + 1
    best = in_cells.max(1)
    second = np.sort(in_cells, axis=1)[:, -2] if n_cells > 1 else np.zeros_like(best)
    outside = np.flatnonzero(best * 2 < size)
    if outside.size:
        raise ImportProblem(f"{prefix}{outside.size} nuclei lie mostly outside every cell "
                            f"(nucleus ids {(outside + 1)[:5].tolist()})")
    spanning = np.flatnonzero(second >= SPAN_FRACTION * size)
    if spanning.size:
        raise ImportProblem(f"{prefix}{spanning.size} nuclei span two cells "
                            f"(nucleus ids {(spanning + 1)[:5].tolist()})")
    mapped = np.concatenate([[0], owner])[nuc]
    nucleus = np.where(mapped == cells, cells, 0)  # clipped to its cell
    without = np.setdiff1d(np.arange(1, n_cells + 1), np.unique(nucleus))
    if without.size:
        if not drop_cells_without_nucleus:
            raise ImportProblem(f"{prefix}{without.size} cells have no nucleus (ids {without[:5].tolist()}); "
                                "--drop-cells-without-nucleus leaves them out")
        cells = np.where(np.isin(cells, without), 0, cells)
        notes["cells_dropped_without_nucleus"] = int(without.size)
        if not cells.any():
            raise ImportProblem(f"{prefix}no cell with a nucleus is left")
    order = relabel_sequential(cells)
    remap = np.zeros(n_cells + 1, np.uint32)
    remap[cells.ravel()] = order.ravel()
    nucleus = remap[nucleus]
    return Masks(semantic_from_instances(order, nucleus), order, nucleus.astype(np.uint32)), notes


# -- intensities -------------------------------------------------------------------------------

def _intensity_range(raw: np.ndarray, scaling: str) -> list | None:
    """Per-channel (low, high) that map to 0 and 1; None for ``max``, which needs the whole set."""
    if scaling == "max":
        return None
    if scaling == "percentile":
        data = raw.astype(np.float64)
        return [[float(np.percentile(c, PERCENTILES[0])), float(np.percentile(c, PERCENTILES[1]))] for c in data]
    if raw.dtype.kind in "ui":
        return [[0.0, float(np.iinfo(raw.dtype).max)]] * len(raw)
    if raw.dtype.kind == "f" and raw.size and (np.nanmin(raw) < 0 or np.nanmax(raw) > 1):
        raise ImportProblem("float pixel values outside [0, 1]; use --intensity max or percentile")
    return [[0.0, 1.0]] * len(raw)


def _scaled(raw: np.ndarray, ranges: list) -> np.ndarray:
    """Float image in [0, 1] from the per-channel ranges."""
    out = np.zeros(raw.shape, np.float64)
    for c, (lo, hi) in enumerate(ranges):
        if hi > lo:
            out[c] = (raw[c].astype(np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def _load(pair: Pair, channels: dict | None, drop_cells_without_nucleus: bool):
    """One pair read and checked: (raw image, file info, channel map, masks, notes, compartments)."""
    raw, info = read_image(pair.image, pair.index)
    labels = {c: read_labels(p, pair.index) for c, p in sorted(pair.labels.items())}
    mapping = channels or ({"nucleus": 0} if raw.shape[0] == 1 else {"nucleus": 0, "cytoplasm": 1})
    bad = {k: i for k, i in mapping.items() if i >= raw.shape[0]}
    if bad:
        raise ImportProblem(f"{pair.image}: has {raw.shape[0]} channel(s); --channels asks for {bad}")
    shape = raw.shape[1:]
    for comp, lab in labels.items():
        if lab.shape != shape:
            raise ImportProblem(f"{pair.labels[comp]}: labels are {lab.shape[0]}x{lab.shape[1]}, "
                                f"the image {shape[0]}x{shape[1]}")
    masks, notes = combine_masks(labels.get("cell"), labels.get("nucleus"), drop_cells_without_nucleus,
                                 where=str(pair.image) + (f"[{pair.index}]" if pair.index is not None else ""))
    return raw, info, mapping, masks, notes, tuple(c for c in COMPARTMENTS if c in labels)


def parse_channels(text: str | None) -> dict | None:
    """``nucleus=0,cytoplasm=1`` -> {"nucleus": 0, "cytoplasm": 1}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in CHANNELS:
            raise CellgenError(f"--channels takes nucleus=I and/or cytoplasm=J, got {part.strip()!r}")
        try:
            out[key] = int(value)
        except ValueError:
            raise CellgenError(f"--channels: {key} needs a channel number, got {value!r}") from None
        if out[key] < 0:
            raise CellgenError(f"--channels: channel numbers start at 0, got {value}")
    return out


# -- the import --------------------------------------------------------------------------------

def import_set(source, output, *, cells=None, nuclei=None, masks_are: str | None = None, channels: dict | None = None,
               pixel_size_um: float | None = None, scaling: str = "dtype", drop_cells_without_nucleus: bool = False,
               tiers: TierScheme = DEFAULT_TIERS, command: str = "", overwrite: bool = False,
               progress: bool = True) -> Path:
    """Read, check and write a user's annotated images as a benchmark set at ``output``."""
    from cellgen.pipeline import SourceItem, write_set

    if scaling not in SCALINGS:
        raise CellgenError(f"--intensity must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise CellgenError(f"--pixel-size must be a positive number of micrometres, got {pixel_size_um}")
    if masks_are is None:
        masks_are = "nucleus" if channels is not None and "cytoplasm" not in channels else "cell"
    if masks_are not in COMPARTMENTS:
        raise CellgenError(f"--masks-are must be cell or nucleus, got {masks_are!r}")
    pairs, problems = find_pairs(source, cells, nuclei, masks_are)

    # first pass: read and check everything, keep only what the header needs (not the pixels);
    # the writer reads each pair again, so memory stays one image whatever the set's size
    items, sizes, pixel_sizes, compartments, set_max = [], {}, set(), None, {}
    for pair in pairs:
        if not pair.labels:
            continue  # already named in the problems
        try:
            raw, info, mapping, _, notes, comps = _load(pair, channels, drop_cells_without_nucleus)
            try:
                ranges = _intensity_range(raw, scaling)
            except ImportProblem as err:
                raise ImportProblem(f"{pair.image}: {err}") from None
        except ImportProblem as err:
            problems.append(str(err))
            continue
        if compartments is None:
            compartments = comps
        elif comps != compartments:
            problems.append(f"{pair.image}: annotates {', '.join(comps)}, the others {', '.join(compartments)}")
            continue
        for c, peak in enumerate(raw.reshape(raw.shape[0], -1).max(1)):  # for --intensity max
            set_max[c] = max(set_max.get(c, 0.0), float(peak))
        sizes.setdefault(raw.shape[1:], []).append(pair.name)
        pixel_sizes.add(info["pixel_size_um"])
        items.append((pair, mapping, ranges, notes))
    if problems:
        raise CellgenError(f"{len(problems)} problem(s), nothing written:\n  " + "\n  ".join(problems))
    if not items:
        raise CellgenError(f"nothing to import in {source}")
    if len(sizes) > 1:
        listing = "; ".join(f"{h}x{w}: {len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                            for (h, w), v in sizes.items())
        raise CellgenError(f"a set holds images of one size; these differ: {listing}")
    if pixel_size_um is None:
        known = {p for p in pixel_sizes if p is not None}
        if len(known) != 1 or None in pixel_sizes:
            raise CellgenError("the pixel size is not in every file's metadata (OME or ImageJ)"
                               + (f" and differs between files ({sorted(known)})" if len(known) > 1 else "")
                               + "; pass --pixel-size UM")
        pixel_size_um = known.pop()
    if scaling == "max":
        items = [(pair, mapping, [[0.0, set_max[c]] for c in sorted(set_max)], notes) for pair, mapping, _, notes in items]
    scales = [{name: ranges[channel] for name, channel in mapping.items()} for _, mapping, ranges, _ in items]

    def source_fn(i: int) -> SourceItem:
        pair, mapping, ranges, _ = items[i]
        raw, _, _, masks, _, _ = _load(pair, channels, drop_cells_without_nucleus)
        scaled = _scaled(raw, ranges[: len(raw)])
        image = np.zeros((2,) + raw.shape[1:], np.float64)
        for name, channel in mapping.items():
            image[CHANNELS.index(name)] = scaled[channel]
        return SourceItem(masks, image, seed=i, source=f"import:{pair.name}")

    files = sorted({p for pair, *_ in items for p in [pair.image, *pair.labels.values()]})
    recipe = {
        "source": "import", "channels": items[0][1], "compartments": list(compartments), "scaling": scaling,
        "drop_cells_without_nucleus": drop_cells_without_nucleus,
        "files": {str(p.name): file_digest(p) for p in files},
    }
    shape = next(iter(sizes))
    dropped = sum(n.get("cells_dropped_without_nucleus", 0) for *_, n in items)
    extra = {
        "compartments": json.dumps(list(compartments)),
        "intensity_scaling": json.dumps({"mode": scaling, "percentiles": list(PERCENTILES) if scaling == "percentile"
                                         else None, "per_image": scales}),
        "imported_from": json.dumps([pair.name for pair, *_ in items]),
    }
    if dropped:
        extra["cells_dropped_without_nucleus"] = dropped
    return write_set(output, len(items), source_fn, image_size=shape, pixel_size_um=float(pixel_size_um),
                     tiers=tiers, variants=[], recipe=recipe, command=command, overwrite=overwrite,
                     progress=progress, extra_attrs=extra)
