"""DeepCell Mesmer (compartment='both') as a bench method, run in a Python 3.10 side environment.

The side environment (:mod:`cellgen.bench.methods.deepcell_env`) holds deepcell 0.12.10 and
TensorFlow 2.8; a persistent worker there (:mod:`cellgen.bench.methods.mesmer_client`) loads
the model once and segments many images. This module is the adapter.

Environment variables: ``CELLGEN_HOME`` and ``CELLGEN_PYTHON310`` (see ``deepcell_env``), and
``DEEPCELL_ACCESS_TOKEN``, deepcell's own token, needed only to download Mesmer's weights when
no model path is given and ``~/.deepcell/models/MultiplexSegmentation-9.tar.gz`` is not cached.
:meth:`DeepCellMesmer.check` then downloads the archive itself, before any image, with a
bounded wait, a progress bar and an md5 check (:func:`cellgen.bench.weights.fetch_deepcell_asset`),
so deepcell in the worker finds it cached; a missing or refused token is one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellgen.bench import weights as weights_download
from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation, check_image
from cellgen.bench.methods.deepcell_env import (
    DEEPCELL_VERSION,
    ensure_deepcell_env,
    env_python,
    find_deepcell_env,
    require_python310,
)
from cellgen.bench.methods.mesmer_client import MesmerWorker, ModelLoadError
from cellgen.errors import CellgenError
from cellgen.fileio import file_digest

# Mesmer's own weights, as deepcell 0.12.10 fetches them (deepcell/applications/mesmer.py):
# fetch_data() caches the archive in ~/.deepcell/models and skips the download (and so the
# token) when the cached archive has this md5.
MESMER_WEIGHTS_KEY = "models/MultiplexSegmentation-9.tar.gz"
MESMER_WEIGHTS_MD5 = "a1dfbce2594f927b9112f23a0a1739e0"
MESMER_MODEL_MPP = 0.5


def mesmer_weights_path() -> Path:
    """Where deepcell caches Mesmer's weights archive (``~/.deepcell/models/...``)."""
    return Path.home() / ".deepcell" / "models" / MESMER_WEIGHTS_KEY.rsplit("/", 1)[-1]


_COMPARTMENT_ALIASES = {
    "both": "both",
    "whole-cell": "whole-cell",
    "whole_cell": "whole-cell",
    "cell": "whole-cell",
    "nuclear": "nuclear",
    "nucleus": "nuclear",
}


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


class DeepCellMesmer(Method):
    """DeepCell Mesmer (deepcell 0.12.10, TensorFlow 2.8) in a persistent side-env worker.

    Options:

    ``model``
        a local Keras model (SavedModel folder, or .h5 with deepcell's layers). Default: Mesmer's
        own weights the way deepcell gets them (cached ``~/.deepcell/models/MultiplexSegmentation-9.tar.gz``,
        else a download that needs ``DEEPCELL_ACCESS_TOKEN`` and internet).
    ``image_mpp``
        microns per pixel handed to Mesmer (it rescales to its 0.5 µm/px); default: the pixel
        size given to :meth:`segment`. A bench refuses a value other than the set's pixel size.
    ``compartment``
        ``both`` (default), ``whole-cell`` or ``nuclear``.
    ``timeout`` / ``startup_timeout``
        seconds one image / the worker start (TensorFlow import + model load) may take.
    ``progress``
        show the env setup (pip) and the worker's logs on stderr.
    ``download_timeout``
        seconds a connect or read of the weights download may stall (60).

    The env is created on the first :meth:`segment` if missing (``cellgen bench setup deepcell``
    does it ahead); the worker starts on the first image and lives until :meth:`close`.
    """

    name = "deepcell"
    compartments = ("cell", "nucleus")

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        image_mpp: float | str | None = None,
        compartment: str = "both",
        *,
        timeout: float = 900.0,
        startup_timeout: float = 600.0,
        batch_size: int = 4,
        progress: bool | str = False,
        download_timeout: float = weights_download.DEFAULT_TIMEOUT,
    ):
        self.model = str(Path(model).expanduser().resolve()) if model not in (None, "") else None
        try:
            self.image_mpp = float(image_mpp) if image_mpp not in (None, "") else None
        except (TypeError, ValueError):
            raise CellgenError(f"deepcell: image_mpp must be a number, got {image_mpp!r}") from None
        if self.image_mpp is not None and not self.image_mpp > 0:
            raise CellgenError(f"deepcell: image_mpp must be positive, got {image_mpp!r}")
        key = str(compartment).strip().lower()
        if key not in _COMPARTMENT_ALIASES:
            raise CellgenError(f"deepcell: compartment must be one of both, whole-cell, nuclear; got {compartment!r}")
        self.compartment = _COMPARTMENT_ALIASES[key]
        self.compartments = {
            "both": ("cell", "nucleus"), "whole-cell": ("cell",), "nuclear": ("nucleus",)
        }[self.compartment]
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.batch_size = int(batch_size)
        self.progress = progress.strip().lower() in ("1", "true", "yes", "on") if isinstance(progress, str) else bool(progress)
        if not download_timeout or not float(download_timeout) > 0:
            raise CellgenError(f"deepcell: download_timeout must be a positive number of seconds, got {download_timeout}")
        self.download_timeout = float(download_timeout)
        self.downloaded: str | None = None
        self.worker: MesmerWorker | None = None
        self.workers_started = 0
        self._load_error: CellgenError | None = None

    # ---- checks

    def check(self) -> None:
        if find_deepcell_env() is None:
            require_python310()  # the env can be built on demand
        if self.model is not None:
            if not os.path.exists(self.model):
                raise MethodUnavailable(f"deepcell: model path {self.model} does not exist")
            return
        weights = mesmer_weights_path()
        token = os.environ.get("DEEPCELL_ACCESS_TOKEN")
        if weights.is_file():
            if _md5(weights) == MESMER_WEIGHTS_MD5:
                return
            if not token:
                raise MethodUnavailable(
                    f"deepcell: cached Mesmer weights {weights} fail their md5 check and DEEPCELL_ACCESS_TOKEN is "
                    "not set to download them again: delete the file and set the token, or pass model=PATH"
                )
        elif not token:
            raise MethodUnavailable(
                f"deepcell: no Mesmer weights: DEEPCELL_ACCESS_TOKEN is not set and no cached weights file at "
                f"{weights} (where deepcell looks); set the token (https://users.deepcell.org; the download "
                "needs internet) or pass model=PATH"
            )
        try:  # fetched here, not by deepcell in the worker: bounded waits and one clear line
            weights_download.fetch_deepcell_asset(MESMER_WEIGHTS_KEY, weights, md5=MESMER_WEIGHTS_MD5, token=token,
                                                  timeout=self.download_timeout)
        except weights_download.DownloadError as err:
            raise MethodUnavailable(str(err)) from None
        self.downloaded = weights_download.DEEPCELL_API

    def describe(self) -> dict:
        info = self.worker.info if self.worker is not None else {}
        return {
            "method": self.name,
            "application": "Mesmer",
            "deepcell": info.get("deepcell", DEEPCELL_VERSION),
            "tensorflow": info.get("tensorflow", "2.8.4"),
            "python": info.get("python"),
            "model": self.model or f"deepcell default ({MESMER_WEIGHTS_KEY}, md5 {MESMER_WEIGHTS_MD5})",
            "model_mpp": MESMER_MODEL_MPP,
            "image_mpp": self.image_mpp if self.image_mpp is not None else "pixel size of each image",
            "compartment": self.compartment,
            "batch_size": self.batch_size,
            "channels": {"nuclear": "nucleus (0)", "membrane": "cytoplasm (1)"},
            # not overridden: deepcell's pinned version fixes them (they changed between releases)
            "preprocess_postprocess": f"Mesmer.predict defaults of deepcell {DEEPCELL_VERSION}",
        }

    def settings_for_set(self, pixel_size_um: float) -> dict:
        # Mesmer rescales by image_mpp / 0.5; a value that is not the set's pixel size
        # silently segments the images at the wrong scale
        if self.image_mpp is not None and abs(self.image_mpp - pixel_size_um) > 1e-6 * pixel_size_um:
            raise CellgenError(f"deepcell: image_mpp {self.image_mpp:g} differs from the set's pixel size "
                               f"{pixel_size_um:g} um/px, so Mesmer would rescale the images wrongly; "
                               "leave image_mpp unset (it follows the set)")
        mpp = float(pixel_size_um if self.image_mpp is None else self.image_mpp)
        return {"image_mpp": mpp, "model_mpp": MESMER_MODEL_MPP, "rescale_factor": mpp / MESMER_MODEL_MPP}

    # ---- work

    def _ensure_worker(self) -> MesmerWorker:
        if self.worker is not None and self.worker.alive:
            return self.worker
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self._load_error is not None:  # loading is deterministic: don't retry per image
            raise self._load_error
        env = ensure_deepcell_env(progress=self.progress)
        try:
            self.worker = MesmerWorker(
                env_python(env), self.model, startup_timeout=self.startup_timeout, verbose=self.progress
            )
        except ModelLoadError as err:
            self._load_error = err
            raise
        self.workers_started += 1
        return self.worker

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        img = check_image(image)
        h, w = img.shape[1:]
        x = np.ascontiguousarray(np.moveaxis(img, 0, -1))  # (H, W, [nucleus, cytoplasm])
        mpp = self.image_mpp if self.image_mpp is not None else float(pixel_size_um)
        worker = self._ensure_worker()
        reply, out = worker.request(
            {"op": "segment", "image_mpp": mpp, "compartment": self.compartment, "batch_size": self.batch_size},
            {"image": x},
            timeout=self.timeout,
        )
        labels = {}
        for key in ("cell", "nucleus"):
            arr = out.get(key)
            if key in self.compartments:
                if arr is None or arr.shape != (h, w):
                    got = None if arr is None else arr.shape
                    raise CellgenError(f"deepcell worker returned {key} labels of shape {got} for a {h}x{w} image")
                arr = arr.astype(np.uint32, copy=False)
            labels[key] = arr if key in self.compartments else None
        return Segmentation(cell=labels["cell"], nucleus=labels["nucleus"])

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
