"""Run one segmentation method over a benchmark set and score every image.

Work is one unit per (image, variant), scored by :mod:`cellgen.bench.scoring`. Each
finished unit is appended to ``records.jsonl`` in the results folder, so an interrupted
bench resumes where it stopped when run again with the same settings. With ``workers`` or
``scheduler`` the units are sharded by :mod:`cellgen.bench.shards`. Reports (tables, plot)
are made from the records by :mod:`cellgen.bench.report`.

Public API: :func:`run_bench` (and, from :mod:`cellgen.bench.scoring`,
:func:`score_segmentation`, :func:`load_records`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cellgen import __version__
from cellgen.bench.methods import get_method
from cellgen.bench.scoring import COMPARTMENTS, RECORDS, complete_lines, load_records, score_segmentation, score_unit
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path, file_digest

RUN = "run.json"

__all__ = ["COMPARTMENTS", "RECORDS", "RUN", "load_records", "run_bench", "score_segmentation"]


def run_bench(
    data,
    method_name: str,
    out_dir,
    options: dict | None = None,
    variants: list[str] | None = None,
    tiers: list[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    command: str = "",
    workers: int = 1,
    scheduler=None,
    exclude_border: int = 0,
) -> Path:
    """Segment and score every selected (image, variant); returns the results folder.

    ``exclude_border`` > 0 drops true and predicted objects with a pixel within that many
    pixels of the image border before matching (:mod:`cellgen.bench.border`).

    ``workers`` (local processes) or ``scheduler`` (a Dask scheduler address) shard the
    images (:mod:`cellgen.bench.shards`); the records are written in the same order as by
    one process.
    """
    options = dict(options or {})
    out = Path(out_dir)
    if exclude_border is None or int(exclude_border) != exclude_border or exclude_border < 0:
        raise CellgenError(f"--exclude-border must be a whole number of pixels >= 0, got {exclude_border}")
    exclude_border = int(exclude_border)
    method = get_method(method_name, **options)
    method.check()
    with BenchmarkSet(data) as ds:
        if not variants:
            # stored predictions cover the variants they were made for; a method covers all
            covered = method.variants() if hasattr(method, "variants") else ds.variants
            variants = [v for v in ds.variants if v in covered] or (["clean"] if not ds.has_images else [])
        if not ds.has_images and not hasattr(method, "labels_for"):
            raise CellgenError(f"{data} is a masks-only set: there are no images to segment")
        for v in variants:
            ds.require_variant(v)
        for t in tiers or []:
            ds.indices(t)
        indices = np.concatenate([ds.indices(t) for t in tiers]) if tiers else ds.indices()
        indices = np.sort(indices)[:limit] if limit else np.sort(indices)
        set_compartments = json.loads(ds.attrs.get("compartments", json.dumps(list(COMPARTMENTS))))
        pixel_size = ds.pixel_size_um
    compartments = [c for c in COMPARTMENTS if c in method.compartments and c in set_compartments]
    if not compartments:
        raise CellgenError(f"method '{method_name}' segments none of this set's compartments {set_compartments}")

    settings = {
        "data": str(Path(data).resolve()),
        "data_sha256": file_digest(data),
        "method": dict(method.describe(), for_this_set=method.settings_for_set(pixel_size)),
        "options": options,
        "variants": variants,
        "indices": indices.tolist(),
        "compartments": compartments,
        "pixel_size_um": pixel_size,
        "exclude_border_px": exclude_border,
        "cellgen_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN
    done = {}
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if {k: previous.get(k) for k in settings} != settings:
            raise CellgenError(f"{out} holds results of a different bench run; choose another --output or delete it")
        good = complete_lines(out / RECORDS)
        with atomic_path(out / RECORDS) as tmp:  # drop a cut-short line before appending
            tmp.write_text("".join(line + "\n" for line in good))
        done = {(json.loads(line)["index"], json.loads(line)["variant"]) for line in good}
    else:
        (out / RECORDS).unlink(missing_ok=True)
        run_file.write_text(json.dumps(dict(settings, command=command), indent=2))

    todo = [(int(i), v) for v in variants for i in indices if (int(i), v) not in done]
    bar = tqdm(total=len(variants) * len(indices), initial=len(variants) * len(indices) - len(todo),
               desc=f"{method_name}", unit="img", disable=not progress)
    with open(out / RECORDS, "a") as records:
        def keep(rec):
            records.write(json.dumps(rec) + "\n")
            records.flush()
            bar.update(1)

        if (workers > 1 or scheduler is not None) and todo:
            from cellgen.bench.shards import remove_parts, score_units_sharded

            method.close()
            score_units_sharded(out, data, method_name, options, todo, compartments, workers=workers,
                                scheduler=scheduler, on_record=keep, exclude_border=exclude_border)
            records.flush()
            remove_parts(out)
        else:
            try:
                with BenchmarkSet(data) as ds:
                    for i, v in todo:
                        keep(score_unit(ds, method, i, v, compartments, exclude_border))
            finally:
                method.close()
    bar.close()
    return out
