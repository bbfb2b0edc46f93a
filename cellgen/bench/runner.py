"""Run one segmentation method over a benchmark set and score every image.

Work is one unit per (image, variant). Each finished unit is appended to
``records.jsonl`` in the results folder, so an interrupted bench resumes where it stopped
when run again with the same settings. Reports (tables, plot) are made from the records by
:mod:`cellgen.bench.report`.

Public API: :func:`run_bench`, :func:`score_segmentation`, :func:`load_records`.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cellgen import __version__
from cellgen.bench import metrics
from cellgen.bench.methods import get_method
from cellgen.bench.methods.base import Method, Segmentation, check_image
from cellgen.datasets.h5 import BenchmarkSet
from cellgen.errors import CellgenError
from cellgen.fileio import atomic_path, file_digest
from cellgen.masks import Masks

COMPARTMENTS = ("cell", "nucleus")
RECORDS = "records.jsonl"
RUN = "run.json"


def score_segmentation(seg: Segmentation, masks: Masks, compartments=COMPARTMENTS) -> dict:
    """Per compartment: pixel totals and instance counts of one prediction against exact masks."""
    scores = {}
    for comp in compartments:
        pred = getattr(seg, comp)
        if pred is None:
            continue
        truth = getattr(masks, comp)
        pred = np.asarray(pred)
        if pred.shape != truth.shape:
            raise CellgenError(f"{comp} prediction has shape {pred.shape}, the image is {truth.shape}")
        scores[comp] = (metrics.pixel_totals(truth, pred), metrics.instance_counts(truth, pred))
    return scores


def _encode(scores: dict) -> dict:
    out = {}
    for comp, (pix, inst) in scores.items():
        out[comp] = {
            "pixel": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(pix).items()},
            "instance": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(inst).items()},
        }
    return out


def _decode(scores: dict) -> dict:
    out = {}
    for comp, d in scores.items():
        pix = metrics.PixelTotals(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in d["pixel"].items()})
        inst = metrics.InstanceCounts(**{k: np.asarray(v) if isinstance(v, list) else v for k, v in d["instance"].items()})
        out[comp] = (pix, inst)
    return out


def _complete_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    good = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        good.append(line)
    return good


def load_records(results_dir) -> list[dict]:
    """Finished units of a results folder (a half-written line from a crash is ignored)."""
    records = []
    for line in _complete_lines(Path(results_dir) / RECORDS):
        rec = json.loads(line)
        rec["scores"] = _decode(rec["scores"])
        records.append(rec)
    return records


# -- one unit of work, in this process or a worker ---------------------------------------
_STATE: dict = {}


def _init_worker(data: str, method_name: str, options: dict):
    import torch

    torch.set_num_threads(1)  # one image per process: threads would only fight over cores
    _STATE["ds"] = BenchmarkSet(data)
    _STATE["method"] = get_method(method_name, **options)


def _run_unit(index: int, variant: str, compartments) -> dict:
    ds: BenchmarkSet = _STATE["ds"]
    method: Method = _STATE["method"]
    masks = ds.masks(index)
    start = time.perf_counter()
    if hasattr(method, "labels_for"):
        seg = method.labels_for(index, variant, masks.cell.shape)
    else:
        seg = method.segment(check_image(ds.images(index, variant)), ds.pixel_size_um)
    seconds = time.perf_counter() - start
    return {
        "index": int(index),
        "variant": variant,
        "tier": str(ds.metadata["tier"][index]),
        "seconds": seconds,
        "scores": _encode(score_segmentation(seg, masks, compartments)),
    }


def run_bench(
    data,
    method_name: str,
    out_dir,
    options: dict | None = None,
    variants: list[str] | None = None,
    tiers: list[str] | None = None,
    limit: int | None = None,
    jobs: int = 1,
    progress: bool = True,
    command: str = "",
    workers: int = 1,
    scheduler=None,
) -> Path:
    """Segment and score every selected (image, variant); returns the results folder.

    ``jobs`` spreads single units over local processes; ``workers`` (local processes) or
    ``scheduler`` (a Dask scheduler address) shard the images (:mod:`cellgen.distributed`).
    Either way the records are written in the same order as by one process.
    """
    options = dict(options or {})
    out = Path(out_dir)
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
        "method": method.describe(),
        "options": options,
        "variants": variants,
        "indices": indices.tolist(),
        "compartments": compartments,
        "pixel_size_um": pixel_size,
        "cellgen_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN
    done = {}
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if {k: previous.get(k) for k in settings} != settings:
            raise CellgenError(f"{out} holds results of a different bench run; choose another --output or delete it")
        good = _complete_lines(out / RECORDS)
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
            from cellgen.distributed import bench_units_sharded, remove_bench_parts

            method.close()
            bench_units_sharded(out, data, method_name, options, todo, compartments, workers=workers,
                                scheduler=scheduler, on_record=keep)
            records.flush()
            remove_bench_parts(out)
        elif jobs <= 1:
            _STATE["ds"] = BenchmarkSet(data)
            _STATE["method"] = method
            try:
                for i, v in todo:
                    keep(_run_unit(i, v, compartments))
            finally:
                _STATE.pop("ds").close()
                _STATE.pop("method")
                method.close()
        else:
            method.close()
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                        initargs=(str(data), method_name, options)) as pool:
                futures = [pool.submit(_run_unit, i, v, compartments) for i, v in todo]
                try:
                    for fut in futures:  # in submission order, so records.jsonl is deterministic
                        keep(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    bar.close()
    return out
