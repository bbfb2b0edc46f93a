"""Work beyond one process: a list of calls run on local processes or a Dask cluster.

This module knows no pipeline stage. Callers split their work into shards
(:func:`plan_shards`), give each shard a part file to write, run the shards with
:func:`run_tasks` and merge the parts in index order, so the result has the bytes of a
single-process run whatever the number of workers (see :mod:`cellgen.sample_shards` and
:mod:`cellgen.bench.shards`).

Where the work runs:

* ``workers=N`` (N > 1): N local processes (spawned, torch threads split between them);
* ``scheduler=ADDRESS``: a running Dask distributed scheduler (``tcp://host:8786``, or a
  ``dask_jobqueue``/``LocalCluster`` scheduler's address). Workers must import the same
  cellgen and see the same file system paths (output folder, checkpoints, data).

Public API: :func:`plan_shards`, :func:`n_shards`, :func:`run_tasks`, :func:`cluster_threads`,
:func:`drop_stale_parts`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
from pathlib import Path

from cellgen.errors import CellgenError

#: seconds to wait for a Dask scheduler before giving up with one line ($CELLGEN_SCHEDULER_TIMEOUT)
CONNECT_TIMEOUT = 10.0


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


def n_shards(workers: int, scheduler) -> int:
    """Shards to plan: one per local worker, or one per thread of the Dask cluster."""
    if scheduler is not None and workers <= 1:
        return cluster_threads(scheduler)
    return max(1, int(workers))


def drop_stale_parts(folder: Path, keep: set[str]):
    """Delete ``part-*`` files of another shard plan (a rerun with another worker count)."""
    for f in Path(folder).iterdir():
        if f.name.startswith("part-") and f.name not in keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()  # a part's .partial is a folder


def _init_process(threads: int):
    try:
        import torch
    except ImportError:
        return
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
        timeout = float(os.environ.get("CELLGEN_SCHEDULER_TIMEOUT", CONNECT_TIMEOUT))
        return Client(scheduler, timeout=timeout, set_as_default=False)
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

    def finished(i, value):
        results[i] = value
        if on_done:
            on_done(i, value)

    if scheduler is not None:
        client = _connect(scheduler)
        try:
            from distributed import as_completed

            futures = [client.submit(fn, *args, pure=False) for args in calls]
            index = {f.key: i for i, f in enumerate(futures)}
            try:
                for fut in as_completed(futures, loop=client.loop):  # our client is not the default one
                    finished(index[fut.key], fut.result())
            except BaseException:
                client.cancel(futures)
                raise
        finally:
            client.close()
        return results
    if workers <= 1:
        for i, args in enumerate(calls):
            finished(i, fn(*args))
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # no forked torch/HDF5 state in the children
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(calls)}
        try:
            for fut in cf.as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return results

