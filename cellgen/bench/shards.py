"""Bench units scored on several workers, sharded by image index, merged in single-process order.

Each shard appends its finished records to its own part file (``OUT/.parts/part-A-B.jsonl``,
one line per unit), so a killed worker keeps what it finished and a rerun scores only the
rest. The records are handed back in the order of the units, so ``records.jsonl`` has the
lines one process would have written. Where the work runs is :mod:`cellgen.distributed`'s
business (local processes or a Dask cluster).

Public API: :func:`score_units_sharded`, :func:`remove_parts`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cellgen import distributed
from cellgen.bench.scoring import complete_lines, score_unit
from cellgen.errors import CellgenError

PARTS = ".parts"

# per worker process: the set and the method stay open between the shards it is given
_OPEN: dict = {}


def _open(data: str, method_name: str, options: dict):
    key = (data, method_name, json.dumps(options, sort_keys=True))
    if _OPEN.get("key") != key:
        if "ds" in _OPEN:
            _OPEN["ds"].close()
            _OPEN["method"].close()
        from cellgen.bench.methods import get_method
        from cellgen.datasets.h5 import BenchmarkSet

        _OPEN.update(key=key, ds=BenchmarkSet(data), method=get_method(method_name, **options))
    return _OPEN["ds"], _OPEN["method"]


def _score_part(part_path: str, data: str, method_name: str, options: dict, units: list, compartments,
                exclude_border: int = 0) -> str:
    path = Path(part_path)
    done = {(r["index"], r["variant"]) for r in map(json.loads, complete_lines(path))}
    todo = [(i, v) for i, v in units if (i, v) not in done]
    if not todo:
        return str(path)
    ds, method = _open(data, method_name, options)
    with open(path, "a") as fh:  # one finished unit per line: a killed shard keeps its units
        for i, v in todo:
            fh.write(json.dumps(score_unit(ds, method, i, v, compartments, exclude_border)) + "\n")
            fh.flush()
    return str(path)


def score_units_sharded(out_dir, data, method_name: str, options: dict, units: list[tuple[int, str]],
                        compartments, *, workers: int = 1, scheduler=None, on_record=None,
                        exclude_border: int = 0) -> list[dict]:
    """Score ``units`` ((image index, variant) pairs) on workers, sharded by image index.

    Returns the records in the order of ``units`` (so a results file written from them is
    the one a single process writes); ``on_record(record)`` is called in that order.
    Parts live in ``OUT_DIR/.parts`` until the caller has kept the records and calls
    :func:`remove_parts`.
    """
    images = sorted({int(i) for i, _ in units})
    shards = distributed.plan_shards(len(images), distributed.n_shards(workers, scheduler))
    folder = Path(out_dir).absolute() / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"part-{a:09d}-{b:09d}.jsonl" for a, b in shards]
    distributed.drop_stale_parts(folder, set(names))
    calls = []
    for name, (a, b) in zip(names, shards):
        mine = set(images[a:b])
        calls.append((str(folder / name), str(Path(data).absolute()), method_name, options,
                      [(int(i), v) for i, v in units if int(i) in mine], list(compartments), int(exclude_border)))
    parts = distributed.run_tasks(_score_part, calls, workers=workers, scheduler=scheduler)
    found = {}
    for p in parts:
        for rec in map(json.loads, complete_lines(Path(p))):
            found[(rec["index"], rec["variant"])] = rec
    records = []
    for i, v in units:
        rec = found.get((int(i), v))
        if rec is None:
            raise CellgenError(f"a worker returned no result for image {i} ({v}); rerun to resume")
        records.append(rec)
        if on_record:
            on_record(rec)
    return records


def remove_parts(out_dir):
    shutil.rmtree(Path(out_dir) / PARTS, ignore_errors=True)
