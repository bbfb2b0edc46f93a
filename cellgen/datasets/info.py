"""Summary of a benchmark set: counts per tier and variant, noise, provenance."""

from __future__ import annotations

import json

import numpy as np

from cellgen import noise
from cellgen.datasets.h5 import CLEAN, BenchmarkSet


def set_info(path) -> dict:
    with BenchmarkSet(path) as ds:
        meta = ds.metadata
        variants = {}
        for v in ds.variants:
            if v == CLEAN:
                variants[v] = None
            else:
                snr = ds.snr_db(v)
                text = ds.noise_params(v)
                tiers = noise.snr_tiers_of(ds, v)
                variants[v] = {"params": json.loads(text), "snr_db_mean": float(np.mean(snr)),
                               "description": noise.describe(noise.params_from_json(text)),
                               "snr_tiers": {t: int((tiers == t).sum()) for t in noise.set_snr_scheme(ds).names}}
        attrs = ds.attrs
        counts = meta["count"]
        return {
            "path": str(path),
            "n_images": ds.n,
            "image_size": list(ds.image_size),
            "pixel_size_um": ds.pixel_size_um,
            "tier_scheme": json.loads(ds.tier_scheme.to_json()),
            "tiers": {t: int((meta["tier"] == t).sum()) for t in ds.tier_scheme.names},
            "cells_per_image": {"min": float(counts.min(initial=0)), "max": float(counts.max(initial=0)),
                                "mean": float(counts.mean()) if counts.size else 0.0},
            # a generator at psi near 1 can draw an empty map; its metrics are defined, but a
            # user reading a benchmark of N images should know that some hold no cell at all
            "images_without_cells": int((counts == 0).sum()),
            "variants": variants,
            "snr_tier_scheme": json.loads(noise.set_snr_scheme(ds).to_json()),
            "provenance": {k: attrs.get(k, "") for k in
                           ("cellgen_version", "schema_version", "command", "recipe", "generator_sha256", "renderer_sha256")},
        }


def cells_text(info: dict) -> str:
    """'3-41 (mean 18.2)', and how many images hold no cell when some do not."""
    c = info["cells_per_image"]
    text = f"{c['min']:.0f}-{c['max']:.0f} (mean {c['mean']:.1f})"
    empty = info.get("images_without_cells", 0)
    return text + (f", {empty} image{'s' if empty != 1 else ''} without any cell" if empty else "")
