"""Exact ground truth: semantic maps, instance maps and the generator's label-map encoding.

Three representations of one segmentation:

* **Semantic map** (uint8, H x W), the reference paper's convention:
  ``0`` background, ``128`` nucleus, ``255`` cytoplasm.
* **Instance maps** (uint32, H x W): ``cell`` labels whole cells ``1..N`` (0 = background);
  ``nucleus`` labels each nucleus with the SAME id as the cell that holds it.
* **Label map** (the encoding the contour generator produces and is trained on): four
  classes ``background, cytoplasm, nucleus, boundary`` as a class-index map (uint8) or as
  soft per-class scores (float, ``(4, H, W)``). The ``boundary`` class marks cell pixels
  that touch a *different* cell (8-connectivity, both sides of the contact), so touching
  cells survive the round trip instance maps -> label map -> instance maps. A 3-class map
  (no boundary channel) is accepted too; touching cells are then split only by their nuclei.

Public API: :func:`semantic_from_instances`, :func:`label_map_from_instances`,
:func:`one_hot`, :func:`instances_from_label_map`, :func:`instances_from_semantic`,
:func:`relabel_sequential`, :func:`keep_nucleus_pieces`, :func:`validate`, :func:`check_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as label_regions

from cellgen.errors import InvalidMaskError

SEMANTIC_BACKGROUND = 0
SEMANTIC_NUCLEUS = 128
SEMANTIC_CYTOPLASM = 255

BACKGROUND, CYTOPLASM, NUCLEUS, BOUNDARY = 0, 1, 2, 3
LABEL_CLASSES = ("background", "cytoplasm", "nucleus", "boundary")

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Masks:
    """One image's ground truth; the three arrays always agree pixel for pixel."""

    semantic: np.ndarray
    cell: np.ndarray
    nucleus: np.ndarray

    @property
    def count(self) -> int:
        return int(self.cell.max(initial=0))


def semantic_from_instances(cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Semantic map (0 / 128 / 255) from instance maps."""
    semantic = np.zeros(cell.shape, dtype=np.uint8)
    semantic[cell > 0] = SEMANTIC_CYTOPLASM
    semantic[nucleus > 0] = SEMANTIC_NUCLEUS
    return semantic


def touching_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of a labelled object that have an 8-neighbour in a different, non-zero object."""
    padded = np.pad(labels, 1)
    h, w = labels.shape
    touch = np.zeros(labels.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            touch |= (neighbour != 0) & (neighbour != labels)
    return touch & (labels != 0)


def label_map_from_instances(cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Class-index label map (uint8: 0 bg, 1 cytoplasm, 2 nucleus, 3 boundary) from instances.

    Nucleus wins over boundary except where two different nuclei touch, so that nuclei of
    different cells never touch in the label map and stay separable.
    """
    classes = np.zeros(cell.shape, dtype=np.uint8)
    classes[cell > 0] = CYTOPLASM
    classes[touching_pixels(cell)] = BOUNDARY
    classes[nucleus > 0] = NUCLEUS
    classes[touching_pixels(nucleus)] = BOUNDARY
    return classes


def one_hot(classes: np.ndarray, n_classes: int = len(LABEL_CLASSES)) -> np.ndarray:
    """(n_classes, H, W) float32 one-hot encoding of a class-index label map."""
    return (np.arange(n_classes, dtype=np.uint8)[:, None, None] == classes[None]).astype(np.float32)


def _classes_of(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim == 3:
        if label_map.shape[0] not in (3, 4):
            raise InvalidMaskError(
                f"a soft label map needs 3 or 4 class channels (background, cytoplasm, nucleus[, boundary]), "
                f"got shape {label_map.shape}"
            )
        # argmax breaks ties towards the lower class index, which keeps it deterministic
        return np.argmax(label_map, axis=0).astype(np.uint8)
    if label_map.ndim != 2:
        raise InvalidMaskError(f"a label map must be (H, W) classes or (C, H, W) scores, got shape {label_map.shape}")
    if label_map.dtype.kind not in "iu":
        raise InvalidMaskError(f"a class-index label map must be integer, got {label_map.dtype}")
    if label_map.size and label_map.max() > BOUNDARY:
        raise InvalidMaskError(f"class-index label map values must be 0..3, found {int(label_map.max())}")
    return label_map.astype(np.uint8, copy=False)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N in raster order of each object's first pixel (uint32)."""
    labels = np.asarray(labels)
    ids, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.zeros(ids.size, dtype=np.uint32)
    objects = np.flatnonzero(ids != 0)
    order = objects[np.argsort(first[objects], kind="stable")]
    rank[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    return rank[inverse].reshape(labels.shape)


def _remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    if min_area <= 1 or labels.max(initial=0) == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def instances_from_label_map(
    label_map: np.ndarray,
    min_nucleus_area: int = 8,
    min_cell_area: int = 30,
) -> Masks:
    """Exact masks from a generated label map (class indices or soft scores).

    Steps, all deterministic: quantise (argmax), drop nucleus fragments smaller than
    ``min_nucleus_area``, grow one cell from each nucleus over the foreground by a seeded
    watershed in which boundary pixels are flooded last (so touching cells split along
    their boundary ribbon), keep only the part of each cell connected to its nucleus, drop
    cells smaller than ``min_cell_area``, renumber, and re-derive the semantic map from the
    instances so all three agree. Foreground with no nucleus becomes background: a cell
    without a nucleus is not valid ground truth here.
    """
    classes = _classes_of(label_map)
    foreground = classes != BACKGROUND
    nuclei, _ = ndi.label(classes == NUCLEUS, structure=_EIGHT)
    nuclei = _remove_small(nuclei, min_nucleus_area)
    if nuclei.max(initial=0) == 0:
        empty = np.zeros(classes.shape, dtype=np.uint32)
        return Masks(np.zeros(classes.shape, np.uint8), empty, empty.copy())

    # imported here: skimage.segmentation pulls in matplotlib, which commands that only read
    # sets (datasets info/verify) should not pay for
    from skimage.segmentation import watershed

    # Elevation 0 inside cells, 1 on boundaries: flooding from nuclei fills each cell's
    # interior first and meets its neighbour's flood inside the shared boundary ribbon.
    elevation = (classes == BOUNDARY).astype(np.uint8)
    cells = watershed(elevation, markers=nuclei, mask=foreground, connectivity=1)
    cells = keep_nucleus_pieces(cells, nuclei)
    cells = _remove_small(cells, min_cell_area)
    nucleus_px = (classes == NUCLEUS) & (nuclei > 0)
    cells = relabel_sequential(cells)
    nucleus = np.where(nucleus_px, cells, 0).astype(np.uint32)
    # a nucleus whose cell was dropped as too small goes with it
    return Masks(semantic_from_instances(cells, nucleus), cells, nucleus)


def keep_nucleus_pieces(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Per cell (id in ``cells``, nucleus pixels anywhere in ``nuclei > 0``), keep the connected piece that contains its nucleus (drop detached fragments)."""
    # skimage's label splits regions of equal value, so touching cells give separate pieces
    pieces = label_regions(cells, connectivity=1, background=0)
    has_nucleus = np.zeros(pieces.max(initial=0) + 1, dtype=bool)
    has_nucleus[pieces[nuclei > 0]] = True
    has_nucleus[0] = False
    return np.where(has_nucleus[pieces], cells, 0)


def instances_from_semantic(semantic: np.ndarray, **kwargs) -> Masks:
    """Exact masks from a semantic map (0 / 128 / 255); touching cells split by their nuclei."""
    semantic = np.asarray(semantic)
    bad = ~np.isin(semantic, (SEMANTIC_BACKGROUND, SEMANTIC_NUCLEUS, SEMANTIC_CYTOPLASM))
    if bad.any():
        raise InvalidMaskError(
            f"semantic map values must be 0, 128 or 255; found {np.unique(semantic[bad])[:5].tolist()}"
        )
    classes = np.zeros(semantic.shape, np.uint8)
    classes[semantic == SEMANTIC_CYTOPLASM] = CYTOPLASM
    classes[semantic == SEMANTIC_NUCLEUS] = NUCLEUS
    return instances_from_label_map(classes, **kwargs)


def _present(labels: np.ndarray) -> np.ndarray:
    """Sorted ids present in a non-negative int64 label map (``np.unique``, without the sort).

    Every written image is validated, and sorting its pixels was half the cost of writing it.
    """
    top = int(labels.max(initial=0))
    if top <= 4 * labels.size + 1024:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).astype(np.int64)
    return np.unique(labels)


def validate(cell, nucleus, semantic=None, shape: tuple[int, int] | None = None) -> list[str]:
    """Every inconsistency of one image's masks, as messages (empty list = valid).

    Checks dtype and shape, ids contiguous 1..N, every nucleus inside the cell with its id,
    every cell with a nucleus, and, when given, the semantic map agreeing with the instances.
    """
    problems: list[str] = []
    arrays = {"cell": cell, "nucleus": nucleus}
    if semantic is not None:
        arrays["semantic"] = semantic
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        want = np.uint8 if name == "semantic" else np.uint32
        if arr.dtype != want:
            problems.append(f"{name} mask has dtype {arr.dtype}, expected {np.dtype(want).name}")
        if arr.ndim != 2:
            problems.append(f"{name} mask has shape {arr.shape}, expected (H, W)")
        elif shape is not None and arr.shape != tuple(shape):
            problems.append(f"{name} mask has shape {arr.shape}, expected {tuple(shape)}")
    shapes = {np.asarray(a).shape for a in arrays.values()}
    if len(shapes) > 1 or problems:
        if len(shapes) > 1:
            problems.append(f"mask shapes differ: {sorted(shapes)}")
        return problems

    cell = np.asarray(cell).astype(np.int64)
    nucleus = np.asarray(nucleus).astype(np.int64)
    if cell.min(initial=0) < 0 or nucleus.min(initial=0) < 0:
        problems.append("negative ids")
        return problems
    cell_ids = _present(cell)
    cell_ids = cell_ids[cell_ids != 0]
    n = int(cell.max(initial=0))
    if cell_ids.size != n:
        missing = sorted(set(range(1, n + 1)) - set(cell_ids.tolist()))
        problems.append(f"cell ids are not contiguous 1..{n}: missing {missing[:10]}")
    wrong_home = (nucleus > 0) & (nucleus != cell)
    if wrong_home.any():
        ids = np.unique(nucleus[wrong_home])
        outside = ids[np.isin(ids, np.unique(nucleus[(nucleus > 0) & (cell == 0)]))]
        problems.append(
            f"{wrong_home.sum()} nucleus pixels lie outside the cell with their id (nuclei {ids[:10].tolist()}"
            + (f"; outside every cell: {outside[:10].tolist()}" if outside.size else "")
            + ")"
        )
    nucleus_ids = _present(nucleus)
    nucleus_ids = nucleus_ids[nucleus_ids != 0]
    without = np.setdiff1d(cell_ids, nucleus_ids)
    if without.size:
        problems.append(f"{without.size} cells without a nucleus (ids {without[:10].tolist()})")
    orphan = np.setdiff1d(nucleus_ids, cell_ids)
    if orphan.size:
        problems.append(f"{orphan.size} nuclei without a cell of the same id (ids {orphan[:10].tolist()})")
    if semantic is not None:
        expected = semantic_from_instances(cell, nucleus)
        mismatch = int((np.asarray(semantic) != expected).sum())
        if mismatch:
            problems.append(f"semantic map disagrees with the instance masks at {mismatch} pixels")
    return problems


def check_masks(cell, nucleus, semantic=None, shape=None, where: str = "") -> None:
    """Raise :class:`InvalidMaskError` with the first problems found by :func:`validate`."""
    problems = validate(cell, nucleus, semantic, shape)
    if problems:
        prefix = f"{where}: " if where else ""
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        raise InvalidMaskError(prefix + "; ".join(problems[:2]) + more)
