"""Test-only helpers that train or build small segmenters, so no pretrained weights are needed.

``train_cellpose`` trains a CellPose 3 network from random weights (CellPose's own
``train_seg``); ``make_random_mesmer_model`` saves a random-weight Mesmer-architecture
network in the deepcell side environment. Both exist to exercise the real adapters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from cellgen.bench.methods.base import check_image
from cellgen.bench.methods.cellpose import _CELL_CHANNELS, _NUCLEUS_CHANNELS, _cellpose_input, _import_cellpose
from cellgen.bench.methods.deepcell_env import ensure_deepcell_env, env_python, side_env_vars
from cellgen.bench.methods.mesmer_client import WORKER_SCRIPT, one_line
from cellgen.errors import CellgenError


def train_cellpose(
    images,
    cell_masks,
    out_path: str | os.PathLike,
    n_epochs: int = 100,
    *,
    compartment: str = "cell",
    learning_rate: float = 0.005,
    weight_decay: float = 1e-5,
    batch_size: int = 8,
    bsize: int = 224,
    diam_mean: float = 30.0,
    seed: int = 0,
    gpu: bool = False,
) -> Path:
    """Train a CellPose 3 network from random weights and save it to ``out_path``.

    ``images`` are cellgen (2, H, W) nucleus+cytoplasm arrays, ``cell_masks`` the matching
    instance label maps (nucleus maps with ``compartment="nucleus"``, which trains on the
    nucleus channel alone). Training is ``cellpose.train.train_seg`` with its own
    augmentation and schedule; nothing is downloaded. The file loads with
    ``CellPose(model=out_path)`` (or ``nuclei_model=out_path``). ``n_epochs=0`` saves the
    untrained network. Seeded: the same inputs and seed give the same weights on one machine.
    """
    if compartment not in ("cell", "nucleus"):
        raise CellgenError(f"train_cellpose: compartment must be 'cell' or 'nucleus', got {compartment!r}")
    images, cell_masks = list(images), list(cell_masks)
    if not images or len(images) != len(cell_masks):
        raise CellgenError(f"train_cellpose: need matching, non-empty image and mask lists, got {len(images)} and {len(cell_masks)}")
    cp_models = _import_cellpose()
    import torch
    from cellpose import train

    data = [_cellpose_input(check_image(im)) for im in images]
    labels = [np.asarray(m).astype(np.int32) for m in cell_masks]
    for im, lab in zip(data, labels):
        if lab.shape != im.shape[:2]:
            raise CellgenError(f"train_cellpose: mask shape {lab.shape} does not match image shape {im.shape[:2]}")
    channels = _CELL_CHANNELS if compartment == "cell" else _NUCLEUS_CHANNELS

    torch.manual_seed(seed)
    np.random.seed(seed)
    # pretrained_model=False builds the bare network: random weights, no download; MKLDNN
    # is off because its backward pass is slower than plain CPU kernels here
    model = cp_models.CellposeModel(gpu=gpu, pretrained_model=False, diam_mean=diam_mean, nchan=2, mkldnn=False)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        saved, _, _ = train.train_seg(
            model.net,
            train_data=data,
            train_labels=labels,
            channels=channels,
            channel_axis=-1,
            normalize=True,
            n_epochs=int(n_epochs),
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            batch_size=batch_size,
            bsize=bsize,
            min_train_masks=1,
            save_path=tmp,
            model_name="model",
        )
        shutil.move(os.fspath(saved), out_path)
    return out_path


def make_random_mesmer_model(
    path: str | os.PathLike, seed: int = 0, progress: bool = False, timeout: float = 900.0
) -> Path:
    """Save a random-weight Mesmer-architecture model (PanopticNet resnet50, 256x256x2 input,
    semantic heads [1, 3, 1, 3], location, no normalisation) as a SavedModel folder at ``path``.

    Runs in the deepcell side env (created if needed). Weights depend only on ``seed``.
    The output is garbage as a segmenter: it is for testing the plumbing.
    """
    path = Path(path).expanduser().resolve()
    if path.exists():
        raise CellgenError(f"{path} already exists")
    env = ensure_deepcell_env(progress=progress)
    cmd = [str(env_python(env)), "-I", str(WORKER_SCRIPT)]
    if progress:
        cmd.append("--verbose")
    cmd += ["make-random-model", str(path), "--seed", str(int(seed))]
    env_vars = side_env_vars()
    env_vars.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
            env=env_vars, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CellgenError(f"making the random Mesmer model took longer than {timeout:.0f} s") from None
    if proc.returncode != 0 or not path.is_dir():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("mesmer worker:")), lines[-1] if lines else "")
        raise CellgenError(f"making the random Mesmer model failed (exit {proc.returncode}): {one_line(why, 300)}")
    return path
