"""Scoring one bench unit (one image x one variant) and the records it leaves.

A *record* is one JSON line of ``records.jsonl``: the image index, variant, tier, seconds
spent segmenting and, per compartment, the pixel totals and instance counts of
:mod:`cellgen.bench.metrics`; per compartment the per-stratum counts of
:mod:`cellgen.bench.crowding` (``crowding``); and, when the method gave both compartments,
the nucleus-to-cell counts of :mod:`cellgen.bench.linkage` (``linkage``). With
``exclude_border`` > 0, true and predicted objects touching that border band are dropped
first (:mod:`cellgen.bench.border`). Reports are computed from records alone.

Public API: :func:`score_segmentation`, :func:`score_objects`, :func:`score_unit`,
:func:`encode_scores`, :func:`decode_scores`, :func:`complete_lines`, :func:`load_records`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from cellgen import noise
from cellgen.bench import crowding, linkage, metrics
from cellgen.bench.border import drop_border_objects
from cellgen.bench.methods.base import Method, Segmentation, check_image
from cellgen.errors import CellgenError
from cellgen.masks import Masks

COMPARTMENTS = ("cell", "nucleus")
RECORDS = "records.jsonl"


def _scored_maps(seg: Segmentation, masks: Masks, compartments, exclude_border: int) -> dict:
    """comp -> (truth, prediction) label maps to score, border objects dropped when asked."""
    maps = {}
    for comp in compartments:
        pred = getattr(seg, comp)
        if pred is None:
            continue
        truth = getattr(masks, comp)
        pred = np.asarray(pred)
        if pred.shape != truth.shape:
            raise CellgenError(f"{comp} prediction has shape {pred.shape}, the image is {truth.shape}")
        maps[comp] = (drop_border_objects(truth, exclude_border), drop_border_objects(pred, exclude_border))
    return maps


def score_segmentation(seg: Segmentation, masks: Masks, compartments=COMPARTMENTS, exclude_border: int = 0) -> dict:
    """Per compartment: pixel totals and instance counts of one prediction against exact masks."""
    return {comp: (metrics.pixel_totals(t, p), metrics.instance_counts(t, p))
            for comp, (t, p) in _scored_maps(seg, masks, compartments, exclude_border).items()}


def score_objects(seg: Segmentation, masks: Masks, compartments=COMPARTMENTS, exclude_border: int = 0) -> dict:
    """Per-object scores of one prediction: ``crowding`` counts per compartment and, when
    both compartments were predicted, ``linkage`` counts (plain JSON values)."""
    return _object_scores(_scored_maps(seg, masks, compartments, exclude_border), masks)


def _object_scores(maps: dict, masks: Masks) -> dict:
    # strata come from the whole truth (a neighbour in the border band still crowds a cell);
    # a set without cell masks is stratified by its nuclei
    source = masks.cell if masks.cell.any() else masks.nucleus
    strata = crowding.cell_strata(source)
    outcomes = {comp: metrics.object_outcomes(t, p) for comp, (t, p) in maps.items()}
    out = {"crowding": {comp: crowding.crowding_counts(source, t, p, strata, outcomes[comp])
                        for comp, (t, p) in maps.items()}}
    if "cell" in maps and "nucleus" in maps and masks.cell.any() and masks.nucleus.any():
        out["linkage"] = linkage.linkage_from_outcomes(maps["cell"][1], maps["nucleus"][1], outcomes["cell"],
                                                       outcomes["nucleus"])
    return out


def score_unit(ds, method: Method, index: int, variant: str, compartments, exclude_border: int = 0) -> dict:
    """Segment image ``index`` (``variant``) of the open set ``ds`` and score it: one record."""
    masks = ds.masks(index)
    start = time.perf_counter()
    if hasattr(method, "labels_for"):  # stored predictions: nothing to segment
        seg = method.labels_for(index, variant, masks.cell.shape)
    else:
        seg = method.segment(check_image(ds.images(index, variant)), ds.pixel_size_um)
    seconds = time.perf_counter() - start
    maps = _scored_maps(seg, masks, compartments, exclude_border)
    scores = {comp: (metrics.pixel_totals(t, p), metrics.instance_counts(t, p)) for comp, (t, p) in maps.items()}
    return {
        "index": int(index),
        "variant": variant,
        "tier": str(ds.metadata["tier"][index]),
        "snr_tier": noise.snr_tier_of(ds, index, variant),
        "seconds": seconds,
        "scores": encode_scores(scores),
        **_object_scores(maps, masks),
    }


def encode_scores(scores: dict) -> dict:
    """:func:`score_segmentation`'s dataclasses -> plain JSON values."""
    out = {}
    for comp, (pix, inst) in scores.items():
        out[comp] = {
            "pixel": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(pix).items()},
            "instance": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(inst).items()},
        }
    return out


def decode_scores(scores: dict) -> dict:
    """Inverse of :func:`encode_scores`."""
    out = {}
    for comp, d in scores.items():
        pix = metrics.PixelTotals(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in d["pixel"].items()})
        inst = metrics.InstanceCounts(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in d["instance"].items()})
        out[comp] = (pix, inst)
    return out


def complete_lines(path: Path) -> list[str]:
    """The JSON lines of ``path`` that parse; a last line cut short by a crash is left out."""
    path = Path(path)
    if not path.exists():
        return []
    good = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        good.append(line)
    return good


def load_records(results_dir) -> list[dict]:
    """Finished units of a results folder (a half-written line from a crash is ignored)."""
    records = []
    for line in complete_lines(Path(results_dir) / RECORDS):
        rec = json.loads(line)
        rec["scores"] = decode_scores(rec["scores"])
        records.append(rec)
    return records
