"""Score label maps a user made with any tool.

Two layouts are read:

* an HDF5 file with ``masks/cell`` and/or ``masks/nucleus`` datasets of shape (N, H, W)
  (a cellgen set itself qualifies) for the clean images, and
  ``noisy/<variant>/masks/cell|nucleus`` for noise variants;
* a folder laid out like ``cellgen export`` writes masks:
  ``DIR/masks/cell/NNNNN.tif|png`` (clean) and ``DIR/noisy/<variant>/masks/cell/NNNNN.*``.

Either compartment may be missing; only the ones present are scored.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation
from cellgen.datasets.export import read_label_file
from cellgen.errors import CellgenError

_KINDS = ("cell", "nucleus")


class StoredPredictions(Method):
    name = "predictions"

    def __init__(self, predictions: str | None = None):
        if not predictions:
            raise CellgenError("--method predictions needs --predictions PATH (an HDF5 file or a folder of label images)")
        self.path = Path(predictions)
        self._h5 = None
        self.compartments = self._present()

    def _prefix(self, variant: str) -> str:
        return "" if variant == "clean" else f"noisy/{variant}/"

    def _present(self) -> tuple[str, ...]:
        if not self.path.exists():
            raise MethodUnavailable(f"predictions not found: {self.path}")
        if self.path.is_dir():
            found = tuple(k for k in _KINDS if (self.path / "masks" / k).is_dir()
                          or any(self.path.glob(f"noisy/*/masks/{k}")))
        else:
            try:
                with h5py.File(self.path, "r") as f:
                    found = tuple(k for k in _KINDS if f"masks/{k}" in f or any(
                        f"noisy/{v}/masks/{k}" in f for v in (f["noisy"] if "noisy" in f else [])))
            except OSError:
                raise CellgenError(f"{self.path} is not a readable HDF5 file or folder of label images") from None
        if not found:
            raise CellgenError(f"{self.path} holds no masks/cell or masks/nucleus predictions")
        return found

    def variants(self) -> list[str]:
        """Image variants these predictions cover: ``clean`` plus each ``noisy/<variant>``."""
        if self.path.is_dir():
            noisy = sorted(p.name for p in (self.path / "noisy").glob("*") if (p / "masks").is_dir())
            has_clean = (self.path / "masks").is_dir()
        else:
            with h5py.File(self.path, "r") as f:
                noisy = sorted(v for v in (f["noisy"] if "noisy" in f else []) if f"noisy/{v}/masks" in f)
                has_clean = "masks" in f
        return (["clean"] if has_clean else []) + noisy

    def describe(self) -> dict:
        return {"method": self.name, "predictions": str(self.path.resolve())}

    def labels_for(self, index: int, variant: str, shape) -> Segmentation:
        out = {}
        for kind in self.compartments:
            out[kind] = self._read(kind, index, variant)
            if out[kind].shape != tuple(shape):
                raise CellgenError(f"{kind} prediction {index} ({variant}) has shape {out[kind].shape}, "
                                   f"the image is {tuple(shape)}")
        return Segmentation(cell=out.get("cell"), nucleus=out.get("nucleus"))

    def _read(self, kind: str, index: int, variant: str) -> np.ndarray:
        if self.path.is_dir():
            folder = self.path / self._prefix(variant) / "masks" / kind
            hits = [p for ext in (".tif", ".tiff", ".png") if (p := folder / f"{index:05d}{ext}").exists()]
            if not hits:
                raise CellgenError(f"missing prediction {folder / f'{index:05d}.tif'} (or .png)")
            return read_label_file(hits[0])
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        name = f"{self._prefix(variant)}masks/{kind}"
        if name not in self._h5:
            raise CellgenError(f"{self.path} has no dataset '{name}' for variant '{variant}'")
        d = self._h5[name]
        if d.ndim != 3 or d.dtype.kind not in "iu":
            raise CellgenError(f"{self.path}:{name} must be (N, H, W) integer labels, got {d.shape} {d.dtype}")
        if index >= d.shape[0]:
            raise CellgenError(f"{self.path}:{name} holds {d.shape[0]} images; image {index} is missing")
        return d[index]

    def segment(self, image, pixel_size_um):
        raise CellgenError("stored predictions are looked up by image index, not computed from pixels")

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
