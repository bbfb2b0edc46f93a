"""Appearance inputs of the renderer: per-instance intensity features and seeded noise.

A renderer that sees only masks has to draw every cell at the average brightness of cells
with that shape; the simulator (and a microscope) does not: each cell's stain uptake and
each image's background level vary. Following pix2pixHD's instance-wise features, the
generator gets ``feat_nc`` = 2 more input channels holding, at each pixel, the mean
intensity (nucleus channel, cytoplasm channel) of the region the pixel belongs to: the
nucleus of its cell, the cytoplasm of its cell, or the background. Instead of a learned
encoder the region means themselves are the features (two numbers a user can read):

* training: the means are measured on the real image being reconstructed, so the network
  learns to honour them;
* rendering: each cell draws one row (nucleus ch0, ch1, cytoplasm ch0, ch1) and each image
  one background row (ch0, ch1) from tables of the training set's regions, stored with the
  checkpoint, with a generator seeded by the image's seed. Cells draw in order of their id,
  so a cell's look depends only on the seed and its id. Renderers whose config sets
  ``background_offset`` store each cell's row relative to its own image's background and
  add the drawn background to it, since their generator sets the background level exactly
  (:func:`cellgen.render.networks.run_generator`) and a cell's brightness is what it adds.

``noise_nc`` more channels carry white Gaussian noise (seeded too), from which the network
can make texture that is not fixed by the mask.

All randomness is numpy's PCG64 from the seed, so a seed gives the same inputs on any
machine. Feature values enter the network as ``2 * mean - 1`` (the image's own scale).

Public API: :func:`region_labels`, :func:`region_means`, :func:`collect_tables`,
:func:`sample_features`, :func:`relative_tables`, :func:`noise`, :func:`extra_inputs`, :func:`split_state`,
:data:`TABLE_KEYS`.
"""

from __future__ import annotations

import numpy as np
import torch

from cellgen.errors import CellgenError

#: state-dict keys under which a checkpoint carries the tables (not generator weights)
TABLE_KEYS = ("appearance.cells", "appearance.background")
MAX_CELL_ROWS = 8192


def region_labels(semantic: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(H, W) int64 region ids: 0 background, 2c - 1 nucleus of cell c, 2c its cytoplasm."""
    cell = np.asarray(cell).astype(np.int64)
    lab = 2 * cell
    lab[(np.asarray(semantic) == 128) & (cell > 0)] -= 1
    return lab


def region_means(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, H, W) map where every pixel holds its region's mean of each channel of ``image``."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        sums = np.bincount(flat, weights=image[c].ravel().astype(np.float64), minlength=len(counts))
        means = sums / np.maximum(counts, 1)
        out[c] = means[flat].reshape(labels.shape)
    return out


def _cell_rows(image, semantic, cell) -> np.ndarray:
    lab = region_labels(semantic, cell)
    n = int(cell.max(initial=0))
    counts = np.bincount(lab.ravel(), minlength=2 * n + 1)
    rows = []
    for c in range(image.shape[0]):
        sums = np.bincount(lab.ravel(), weights=image[c].ravel().astype(np.float64), minlength=2 * n + 1)
        rows.append(sums / np.maximum(counts, 1))
    means = np.stack(rows, 1)  # (2n + 1, C)
    have = (counts[1::2] > 0) & (counts[2::2] > 0)  # cells with both a nucleus and cytoplasm
    table = np.concatenate([means[1::2], means[2::2]], 1)[have]  # nucleus ch..., cytoplasm ch...
    background = means[0] if counts[0] > 0 else None
    return table, background


def collect_tables(source, max_cell_rows: int = MAX_CELL_ROWS, seed: int = 0, relative: bool = False) -> dict:
    """Tables of region means over a pair source (:func:`cellgen.render.data.open_pairs`).

    ``cells``: (N, 4) float32 rows (nucleus ch0, ch1, cytoplasm ch0, ch1), at most
    ``max_cell_rows`` (a seeded subsample); ``background``: (M, 2) one row per image. With
    ``relative`` (renderers with ``background_offset``) a cell's row is its means minus its
    own image's background: what a cell adds to the background, to be drawn on top of any
    image's level (images without background then give no cell rows).
    """
    cells, backgrounds = [], []
    for i in range(len(source)):
        p = source.get(i)
        table, bg = _cell_rows(p.image, p.semantic, p.cell)
        if bg is not None:
            backgrounds.append(bg)
            cells.append(table - np.tile(bg, 2) if relative else table)
        elif not relative:
            cells.append(table)
    cells = np.concatenate(cells) if cells else np.zeros((0, 4))
    if len(cells) == 0 or not backgrounds:
        raise CellgenError("appearance features need training images with cells (nucleus and cytoplasm) "
                           "and background; none found")
    if len(cells) > max_cell_rows:
        cells = cells[np.sort(np.random.default_rng(seed).choice(len(cells), max_cell_rows, replace=False))]
    return {"cells": torch.from_numpy(cells.astype(np.float32)),
            "background": torch.from_numpy(np.stack(backgrounds).astype(np.float32))}


def sample_features(tables: dict, semantic: np.ndarray, cell: np.ndarray, seed: int,
                    relative: bool = False) -> np.ndarray:
    """(2, H, W) region means drawn for one image's masks from ``tables`` with ``seed``
    (``relative``: the cell rows are added to the drawn background, see :func:`collect_tables`)."""
    cells = tables["cells"].float().numpy()
    background = tables["background"].float().numpy()
    rng = np.random.default_rng([int(seed), 1])
    n = int(np.asarray(cell).max(initial=0))
    bg_row = background[int(rng.integers(len(background)))]
    picks = cells[rng.integers(0, len(cells), size=n)]  # row of cell id k at k - 1
    nc = background.shape[1]
    if relative:
        picks = picks + np.tile(bg_row, 2)
    per_region = np.zeros((2 * n + 1, nc), np.float32)
    per_region[0] = bg_row
    per_region[1::2] = picks[:, :nc]
    per_region[2::2] = picks[:, nc:]
    lab = region_labels(semantic, cell)
    return np.moveaxis(per_region[lab], -1, 0).astype(np.float32)


def relative_tables(config: dict) -> bool:
    """Whether a renderer's cell rows are relative to their image's background (``background_offset``)."""
    return bool(config.get("background_offset"))


def noise(n_channels: int, shape, seed: int) -> np.ndarray:
    """(n_channels, H, W) standard normal noise from ``seed``."""
    return np.random.default_rng([int(seed), 2]).standard_normal((n_channels, *shape), dtype=np.float32)


def extra_inputs(config: dict, tables: dict | None, semantic, cell, seed: int) -> np.ndarray | None:
    """The generator's appearance channels (features, then noise) for one image, or None if it has none."""
    feat_nc, noise_nc = int(config.get("feat_nc", 0)), int(config.get("noise_nc", 0))
    parts = []
    if feat_nc:
        if tables is None:
            raise CellgenError("this renderer takes appearance features but its checkpoint has no appearance tables")
        parts.append(2.0 * sample_features(tables, semantic, cell, seed, relative=relative_tables(config)) - 1.0)
    if noise_nc:
        parts.append(noise(noise_nc, np.asarray(semantic).shape, seed))
    return np.concatenate(parts).astype(np.float32) if parts else None


def training_inputs(config: dict, images: np.ndarray, semantic: np.ndarray, cell: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray | None:
    """Appearance channels for a training batch: region means of the REAL images, plus noise."""
    feat_nc, noise_nc = int(config.get("feat_nc", 0)), int(config.get("noise_nc", 0))
    if not (feat_nc or noise_nc):
        return None
    out = []
    for img, sem, cel in zip(images, semantic, cell):
        parts = []
        if feat_nc:
            parts.append(2.0 * region_means(img, region_labels(sem, cel)) - 1.0)
        if noise_nc:
            parts.append(rng.standard_normal((noise_nc, *sem.shape), dtype=np.float32))
        out.append(np.concatenate(parts))
    return np.stack(out).astype(np.float32)


def split_state(state_dict: dict) -> tuple[dict, dict | None]:
    """(generator weights, appearance tables or None) of a renderer state dict."""
    weights = {k: v for k, v in state_dict.items() if k not in TABLE_KEYS}
    if TABLE_KEYS[0] not in state_dict:
        return weights, None
    return weights, {"cells": state_dict[TABLE_KEYS[0]].float(), "background": state_dict[TABLE_KEYS[1]].float()}


def join_state(weights: dict, tables: dict | None) -> dict:
    out = dict(weights)
    if tables is not None:
        out[TABLE_KEYS[0]], out[TABLE_KEYS[1]] = tables["cells"], tables["background"]
    return out
