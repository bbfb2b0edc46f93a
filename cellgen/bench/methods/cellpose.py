"""CellPose 3 adapter, run as in the CellPose papers.

Cells come from a ``cyto`` family model fed the cytoplasm channel as "chan" and the nucleus
channel as "chan2" (``channels=[1, 2]`` on a (H, W, 2) cytoplasm+nucleus array); nuclei from
the ``nuclei`` model fed the nucleus channel alone (``channels=[2, 0]``). Cell and nucleus
ids are independent (two separate networks).

Built-in weights live in CellPose's cache (``$CELLPOSE_LOCAL_MODELS_PATH`` or
``~/.cellpose/models``). As CellPose does on its own, a missing file is downloaded on first
use from CellPose's model address (``cellpose.models._MODEL_URL``), here in :meth:`check`,
before any image, with a progress bar and a bounded wait (:mod:`cellgen.bench.weights`); an
offline machine gets one clear line instead of a hang, and the cache never holds half a file.

Install: ``pip install cellpose==3.1.1.3`` (the 3.x API; 4.x dropped ``channels`` and the
``cyto`` models).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from cellgen.bench import weights as weights_download
from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation, check_image
from cellgen.errors import CellgenError
from cellgen.fileio import file_digest
from cellgen.safe_load import load_error, load_weights

PIP_COMMAND = "pip install cellpose==3.1.1.3"
_MODEL_URL = "https://www.cellpose.org/models"
# built-in models that ship a size model, i.e. can estimate the diameter themselves;
# file names as in cellpose.models.size_model_path of 3.1.1.3
_SIZE_FILES = {
    "cyto": "size_cytotorch_0.npy",
    "cyto2": "size_cyto2torch_0.npy",
    "cyto3": "size_cyto3.npy",
    "nuclei": "size_nucleitorch_0.npy",
}
# channel indices into the (H, W, 2) array built by _cellpose_input, 1-based as CellPose wants
_CELL_CHANNELS = [1, 2]  # chan = cytoplasm, chan2 = nucleus
_NUCLEUS_CHANNELS = [2, 0]  # chan = nucleus, no second channel


def _cellpose_input(image: np.ndarray) -> np.ndarray:
    """cellgen (nucleus, cytoplasm) -> CellPose (H, W, [cytoplasm, nucleus])."""
    return np.stack([image[1], image[0]], axis=-1)


def _import_cellpose():
    """cellpose.models, or MethodUnavailable naming what to install."""
    try:
        version = importlib.metadata.version("cellpose")
    except importlib.metadata.PackageNotFoundError:
        raise MethodUnavailable(f"cellpose: the cellpose package is not installed; install it: {PIP_COMMAND}") from None
    if not version.startswith("3."):
        raise MethodUnavailable(f"cellpose: found cellpose {version}, but this adapter needs the 3.x API; install it: {PIP_COMMAND}")
    try:
        import cellpose.models
    except Exception as err:  # a broken install shows up as any import error
        raise MethodUnavailable(f"cellpose: cannot import cellpose {version} ({type(err).__name__}: {err}); reinstall it: {PIP_COMMAND}") from None
    return cellpose.models


def models_dir() -> Path:
    """The folder CellPose reads and downloads built-in weights to.

    CellPose fixes it when ``cellpose.models`` is imported; before that, the same rule.
    """
    loaded = sys.modules.get("cellpose.models")
    if loaded is not None:
        return Path(loaded.MODEL_DIR)
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def model_url(cp_models) -> str:
    """CellPose's download address for built-in weights (a file is ``{address}/{name}``)."""
    return str(getattr(cp_models, "_MODEL_URL", _MODEL_URL)).rstrip("/")


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def _weights_basename(name: str) -> str:
    # as cellpose.models.model_path, which downloads as a side effect
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


class _Model:
    """One resolved model spec: a built-in name or a file, and how its diameter is set."""

    def __init__(self, spec: str, role: str):
        self.spec = spec
        self.role = role  # "cell" or "nucleus", for messages
        self.builtin = False
        self.weights: Path | None = None

    def resolve(self, cp_models, auto_diameter: bool) -> list[Path]:
        """Fill in the weights path; return the files that must exist."""
        path = Path(self.spec).expanduser()
        if path.is_file():
            self.builtin, self.weights = False, path.resolve()
            # read once safely now: a foreign or hostile file is one line before any image is scored
            load_weights(self.weights, f"CellPose {self.role} model")
            return [self.weights]
        names = list(cp_models.MODEL_NAMES) + list(cp_models.get_user_models())
        if self.spec not in names:
            raise MethodUnavailable(
                f"cellpose: {self.role} model '{self.spec}' is neither an existing model file nor a built-in "
                f"CellPose model (cyto3, cyto2, cyto, nuclei, ...); pass --model PATH to a trained model"
            )
        self.builtin = True
        self.weights = models_dir() / _weights_basename(self.spec)
        needed = [self.weights]
        if auto_diameter and self.spec in _SIZE_FILES:
            needed.append(models_dir() / _SIZE_FILES[self.spec])
        return needed

    @property
    def estimates_size(self) -> bool:
        return self.builtin and self.spec in _SIZE_FILES


class CellPose(Method):
    """CellPose 3: a cyto-family model for cells, the nuclei model for nuclei.

    Options:

    - ``model`` ("cyto3"): cell model, a built-in name (cyto3, cyto2, cyto, ...) or a PATH
      to a model file (e.g. one trained with ``cellpose.train``); None skips cells.
    - ``nuclei_model`` ("nuclei"): nucleus model, name or PATH; None skips nuclei.
    - ``diameter`` / ``diameter_um`` (None): cell diameter in pixels, or in micrometres
      converted with the image's pixel size. None or 0: automatic, i.e. the size model of
      cyto/cyto2/cyto3/nuclei estimates it per image, and any other model uses the diameter
      it was trained at.
    - ``nucleus_diameter`` / ``nucleus_diameter_um`` (None): the same for nuclei.
    - ``flow_threshold`` (0.4), ``cellprob_threshold`` (0.0): CellPose's mask settings.
    - ``gpu`` (None): use CUDA when present (None), force it (True) or stay on CPU (False).
    - ``download`` (True): fetch missing built-in weights on first use; False refuses instead.
    - ``download_timeout`` (60): seconds a connect or read of that download may stall.
    """

    name = "cellpose"

    def __init__(
        self,
        model: str | os.PathLike | None = "cyto3",
        nuclei_model: str | os.PathLike | None = "nuclei",
        diameter: float | None = None,
        diameter_um: float | None = None,
        nucleus_diameter: float | None = None,
        nucleus_diameter_um: float | None = None,
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        gpu: bool | None = None,
        download: bool = True,
        download_timeout: float = weights_download.DEFAULT_TIMEOUT,
    ):
        def spec(value):
            return None if value is None or str(value).lower() in ("", "none") else os.fspath(value)

        self.model = spec(model)
        self.nuclei_model = spec(nuclei_model)
        if self.model is None and self.nuclei_model is None:
            raise CellgenError("cellpose: both model and nuclei_model are off; give at least one")
        for what, value in (("diameter", diameter), ("diameter_um", diameter_um),
                            ("nucleus_diameter", nucleus_diameter), ("nucleus_diameter_um", nucleus_diameter_um)):
            if value is not None and value < 0:
                raise CellgenError(f"cellpose: {what} must be positive (or 0/None for automatic), got {value}")
        self.diameter = diameter or None
        self.diameter_um = diameter_um or None
        self.nucleus_diameter = nucleus_diameter or None
        self.nucleus_diameter_um = nucleus_diameter_um or None
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.gpu = gpu
        self.download = bool(download)
        if not download_timeout or not float(download_timeout) > 0:
            raise CellgenError(f"cellpose: download_timeout must be a positive number of seconds, got {download_timeout}")
        self.download_timeout = float(download_timeout)
        # file name -> address fetched from; not in describe(): a resumed run finds the file cached
        self.downloaded: dict[str, str] = {}
        self.compartments = tuple(c for c, m in (("cell", self.model), ("nucleus", self.nuclei_model)) if m is not None)
        self._specs: dict[str, _Model] = {}
        self._loaded: dict[str, object] = {}

    def _auto(self, role: str) -> bool:
        if role == "cell":
            return self.diameter is None and self.diameter_um is None
        return self.nucleus_diameter is None and self.nucleus_diameter_um is None

    def check(self) -> None:
        cp_models = _import_cellpose()
        specs = {}
        for role, value in (("cell", self.model), ("nucleus", self.nuclei_model)):
            if value is None:
                continue
            m = _Model(value, role)
            for needed in m.resolve(cp_models, self._auto(role)):
                if not needed.is_file():
                    self._fetch(cp_models, m, needed)
            specs[role] = m
        self._specs = specs

    def _fetch(self, cp_models, m: _Model, needed: Path) -> None:
        url = f"{model_url(cp_models)}/{needed.name}"
        fallback = (f"copy the file to {needed} (or set CELLPOSE_LOCAL_MODELS_PATH to a folder holding it), "
                    f"or pass --model PATH to a model file")
        if not self.download:
            raise MethodUnavailable(f"cellpose: weights file {needed} for the '{m.spec}' model is missing and "
                                    f"downloads are off (download=false); get it from {url}, {fallback}")
        print(f"cellpose: downloading the '{m.spec}' model file {needed.name} from {url}", file=sys.stderr)
        try:
            weights_download.download(url, needed, what=f"cellpose: '{m.spec}' model file {needed.name}",
                                      fallback=fallback, timeout=self.download_timeout)
        except weights_download.DownloadError as err:
            raise MethodUnavailable(str(err)) from None
        self.downloaded[needed.name] = url

    def describe(self) -> dict:
        versions = {}
        for dist in ("cellpose", "torch"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = None
        resolved = {role: str(m.weights) for role, m in self._specs.items()}
        # a path says little about a trained model; its content hash tells runs apart
        digests = {role: _sha256(m.weights) for role, m in self._specs.items() if m.weights.is_file()}
        return {
            "method": self.name,
            "model": self.model,
            "nuclei_model": self.nuclei_model,
            "weights": resolved,
            "weights_sha256": digests,
            "diameter": self.diameter,
            "diameter_um": self.diameter_um,
            "nucleus_diameter": self.nucleus_diameter,
            "nucleus_diameter_um": self.nucleus_diameter_um,
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "cell_channels": _CELL_CHANNELS,
            "nucleus_channels": _NUCLEUS_CHANNELS,
            "channel_layout": "CellPose input (H, W, [cytoplasm, nucleus]); channels are 1-based into it",
            "gpu": self.gpu,
            # CellPose's eval defaults this adapter leaves alone, recorded so a change shows
            "eval_defaults": {"normalize": True, "resample": True, "min_size": 15, "niter": None,
                              "augment": False, "tile_overlap": 0.1, "bsize": 224},
            "versions": versions,
        }

    def _load(self, role: str):
        if role in self._loaded:
            return self._loaded[role]
        import torch

        cp_models = _import_cellpose()
        m = self._specs[role]
        gpu = torch.cuda.is_available() if self.gpu is None else bool(self.gpu)
        if m.estimates_size and self._auto(role):
            # Cellpose = network + size model, the automatic-diameter path of the papers
            net = cp_models.Cellpose(gpu=gpu, model_type=m.spec)
        elif m.builtin:
            net = cp_models.CellposeModel(gpu=gpu, model_type=m.spec)
        else:
            try:
                net = cp_models.CellposeModel(gpu=gpu, pretrained_model=str(m.weights))
            except Exception as err:  # CellPose passes torch's multi-line errors through
                raise load_error(m.weights, err, f"CellPose {role} model") from None
        self._loaded[role] = net
        return net

    def settings_for_set(self, pixel_size_um: float) -> dict:
        out = {}
        for role in self.compartments:
            px = self._diameter_px(role, pixel_size_um)
            m = self._specs.get(role)
            how = ("size model per image" if m is not None and m.estimates_size else "the model's trained diameter")
            out[f"{role}_diameter_px"] = px if px is not None else f"automatic ({how})"
        return out

    def _diameter_px(self, role: str, pixel_size_um: float) -> float | None:
        px, um = ((self.diameter, self.diameter_um) if role == "cell"
                  else (self.nucleus_diameter, self.nucleus_diameter_um))
        if px:
            return float(px)
        if um:
            return float(um) / pixel_size_um
        return None

    def _run(self, role: str, x: np.ndarray, channels: list[int], pixel_size_um: float) -> np.ndarray:
        net = self._load(role)
        with warnings.catch_warnings():
            # torch warns once per process about CellPose's sparse tensors; nothing to act on
            warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
            out = net.eval(
                x,
                channels=channels,
                channel_axis=-1,
                diameter=self._diameter_px(role, pixel_size_um),
                flow_threshold=self.flow_threshold,
                cellprob_threshold=self.cellprob_threshold,
            )
        return np.asarray(out[0]).astype(np.uint32)

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        image = check_image(image)
        if not pixel_size_um or pixel_size_um <= 0:
            raise CellgenError(f"cellpose: pixel size must be positive, got {pixel_size_um}")
        if set(self._specs) != set(self.compartments):
            self.check()
        x = _cellpose_input(image)
        cell = self._run("cell", x, _CELL_CHANNELS, pixel_size_um) if self.model is not None else None
        nucleus = self._run("nucleus", x, _NUCLEUS_CHANNELS, pixel_size_um) if self.nuclei_model is not None else None
        return Segmentation(cell=cell, nucleus=nucleus)

    def close(self) -> None:
        self._loaded.clear()
