"""A generated set sampled on several workers, with the bytes of a single-process run.

The (seed, psi) pairs are sharded by index into contiguous ranges whose starts are
multiples of the batch size, so every batch holds the same images as in a single-process
run (torch may round differently when a batch is composed differently). Each shard writes
its own part file (``OUT.parts/part-START-STOP.h5``, itself a resumable set written through
:class:`~cellgen.datasets.h5.BenchmarkWriter`); the parts are then copied in index order
through the same writer into ``OUT``.

A killed run leaves its finished parts (and a part's ``.partial``); running the same command
again computes only what is missing. Parts from another shard plan (another worker count)
are deleted; a part from other options is refused with one line.

Public API: :func:`sample_sharded`, :func:`sample_part`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cellgen import distributed
from cellgen.datasets.staging import staging_folder
from cellgen.errors import DatasetError

PARTS_SUFFIX = ".parts"

# per worker process: models loaded from a path once, reused by every shard it is given
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


def sample_part(part_path: str, start: int, stop: int, generator, renderer, device: str, pairs, kwargs: dict) -> str:
    """Write images ``start..stop-1`` of the set as the part file ``part_path`` (kept if it exists)."""
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
    from tqdm import tqdm

    from cellgen.pipeline import generated_set

    output = Path(output).absolute()
    # (a run killed right after its merge was renamed into place leaves the merge's folder: finished)
    if output.exists() and not overwrite and not staging_folder(output).is_dir():
        raise DatasetError(f"{output} already exists; pass --overwrite to replace it")
    pairs = [(int(s), float(p)) for s, p in pairs]
    kwargs = dict(kwargs, batch_size=batch_size)
    shards = distributed.plan_shards(len(pairs), distributed.n_shards(workers, scheduler), align=batch_size)
    folder = output.with_name(output.name + PARTS_SUFFIX)
    if overwrite:  # --overwrite starts clean: no part of an earlier run is reused
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"part-{a:09d}-{b:09d}.h5" for a, b in shards]
    distributed.drop_stale_parts(folder, set(names) | {n + ".partial" for n in names})
    # absolute paths: workers of a cluster need not share our working directory
    generator, renderer = (str(Path(m).absolute()) if isinstance(m, (str, os.PathLike)) else m
                           for m in (generator, renderer))
    calls = [(str(folder / name), a, b, generator, renderer, device, pairs, kwargs)
             for name, (a, b) in zip(names, shards)]
    bar = tqdm(total=len(pairs), desc=f"sampling on {len(shards)} shards", unit="img", disable=not progress)
    parts = distributed.run_tasks(sample_part, calls, workers=workers, scheduler=scheduler,
                                  on_done=lambda i, _: bar.update(shards[i][1] - shards[i][0]))
    bar.close()
    # the merge needs only the models' identities (sha256, resolution), loaded here once
    gen = _model("generator", generator, "cpu")
    rend = _model("renderer", renderer, "cpu")
    path = generated_set(output, gen, pairs, renderer=rend, merge_parts=parts, overwrite=overwrite,
                         progress=progress, **kwargs)
    shutil.rmtree(folder, ignore_errors=True)
    return path
