"""Work beyond one process: shards over local processes or a Dask cluster, and their merge.

Generated sets are sharded by image index into contiguous ranges whose starts are
multiples of the batch size, so every batch holds the same images as in a single-process
run (torch may round differently when a batch is composed differently). Each shard writes
its own part file (``OUT.parts/part-START-STOP.h5``, itself a resumable set written through
:class:`~cellgen.datasets.h5.BenchmarkWriter`); the parts are then copied in index order
through the same writer into ``OUT``. The merged file therefore has the bytes of a
single-process run, whatever the number of workers. Bench work is sharded by image index the
same way: each shard appends its records to its own part file, and the records are merged in
the order a single process would have written them.

Where the work runs:

* ``workers=N`` (N > 1): N local processes (spawned, ``N`` shards, torch threads split
  between them);
* ``scheduler=ADDRESS``: a running Dask distributed scheduler (``tcp://host:8786``, or a
  ``dask_jobqueue``/``LocalCluster`` scheduler's address). Workers must import the same
  cellgen and see the same file system paths (output folder, checkpoints, data).

A killed run leaves its finished parts (and a part's ``.partial``); running the same command
again computes only what is missing. Parts from another shard plan (another worker count)
are deleted; a part from other options is refused with one line.

Public API: :func:`plan_shards`, :func:`run_tasks`, :func:`sample_sharded`,
:func:`bench_units_sharded`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
from pathlib import Path

from cellgen.errors import CellgenError, DatasetError

PARTS_SUFFIX = ".parts"
#: seconds to wait for a Dask scheduler before giving up with one line
CONNECT_TIMEOUT = float(os.environ.get("CELLGEN_SCHEDULER_TIMEOUT", "10"))


# -- planning ----------------------------------------------------------------------------
def plan_shards(n: int, n_shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Split ``0..n`` into at most ``n_shards`` contiguous ``(start, stop)`` ranges of nearly
    equal size, every ``start`` a multiple of ``align``."""
    n, align = int(n), max(1, int(align))
    if n <= 0:
        return []
    blocks = -(-n // align)
    k = max(1, min(int(n_shards), blocks))
    bounds = [min(n, (blocks * j // k) * align) for j in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


# -- execution -----------------------------------------------------------------------------
def _init_process(threads: int):
    import torch

    # processes share the cores: each takes its slice instead of all of them fighting
    torch.set_num_threads(max(1, int(threads)))


def _connect(scheduler):
    try:
        from distributed import Client
    except ImportError:
        raise CellgenError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    if not isinstance(scheduler, str):  # a LocalCluster or other cluster object from Python
        scheduler = scheduler.scheduler_address
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as err:  # OSError/TimeoutError/ValueError: all mean "no usable scheduler there"
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise CellgenError(f"cannot reach a Dask scheduler at {scheduler!r}: {first}") from None


def cluster_threads(scheduler) -> int:
    """Total worker threads of the Dask cluster at ``scheduler`` (at least 1)."""
    client = _connect(scheduler)
    try:
        return max(1, sum(client.nthreads().values()))
    finally:
        client.close()


def run_tasks(fn, calls: list[tuple], *, workers: int = 1, scheduler=None, on_done=None) -> list:
    """``[fn(*args) for args in calls]``, run in ``workers`` local processes or on a Dask cluster.

    ``fn`` must be importable by the workers (a module-level function). Results come back in
    the order of ``calls``; ``on_done(i, result)`` is called as each finishes. The first
    error cancels what has not started and is raised here.
    """
    results: list = [None] * len(calls)
    if scheduler is not None:
        client = _connect(scheduler)
        try:
            from distributed import as_completed

            futures = [client.submit(fn, *args, pure=False) for args in calls]
            index = {f.key: i for i, f in enumerate(futures)}
            try:
                for fut in as_completed(futures, loop=client.loop):  # our client is not the default one
                    i = index[fut.key]
                    results[i] = fut.result()
                    if on_done:
                        on_done(i, results[i])
            except BaseException:
                client.cancel(futures)
                raise
        finally:
            client.close()
        return results
    if workers <= 1:
        for i, args in enumerate(calls):
            results[i] = fn(*args)
            if on_done:
                on_done(i, results[i])
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # no forked torch/HDF5 state in the children
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_done:
                    on_done(i, results[i])
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results


def _n_shards(workers: int, scheduler) -> int:
    if scheduler is not None and workers <= 1:
        return cluster_threads(scheduler)
    return max(1, int(workers))


def _parts_dir(output: Path) -> Path:
    return output.with_name(output.name + PARTS_SUFFIX)


def _drop_stale(folder: Path, keep: set[str]):
    """Delete part files of another shard plan (a rerun with another worker count)."""
    for f in folder.iterdir():
        if f.name.startswith("part-") and f.name not in keep:
            f.unlink()


# -- generated sets ----------------------------------------------------------------------------
_MODELS: dict = {}


def _model(kind: str, spec, device: str):
    """A generator or renderer from a path (loaded once per process) or an object passed as is."""
    if spec is None or not isinstance(spec, (str, os.PathLike)):
        return spec
    key = (kind, str(spec), str(device))
    if key not in _MODELS:
        if kind == "generator":
            from cellgen.gen.generator import ContourGenerator

            _MODELS[key] = ContourGenerator.load(spec, device=device)
        else:
            from cellgen.render.renderer import Renderer

            _MODELS[key] = Renderer.load(spec, device=device)
    return _MODELS[key]


def _sample_part(part_path: str, start: int, stop: int, generator, renderer, device: str, pairs, kwargs: dict) -> str:
    from cellgen.pipeline import generated_set

    path = Path(part_path)
    if path.exists():  # finished by an earlier, interrupted run; the merge checks its recipe
        return str(path)
    gen = _model("generator", generator, device)
    rend = _model("renderer", renderer, device)
    generated_set(path, gen, pairs, renderer=rend, part=(start, stop), **dict(kwargs, progress=False))
    return str(path)


def sample_sharded(output, generator, pairs, *, renderer=None, device: str = "cpu", batch_size: int = 8,
                   workers: int = 1, scheduler=None, overwrite: bool = False, progress: bool = True,
                   **kwargs) -> Path:
    """:func:`cellgen.pipeline.generated_set` split over workers; the same bytes as one process.

    ``generator`` and ``renderer`` are checkpoint paths (each worker loads them once) or
    loaded models (pickled to the workers). ``kwargs`` go to ``generated_set``
    (``pixel_size_um``, ``variants``, ``tiers``, ``command``, ``recipe_extra``, ...).
    """
    from cellgen.pipeline import generated_set

    output = Path(output).absolute()
    if output.exists() and not overwrite:
        raise DatasetError(f"{output} already exists; pass --overwrite to replace it")
    pairs = [(int(s), float(p)) for s, p in pairs]
    kwargs = dict(kwargs, batch_size=batch_size)
    shards = plan_shards(len(pairs), _n_shards(workers, scheduler), align=batch_size)
    folder = _parts_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"part-{a:09d}-{b:09d}.h5" for a, b in shards]
    _drop_stale(folder, set(names) | {n + ".partial" for n in names})
    # absolute paths: workers of a cluster need not share our working directory
    generator, renderer = (str(Path(m).absolute()) if isinstance(m, (str, os.PathLike)) else m
                           for m in (generator, renderer))
    calls = [(str(folder / name), a, b, generator, renderer, device, pairs, kwargs)
             for name, (a, b) in zip(names, shards)]
    from tqdm import tqdm

    bar = tqdm(total=len(pairs), desc=f"sampling on {len(shards)} shards", unit="img", disable=not progress)
    parts = run_tasks(_sample_part, calls, workers=workers, scheduler=scheduler,
                      on_done=lambda i, _: bar.update(shards[i][1] - shards[i][0]))
    bar.close()
    # the merge needs only the models' identities (sha256, resolution), loaded here once
    gen = _model("generator", generator, "cpu")
    rend = _model("renderer", renderer, "cpu")
    path = generated_set(output, gen, pairs, renderer=rend, merge_parts=parts, overwrite=overwrite,
                         progress=progress, **kwargs)
    shutil.rmtree(folder, ignore_errors=True)
    return path


# -- bench -------------------------------------------------------------------------------------
_BENCH: dict = {}


def _bench_part(part_path: str, data: str, method_name: str, options: dict, units: list, compartments) -> str:
    from cellgen.bench import runner

    path = Path(part_path)
    done = {(r["index"], r["variant"]) for r in _part_records(path)}
    todo = [(i, v) for i, v in units if (i, v) not in done]
    if not todo:
        return str(path)
    key = (data, method_name, json.dumps(options, sort_keys=True))
    if _BENCH.get("key") != key:
        if "ds" in _BENCH:
            _BENCH["ds"].close()
        from cellgen.bench.methods import get_method
        from cellgen.datasets.h5 import BenchmarkSet

        _BENCH.update(key=key, ds=BenchmarkSet(data), method=get_method(method_name, **options))
    runner._STATE["ds"], runner._STATE["method"] = _BENCH["ds"], _BENCH["method"]
    with open(path, "a") as fh:  # one finished unit per line: a killed shard keeps its units
        for i, v in todo:
            fh.write(json.dumps(runner._run_unit(i, v, compartments)) + "\n")
            fh.flush()
    return str(path)


def _part_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short when the shard was killed
            continue
    return out


def bench_units_sharded(out_dir, data, method_name: str, options: dict, units: list[tuple[int, str]],
                        compartments, *, workers: int = 1, scheduler=None, on_record=None) -> list[dict]:
    """Score ``units`` ((image index, variant) pairs) on workers, sharded by image index.

    Returns the records in the order of ``units`` (so a results file written from them is
    the one a single process writes); ``on_record(record)`` is called in that order.
    Parts live in ``OUT_DIR/.parts`` until the caller has kept the records.
    """
    images = sorted({int(i) for i, _ in units})
    shards = plan_shards(len(images), _n_shards(workers, scheduler))
    folder = Path(out_dir).absolute() / PARTS_SUFFIX
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"part-{a:09d}-{b:09d}.jsonl" for a, b in shards]
    _drop_stale(folder, set(names))
    calls = []
    for name, (a, b) in zip(names, shards):
        mine = set(images[a:b])
        calls.append((str(folder / name), str(Path(data).absolute()), method_name, options,
                      [(int(i), v) for i, v in units if int(i) in mine], list(compartments)))
    parts = run_tasks(_bench_part, calls, workers=workers, scheduler=scheduler)
    found = {}
    for p in parts:
        for rec in _part_records(Path(p)):
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


def remove_bench_parts(out_dir):
    shutil.rmtree(Path(out_dir) / PARTS_SUFFIX, ignore_errors=True)
