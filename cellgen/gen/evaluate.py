"""Evaluate a contour generator against its training corpus: diversity, coverage, fidelity, density.

>>> ref = load_reference("corpus128-5k.h5", backbone=load_backbone())
>>> result = evaluate_contours(ContourGenerator.load("G.pt"), ref)
>>> result["goals"]["all_met"], selection_key(result)
>>> write_report(result, "eval/")        # report.json, report.md, diversity.png, near_duplicates.png

What is measured (generated masks at psi = 1 unless said otherwise, drawn at the corpus's
image size; the reference is an evenly spaced subset of the corpus):

* **diversity**: the pairwise foreground IoU of ``n_diversity`` generated maps beside the same
  for as many corpus maps (:mod:`cellgen.gen.diversity`), the ratio of the means, the share of
  pairs above 0.6, and the closest generated pairs (near-duplicates);
* **precision and recall** (Kynkäänniemi et al. 2019, k = 3) and **FD-EffNetLite0**, overall
  and per density tier, on the mask features of :mod:`cellgen.quality`, each tier's FD beside
  the corpus's split-half floor (two halves of the reference, the distance sampling noise alone
  gives);
* **KS** (two-sample) of cell count per image, cell area and nucleus area, and, not as goals,
  of three shape measures (cell solidity, nucleus eccentricity, nucleus offset from the cell's
  centre) that show how objects differ where counts and areas agree;
* **density control**: counts over psi in {-1, -0.5, 0, 0.5, 1} for ``psi_seeds`` seeds, their
  span, the share of seeds whose count is monotonic in psi, and how many distinct counts the
  psi = 0 column holds (1 means every seed gave the same image).

:data:`GOALS` are issue 14's targets; :func:`check_goals` marks each. For picking a training
snapshot, :func:`selection_key` orders results (fewest failed goals, then the worst per-tier FD
ratio); :func:`rank_checkpoints` scores several checkpoints against one reference.

Public API: :class:`Reference`, :func:`load_reference`, :func:`sample_masks`, :func:`sample_label_maps`,
:func:`evaluate_contours`, :func:`check_goals`, :func:`selection_key`, :func:`rank_checkpoints`,
:func:`write_report`, :func:`without_arrays`, :data:`GOALS`, :data:`PSIS`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from cellgen import density
from cellgen.density_control import masks_from_scores, monotonic_fraction
from cellgen.errors import CellgenError
from cellgen.gen.diversity import (
    closest_pairs,
    foreground,
    iou_summary,
    manifold_coverage,
    pairwise_iou,
    precision_recall,
)
from cellgen.masks import label_map_from_instances

PSIS = (-1.0, -0.5, 0.0, 0.5, 1.0)
EXAMPLES = 4  # label maps per tier and side in tiers.png
GOALS = {
    "iou_ratio_max": 1.15,            # mean pairwise IoU, generated / corpus
    "pairs_above_0.6_max": 0.01,      # share of generated pairs with IoU > 0.6
    "precision_min": 0.75,
    "recall_min": 0.75,
    "fd_floor_ratio_max": 2.0,        # per tier: FD / corpus split-half FD
    "ks_count_max": 0.135,            # the shipped small128 generator's values (issue 14)
    "ks_cell_area_max": 0.080,
    "ks_nucleus_area_max": 0.117,
    "count_span_low_max": 3,          # counts across psi reach at most 3 ...
    "count_span_high_min": 40,        # ... and at least 40
    "psi_monotonic_min": 0.90,
}


@dataclass
class Reference:
    """What is needed of the corpus, computed once (reused for every checkpoint scored)."""

    path: str
    size: int
    pixel_size_um: float
    tiers: density.TierScheme
    indices: np.ndarray
    tier: np.ndarray  # tier name per reference map
    features: np.ndarray  # (n, D) mask features
    counts: np.ndarray
    cell_areas: np.ndarray  # um^2, all cells
    nucleus_areas: np.ndarray
    diversity_cells: np.ndarray  # (n_diversity, H, W) cell maps for the IoU baseline
    diversity_semantic: np.ndarray
    backbone: object = field(repr=False, default=None)
    # a few corpus label maps per tier (class indices), shown beside generated ones
    examples: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)  # per-object shape measures (see _shapes)


def _areas(cell_maps, nucleus_maps, pixel_size_um: float):
    counts, cells, nucs = [], [], []
    for c, n in zip(cell_maps, nucleus_maps):
        a = np.bincount(np.asarray(c).ravel())[1:]
        b = np.bincount(np.asarray(n).ravel())[1:]
        counts.append(int((a > 0).sum()))
        cells.append(a[a > 0] * pixel_size_um ** 2)
        nucs.append(b[b > 0] * pixel_size_um ** 2)
    cat = (lambda xs: np.concatenate(xs).astype(float) if xs else np.zeros(0))
    return np.asarray(counts), cat(cells), cat(nucs)


# Shape measures that tell the generated maps from the corpus where the areas agree (issue 14:
# precision stayed low with area KS near 0.05); reported beside the KS table, not goals.
SHAPES = {
    "cell_solidity": "cell solidity (area / convex hull)",
    "nucleus_eccentricity": "nucleus eccentricity",
    "nucleus_offset": "nucleus offset (centroid distance / cell radius)",
}


def _shapes(cell_maps, nucleus_maps) -> dict:
    """Per cell: solidity; per nucleus: eccentricity, and its centroid's distance from its cell's
    centroid over the cell's equivalent radius."""
    from skimage.measure import regionprops

    out = {k: [] for k in SHAPES}
    for c, n in zip(cell_maps, nucleus_maps):
        cells = {p.label: p for p in regionprops(np.asarray(c))}
        out["cell_solidity"] += [p.solidity for p in cells.values()]
        for p in regionprops(np.asarray(n)):
            q = cells.get(p.label)
            if q is None:
                continue
            out["nucleus_eccentricity"].append(p.eccentricity)
            radius = np.sqrt(q.area / np.pi)
            out["nucleus_offset"].append(float(np.hypot(*np.subtract(p.centroid, q.centroid))) / radius)
    return {k: np.asarray(v, float) for k, v in out.items()}


def _mask_features(backbone, semantic, cell, batch_size: int = 16) -> np.ndarray:
    from cellgen.quality import masks_to_rgb

    out = []
    for i in range(0, len(cell), batch_size):
        out.append(backbone.features(masks_to_rgb(np.asarray(semantic[i:i + batch_size]),
                                                  np.asarray(cell[i:i + batch_size])), batch_size=batch_size))
    return np.concatenate(out) if out else np.zeros((0, backbone.feature_dim))


def load_reference(path, backbone, n: int = 512, n_diversity: int = 64) -> Reference:
    """Features, tiers and statistics of ``n`` evenly spaced corpus maps (and ``n_diversity``
    of them for the IoU baseline)."""
    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(path) as ds:
        if ds.image_size[0] != ds.image_size[1]:
            raise CellgenError(f"{path}: the reference maps must be square, got {ds.image_size}")
        if ds.n < max(8, n_diversity):
            raise CellgenError(f"{path} holds {ds.n} maps; the evaluation needs at least {max(8, n_diversity)}")
        idx = np.unique(np.linspace(0, ds.n - 1, min(n, ds.n)).round().astype(int))
        semantic = ds.masks_array("semantic", idx)
        cell = ds.masks_array("cell", idx)
        nucleus = ds.masks_array("nucleus", idx)
        tier = np.asarray(ds.metadata["tier"])[idx]
        scheme, px, size = ds.tier_scheme, float(ds.pixel_size_um), int(ds.image_size[0])
    div = np.unique(np.linspace(0, len(idx) - 1, n_diversity).round().astype(int))
    counts, cell_areas, nuc_areas = _areas(cell, nucleus, px)
    tier = tier.astype(str)
    examples = {t: np.stack([label_map_from_instances(cell[i], nucleus[i])
                             for i in np.flatnonzero(tier == t)[:EXAMPLES]])
                for t in scheme.names if (tier == t).any()}
    return Reference(str(path), size, px, scheme, idx, tier, _mask_features(backbone, semantic, cell),
                     counts, cell_areas, nuc_areas, cell[div], semantic[div], backbone, examples,
                     _shapes(cell, nucleus))


def sample_masks(gen, seeds, psi: float = 1.0, size: int | None = None, noise_mode: str = "random"):
    """Exact masks of the generator's maps for ``seeds`` at ``psi``, resampled to ``size``."""
    return sample_label_maps(gen, seeds, psi, size, noise_mode)[1]


def sample_label_maps(gen, seeds, psi: float = 1.0, size: int | None = None, noise_mode: str = "random"):
    """The generator's class maps (N, H, W uint8, argmax of its scores) for ``seeds`` at ``psi``,
    resampled to ``size``, and their exact masks."""
    seeds = list(seeds)
    classes, masks = [], []
    for i in range(0, len(seeds), 16):
        scores = gen.label_maps(seeds[i:i + 16], psi=psi, noise_mode=noise_mode, output_size=size)
        classes.append(np.argmax(scores, axis=1).astype(np.uint8))
        masks += masks_from_scores(scores)
    return (np.concatenate(classes) if classes else np.zeros((0, size or 0, size or 0), np.uint8)), masks


def _ks(a, b) -> float | None:
    return float(ks_2samp(a, b).statistic) if len(a) and len(b) else None


def _median(x) -> float | None:
    return float(np.median(x)) if len(x) else None


def _compare(generated, corpus) -> dict:
    """KS of two samples of one measure, with both medians."""
    return {"ks": _ks(generated, corpus), "generated_median": _median(generated), "corpus_median": _median(corpus)}


def _fd(a, b):
    from cellgen.quality import fd_from_features

    return fd_from_features(a, b) if len(a) >= 2 and len(b) >= 2 else None


def evaluate_contours(gen, ref: Reference, *, n: int = 256, n_diversity: int = 64, psi_seeds: int = 48,
                      noise_mode: str = "random", first_seed: int = 0, k: int = 3, progress=None) -> dict:
    """All measures of one generator against a :class:`Reference` (see the module notes).

    Seeds ``first_seed ..`` at psi = 1 (``n`` maps for P/R, FD and KS; their first
    ``n_diversity`` for the IoU), and the first ``psi_seeds`` of them for the psi sweep.
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    seeds = list(range(first_seed, first_seed + max(n, n_diversity)))
    say(f"sampling {len(seeds)} maps (psi 1, noise {noise_mode})")
    classes, masks = sample_label_maps(gen, seeds, 1.0, ref.size, noise_mode)
    cell = np.stack([m.cell for m in masks])
    semantic = np.stack([m.semantic for m in masks])
    nucleus = np.stack([m.nucleus for m in masks])

    say("diversity")
    iou_gen = pairwise_iou(foreground(cell[:n_diversity]))
    iou_ref = pairwise_iou(foreground(ref.diversity_cells))
    sg, sr = iou_summary(iou_gen), iou_summary(iou_ref)
    diversity = {"generated": sg, "corpus": sr, "ratio": sg["mean"] / sr["mean"] if sr["mean"] > 0 else None,
                 "closest_generated": closest_pairs(iou_gen, 6), "closest_corpus": closest_pairs(iou_ref, 2),
                 "histogram_generated": np.round(iou_gen[np.triu_indices(len(iou_gen), 1)], 4).tolist(),
                 "histogram_corpus": np.round(iou_ref[np.triu_indices(len(iou_ref), 1)], 4).tolist()}

    say("features")
    feats = _mask_features(ref.backbone, semantic[:n], cell[:n])
    tiers = np.array([ref.tiers.assign(density.measure(c, ref.pixel_size_um)[ref.tiers.measure]) for c in cell[:n]])
    n_pr = min(len(feats), len(ref.features))
    pr_ref = ref.features[np.unique(np.linspace(0, len(ref.features) - 1, n_pr).round().astype(int))]
    fidelity = {"precision_recall": precision_recall(pr_ref, feats[:n_pr], k), "fd": {},
                # the corpus against itself (two halves): what P and R are at best, at this sample size
                "precision_recall_corpus_split_half": precision_recall(ref.features[0::2], ref.features[1::2], k),
                "precision_by_tier": _precision_by_tier(ref, pr_ref, feats[:n_pr], tiers[:n_pr], k)}
    for t in ("all", *ref.tiers.names):
        g = feats if t == "all" else feats[tiers == t]
        r = ref.features if t == "all" else ref.features[ref.tier == t]
        floor = _fd(r[0::2], r[1::2]) if len(r) >= 4 else None
        fd = _fd(g, r)
        fidelity["fd"][t] = {"n_generated": int(len(g)), "n_reference": int(len(r)), "fd": fd,
                             "split_half": floor, "ratio": fd / floor if fd is not None and floor else None}

    counts, cell_areas, nuc_areas = _areas(cell[:n], nucleus[:n], ref.pixel_size_um)
    ks = {"count": {"ks": _ks(counts, ref.counts), "generated_mean": float(counts.mean()),
                    "corpus_mean": float(ref.counts.mean())},
          "cell_area_um2": _compare(cell_areas, ref.cell_areas),
          "nucleus_area_um2": _compare(nuc_areas, ref.nucleus_areas)}
    shapes = _shapes(cell[:n], nucleus[:n])
    shape = {k: {"label": SHAPES[k], **_compare(shapes[k], ref.shapes[k])} for k in SHAPES if k in ref.shapes}

    say(f"psi sweep ({psi_seeds} seeds x {len(PSIS)} psi)")
    table = psi_sweep_at(gen, seeds[:psi_seeds], ref, noise_mode)
    zero = list(PSIS).index(0.0)
    control = {"psis": list(PSIS), "seeds": int(psi_seeds), "counts": table.astype(int).tolist(),
               "count_span": [int(table.min()), int(table.max())] if table.size else None,
               "count_mean_by_psi": table.mean(0).tolist() if table.size else None,
               "psi_monotonic_fraction": monotonic_fraction(table) if table.size else None,
               "distinct_counts_at_psi0": int(len(np.unique(table[:, zero]))) if table.size else None}

    result = {"generator": {"path": getattr(gen, "source", ""), "sha256": getattr(gen, "sha256", ""),
                            "info": getattr(gen, "info", {})},
              "reference": {"path": ref.path, "n": int(len(ref.features)), "size": ref.size,
                            "pixel_size_um": ref.pixel_size_um, "tiers": list(ref.tiers.names)},
              "protocol": {"n": int(n), "n_diversity": int(n_diversity), "psi": 1.0, "noise_mode": noise_mode,
                           "seeds": [seeds[0], seeds[-1]], "k": int(k),
                           "features": f"{ref.backbone.metric} on masks (cellgen.quality.masks_to_rgb)"},
              "diversity": diversity, "fidelity": fidelity, "ks": ks, "shape": shape, "density_control": control,
              "tier_counts_generated": {t: int((tiers == t).sum()) for t in ref.tiers.names}}
    result["goals"] = check_goals(result)
    result["seconds"] = time.perf_counter() - t0
    # for the figures; keys starting with "_" stay out of the JSON. Only the maps the
    # near-duplicate figure shows are kept, so ranking many checkpoints stays small in memory.
    shown = sorted({k for i, j, _ in diversity["closest_generated"] for k in (i, j)})
    # (copies: a view would keep the whole batch alive)
    result["_masks"] = {k: (semantic[k].copy(), cell[k].copy(), nucleus[k].copy()) for k in shown}
    result["_examples"] = {"corpus": ref.examples,
                           "generated": {t: classes[:n][tiers == t][:EXAMPLES].copy() for t in ref.tiers.names}}
    return result


def _precision_by_tier(ref: Reference, pr_ref, feats, tiers, k: int) -> dict:
    """Precision of the generated maps of each density tier (against the whole corpus
    manifold), beside the same share for the corpus's odd maps of that tier against its even
    ones: where in density the generated maps leave the corpus."""
    inside = manifold_coverage(pr_ref, feats, k)
    half = manifold_coverage(ref.features[0::2], ref.features[1::2], k)
    half_tier = ref.tier[1::2]
    out = {}
    for t in ref.tiers.names:
        g, c = tiers == t, half_tier == t
        out[t] = {"n_generated": int(g.sum()), "precision": float(inside[g].mean()) if g.any() else None,
                  "n_corpus": int(c.sum()), "corpus_split_half": float(half[c].mean()) if c.any() else None}
    return out


def psi_sweep_at(gen, seeds, ref: Reference, noise_mode: str) -> np.ndarray:
    """Cell counts for every (seed, psi) with maps resampled to the reference's size."""
    table = np.zeros((len(seeds), len(PSIS)))
    for j, psi in enumerate(PSIS):
        table[:, j] = [m.count for m in sample_masks(gen, seeds, psi, ref.size, noise_mode)]
    return table


def check_goals(result: dict) -> dict:
    """Each of :data:`GOALS` with its measured value and whether it is met."""
    d, f, ks, c = result["diversity"], result["fidelity"], result["ks"], result["density_control"]
    ratios = {t: e["ratio"] for t, e in f["fd"].items() if t != "all"}
    pr = f["precision_recall"]
    span = c["count_span"] or [None, None]
    rows = {
        "diversity_ratio": (d["ratio"], d["ratio"] is not None and d["ratio"] <= GOALS["iou_ratio_max"]),
        "pairs_above_0.6": (d["generated"]["fraction_above"], d["generated"]["fraction_above"] < GOALS["pairs_above_0.6_max"]),
        "precision": (pr["precision"], pr["precision"] >= GOALS["precision_min"]),
        "recall": (pr["recall"], pr["recall"] >= GOALS["recall_min"]),
        "fd_floor_ratio_worst_tier": (max((r for r in ratios.values() if r is not None), default=None),
                                      all(r is not None and r <= GOALS["fd_floor_ratio_max"] for r in ratios.values())),
        "ks_count": (ks["count"]["ks"], ks["count"]["ks"] is not None and ks["count"]["ks"] <= GOALS["ks_count_max"]),
        "ks_cell_area": (ks["cell_area_um2"]["ks"], ks["cell_area_um2"]["ks"] is not None
                         and ks["cell_area_um2"]["ks"] <= GOALS["ks_cell_area_max"]),
        "ks_nucleus_area": (ks["nucleus_area_um2"]["ks"], ks["nucleus_area_um2"]["ks"] is not None
                            and ks["nucleus_area_um2"]["ks"] <= GOALS["ks_nucleus_area_max"]),
        "count_span": (span, span[0] is not None and span[0] <= GOALS["count_span_low_max"]
                       and span[1] >= GOALS["count_span_high_min"]),
        "psi_monotonic": (c["psi_monotonic_fraction"], c["psi_monotonic_fraction"] is not None
                          and c["psi_monotonic_fraction"] >= GOALS["psi_monotonic_min"]),
    }
    out = {name: {"value": v, "met": bool(ok)} for name, (v, ok) in rows.items()}
    out["failed"] = [name for name, e in out.items() if not e["met"]]
    out["all_met"] = not out["failed"]
    return out


def selection_key(result: dict) -> tuple:
    """Sort key for picking a snapshot (smaller is better): failed goals first, then the worst
    per-tier FD / floor ratio, then 1 - min(precision, recall)."""
    g = result["goals"]
    pr = result["fidelity"]["precision_recall"]
    worst = g["fd_floor_ratio_worst_tier"]["value"]
    return (len(g["failed"]), float("inf") if worst is None else round(worst, 3),
            1.0 - min(pr["precision"], pr["recall"]))


def rank_checkpoints(paths, ref: Reference, *, progress=None, **kwargs) -> list[tuple[str, dict]]:
    """Evaluate every checkpoint against ``ref``; best first by :func:`selection_key`. Each
    result keeps the few maps its figures show (about 2 MB), so :func:`write_report` can draw them."""
    from cellgen.gen.generator import ContourGenerator

    scored = []
    for p in paths:
        r = evaluate_contours(ContourGenerator.load(p), ref, progress=progress, **kwargs)
        scored.append((str(p), r))
    return sorted(scored, key=lambda pr: selection_key(pr[1]))


def without_arrays(result: dict) -> dict:
    """The result without the maps kept for the figures (the keys starting with ``_``): what
    goes into JSON."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_report(result: dict, out_dir) -> Path:
    """``report.json``, ``report.md``, ``diversity.png``, ``near_duplicates.png`` and
    ``tiers.png`` in ``out_dir``."""
    from cellgen.fileio import atomic_path
    from cellgen.gen.eval_report import (
        diversity_figure,
        markdown,
        near_duplicates_figure,
        tier_examples_figure,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks, examples = result.get("_masks"), result.get("_examples")
    data = without_arrays(result)
    diversity_figure(data, out / "diversity.png")
    if masks is not None:
        near_duplicates_figure(data, masks, out / "near_duplicates.png")
    if examples is not None:
        tier_examples_figure(examples, out / "tiers.png")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(data))
    return out
