"""Image + mask training pairs for the renderer, from a benchmark set or an exported folder.

* a benchmark set (``.h5``, :class:`cellgen.datasets.h5.BenchmarkSet`) with clean images;
* a folder as ``cellgen export`` writes it: ``images/NNNNN.tif`` ((2, H, W) uint16),
  ``masks/cell/NNNNN.tif`` and ``masks/nucleus/NNNNN.tif`` (PNG masks work too).

Images come back as float32 (2, H, W) in [0, 1] (uint16 full scale 65535).

Public API: :func:`open_pairs`, :class:`Pair`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellgen.datasets.h5 import FULL_SCALE
from cellgen.errors import CellgenError
from cellgen.masks import semantic_from_instances


@dataclass
class Pair:
    image: np.ndarray  # (2, H, W) float32 in [0, 1]
    semantic: np.ndarray  # (H, W) uint8 0 / 128 / 255
    cell: np.ndarray  # (H, W) uint32
    nucleus: np.ndarray  # (H, W) uint32


class _H5Pairs:
    def __init__(self, path: Path):
        from cellgen.datasets.h5 import BenchmarkSet

        self.path = path
        self.ds = BenchmarkSet(path)
        if not self.ds.has_images:
            self.ds.close()
            raise CellgenError(f"{path} is a masks-only set; training a renderer needs images")
        self.n = self.ds.n
        self.shape = tuple(self.ds.image_size)

    def __len__(self):
        return self.n

    def get(self, i: int) -> Pair:
        m = self.ds.masks(int(i))
        img = self.ds.images(int(i)).astype(np.float32) / FULL_SCALE
        return Pair(img, m.semantic, m.cell.astype(np.uint32), m.nucleus.astype(np.uint32))

    def close(self):
        self.ds.close()


class _FolderPairs:
    def __init__(self, root: Path):
        self.root = root
        imgs = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in (".tif", ".tiff"))
        if not imgs:
            raise CellgenError(f"{root} has no images/NNNNN.tif files (the layout `cellgen export` writes)")
        self.images = imgs
        self.masks = []
        for p in imgs:
            pair = []
            for kind in ("cell", "nucleus"):
                cands = [root / "masks" / kind / (p.stem + ext) for ext in (".tif", ".tiff", ".png")]
                found = [c for c in cands if c.exists()]
                if not found:
                    raise CellgenError(f"{root}: no masks/{kind}/{p.stem}.tif (or .png) for {p.name}")
                pair.append(found[0])
            self.masks.append(tuple(pair))
        self.n = len(imgs)
        self.shape = self.get(0).image.shape[1:]

    def __len__(self):
        return self.n

    def get(self, i: int) -> Pair:
        import tifffile

        from cellgen.datasets.export import read_label_file

        p = self.images[int(i)]
        try:
            img = np.asarray(tifffile.imread(p))
        except Exception as err:  # noqa: BLE001 - tifffile raises many kinds for a bad file
            raise CellgenError(f"{p} is not a readable TIFF image: {err}") from None
        if img.ndim != 3 or img.shape[0] != 2:
            raise CellgenError(f"{p}: expected a (2, H, W) image (nucleus, cytoplasm), got shape {img.shape}")
        scale = FULL_SCALE if img.dtype == np.uint16 else (255.0 if img.dtype == np.uint8 else 1.0)
        cell = read_label_file(self.masks[int(i)][0]).astype(np.uint32)
        nucleus = read_label_file(self.masks[int(i)][1]).astype(np.uint32)
        if cell.shape != img.shape[1:] or nucleus.shape != img.shape[1:]:
            raise CellgenError(f"{p}: image {img.shape[1:]} and masks {cell.shape}/{nucleus.shape} differ in size")
        return Pair(img.astype(np.float32) / scale, semantic_from_instances(cell, nucleus), cell, nucleus)

    def close(self):
        pass


def open_pairs(data):
    """A pair source (``len``, ``.get(i) -> Pair``, ``.shape``, ``.close()``) for a set file or export folder."""
    path = Path(data)
    if not path.exists():
        raise CellgenError(f"no such training data: {path}")
    if path.is_dir():
        return _FolderPairs(path)
    return _H5Pairs(path)
