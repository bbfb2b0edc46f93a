"""The pipeline in one place: source -> masks -> density and tier -> noise variants -> set.

A *source* is a function ``index -> SourceItem`` (an image and exact masks plus its seed);
the simulator is one, the contour generator + renderer another. Everything after the source
is shared, so every set is measured, tiered and noised the same way.

Public API: :class:`SourceItem`, :func:`to_uint16`, :func:`make_sample`, :func:`write_set`,
:func:`simulate_set`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from tqdm import tqdm

from cellgen import density, noise, resources
from cellgen.datasets.h5 import FULL_SCALE, BenchmarkWriter, Sample
from cellgen.datasets.staging import check_output, staging_folder
from cellgen.masks import Masks
from cellgen.simulate import SimulationConfig, simulate_image


@dataclass
class SourceItem:
    masks: Masks
    image: np.ndarray | None  # (2, H, W) float in [0, 1], or None for masks-only sets
    seed: int
    psi: float = math.nan
    source: str = "simulate"


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint16 at full scale (values outside are clipped)."""
    return np.round(np.clip(image, 0.0, 1.0) * FULL_SCALE).astype(np.uint16)


def make_sample(item: SourceItem, pixel_size_um: float, tiers: density.TierScheme, variants: dict) -> Sample:
    """Measure density, assign the tier and add noise variants to one source item."""
    measures = density.measure(item.masks.cell, pixel_size_um)
    meta = dict(measures, seed=item.seed, psi=item.psi, source=item.source)
    meta["tier"] = tiers.assign(measures[tiers.measure])
    image = None if item.image is None else to_uint16(item.image)
    noisy = {}
    for name, params in variants.items():
        # noise is applied to the stored uint16 image, so a set can be re-noised from its file
        noisy[name] = noise.apply_noise(image, params, noise.variant_seed(item.seed, name),
                                        pixel_size_um=pixel_size_um, cell=item.masks.cell)
    return Sample(item.masks, image, noisy, meta)


def write_set(
    path,
    n: int,
    source: Callable[[int], SourceItem],
    *,
    image_size: tuple[int, int],
    pixel_size_um: float,
    tiers: density.TierScheme = density.DEFAULT_TIERS,
    variants: list[str] = (),
    with_images: bool = True,
    recipe: dict,
    command: str = "",
    overwrite: bool = False,
    progress: bool = True,
    generator_sha256: str = "",
    renderer_sha256: str = "",
    extra_attrs: dict | None = None,
    part: tuple[int, int] | None = None,
    merge_parts: list | None = None,
    snr_tiers=None,
):
    """Stream ``n`` items from ``source`` into a benchmark set at ``path``; resumable.

    For sharded runs (:mod:`cellgen.distributed`): ``part=(start, stop)`` writes only images
    ``start..stop-1`` to ``path`` as a part file (its own set, whose recipe names the part);
    ``merge_parts`` (part paths in index order, covering ``0..n``) copies their samples into
    the set at ``path`` instead of calling ``source``. Both go through the same writer with the
    same attributes, so the merged file has the bytes of a single-process run.

    ``variants`` are names (see :mod:`cellgen.noise.variants`) or a dict name -> parameters;
    ``snr_tiers`` (a :class:`cellgen.noise.SNRTierScheme`) is recorded when given, and by
    default whenever a variant is not one of the classic presets.
    """
    # names, or name -> parameters (camera variants with custom optics)
    params = dict(variants) if isinstance(variants, dict) else noise.resolve_all(variants)
    params = {k: v for k, v in params.items() if v is not None}
    recipe = dict(recipe, variants=list(params), tiers=tiers.to_json(), pixel_size_um=pixel_size_um)
    snr_scheme = noise.snr_scheme_for(params, snr_tiers)
    if snr_scheme is not None:  # sets of classic presets only keep their recipe and bytes
        recipe.update(variant_params={k: v.to_json() for k, v in params.items()}, snr_tiers=snr_scheme.to_json())
        extra_attrs = dict(extra_attrs or {}, snr_tier_scheme=snr_scheme.to_json())
    header = SetHeader(image_size, pixel_size_um, tiers, params, with_images, command, generator_sha256,
                       renderer_sha256, extra_attrs)
    if merge_parts is not None:
        return _merge_parts(path, n, merge_parts, recipe, overwrite, header)
    offset = 0
    if part is not None:
        offset, stop = int(part[0]), int(part[1])
        if not 0 <= offset < stop <= n:
            raise ValueError(f"part {part} does not lie in 0..{n}")
        recipe = dict(recipe, part=[offset, stop])
        n = stop - offset
    path = check_output(path)
    if overwrite or not staging_folder(path).is_dir():  # a resumed run's commits check as they go
        resources.check_disk(path, n, image_size, len(params), with_images)
    writer = header.writer(path, n, recipe, overwrite)
    with writer:
        bar = tqdm(total=n, initial=writer.start, desc=f"writing {path}", unit="img", disable=not progress)
        for i in range(writer.start, n):
            writer.write(i, make_sample(source(offset + i), pixel_size_um, tiers, params))
            bar.update(1)
        bar.close()
        return writer.finish()


@dataclass(frozen=True)
class SetHeader:
    """What all images of a set share, written once as the file's attributes; the same for a
    single-process run, each of its shards and their merge."""

    image_size: tuple[int, int]
    pixel_size_um: float
    tiers: density.TierScheme
    variants: dict  # variant name -> noise parameters (with ``to_json``)
    with_images: bool
    command: str
    generator_sha256: str
    renderer_sha256: str
    extra_attrs: dict | None

    def writer(self, path, n: int, recipe: dict, overwrite: bool) -> BenchmarkWriter:
        return BenchmarkWriter(
            path, n, self.image_size,
            pixel_size_um=self.pixel_size_um, tier_scheme=self.tiers,
            variants={k: v.to_json() for k, v in self.variants.items()},
            with_images=self.with_images, recipe=recipe, command=self.command, overwrite=overwrite,
            generator_sha256=self.generator_sha256, renderer_sha256=self.renderer_sha256,
            extra_attrs=self.extra_attrs,
        )


def _merge_parts(path, n, parts, recipe, overwrite, header: SetHeader):
    """Copy the samples of part files, in index order, into one set written as a single run would."""
    from cellgen.datasets.h5 import BenchmarkSet
    from cellgen.errors import DatasetError

    want = json.loads(json.dumps(recipe, sort_keys=True))
    opened = []
    try:
        expected = 0
        for p in parts:
            ds = BenchmarkSet(p)
            opened.append(ds)
            part_recipe = json.loads(ds.attrs["recipe"])
            start, stop = part_recipe.pop("part", (None, None))
            # a part from other options (or from a stale shard plan) must never be mixed in
            if part_recipe != want or start != expected or stop - start != ds.n:
                raise DatasetError(f"{p} is not the part from image {expected} of this set "
                                   "(other options or a stale shard); delete it and rerun")
            expected = stop
        if expected != n:
            raise DatasetError(f"the parts cover images 0..{expected - 1} of {n}")
        with header.writer(path, n, recipe, overwrite) as writer:
            # the parts' compressed chunks are copied as they are, in index order
            return writer.finish(sources=[ds.path for ds in opened])
    finally:
        for ds in opened:
            ds.close()


def simulate_set(path, config: SimulationConfig, n: int, seed: int = 0, **kwargs):
    """A benchmark set from the procedural simulator: image i uses seed ``seed + i``."""

    def source(i: int) -> SourceItem:
        sim = simulate_image(seed + i, config)
        return SourceItem(Masks(sim.semantic, sim.cell, sim.nucleus), sim.image, sim.seed, source="simulate")

    recipe = {"source": "simulate", "config": config.to_dict(), "seed": seed, "n": n}
    return write_set(
        path, n, source, image_size=(config.size, config.size), pixel_size_um=config.pixel_size_um,
        recipe=recipe, **kwargs,
    )


def simulate_graded_set(path, config: SimulationConfig, groups: list[tuple[int, int]], seed: int = 0, **kwargs):
    """Exact per-group cell counts (like BBBC004's graded sets): ``groups`` is
    ``[(count, n_images), ...]``; image i uses seed ``seed + i`` and its group's count."""
    counts = [int(c) for c, n in groups for _ in range(int(n))]
    configs = {c: replace(config, count=c) for c in set(counts)}

    def source(i: int) -> SourceItem:
        sim = simulate_image(seed + i, configs[counts[i]])
        return SourceItem(Masks(sim.semantic, sim.cell, sim.nucleus), sim.image, sim.seed, source="simulate")

    recipe = {"source": "simulate-graded", "config": config.to_dict(), "groups": [list(g) for g in groups],
              "seed": seed}
    return write_set(
        path, len(counts), source, image_size=(config.size, config.size), pixel_size_um=config.pixel_size_um,
        recipe=recipe, **kwargs,
    )


def matched_size(generator, renderer=None) -> int:
    """Image side at which the generator's maps match the renderer's training scale.

    A 128 px generator trained on 1 um/px maps feeds a renderer trained at 0.5 um/px with
    256 px maps; without a renderer (or without recorded pixel sizes) it is the generator's
    own resolution.
    """
    size = generator.resolution
    g_px = generator.info.get("pixel_size_um")
    r_px = renderer.info.get("pixel_size_um") if renderer is not None else None
    if g_px and r_px:
        size = round(generator.resolution * float(g_px) / float(r_px))
    return int(size)


def generated_set(path, generator, pairs: list[tuple[int, float]], *, renderer=None, pixel_size_um: float,
                  batch_size: int = 8, recipe_extra: dict | None = None, size: int | None = None,
                  noise_mode: str = "random", **kwargs):
    """A benchmark set from the contour generator (and the renderer, when given).

    ``size`` resamples the generator's label-map scores to that many pixels a side
    (default: its own resolution); ``pixel_size_um`` is the pixel size at that size.

    ``pairs`` lists the (seed, psi) of every image in order. Work is done ``batch_size``
    images at a time: label maps for the batch, exact masks, then rendering of the batch;
    the writer still streams image by image.

    ``noise_mode`` (see :mod:`cellgen.gen.generator`): ``random`` gives each image the
    noise of its own seed, ``const`` the network's one stored field (the official protocol:
    near-identical layouts across seeds). It is recorded in the recipe and as the set
    attribute ``noise_mode``.
    """
    from cellgen.gen.generator import check_noise_mode
    from cellgen.density_control import masks_from_scores

    pairs = [(int(s), float(p)) for s, p in pairs]
    if renderer is None:
        kwargs["variants"] = []  # a masks-only set has no images to add noise to
    cache: dict[int, SourceItem] = {}

    def source(i: int) -> SourceItem:
        if i not in cache:
            cache.clear()
            # batches always start at multiples of batch_size (also when resuming or in a shard):
            # torch may round differently with another batch composition
            first = i - i % batch_size
            chunk = range(first, min(first + batch_size, len(pairs)))
            ws = generator.w_from_seeds([pairs[k][0] for k in chunk])
            ws = np.concatenate([generator.truncate(ws[j:j + 1], pairs[k][1]) for j, k in enumerate(chunk)])
            masks = masks_from_scores(generator.label_maps_from_w(ws, output_size=size, noise_mode=noise_mode,
                                                                  seeds=[pairs[k][0] for k in chunk]))
            images = [None] * len(masks)
            if renderer is not None:
                # a renderer with appearance inputs draws them from the image's own seed
                images = renderer.render_batch(np.stack([m.semantic for m in masks]),
                                               np.stack([m.cell for m in masks]), np.stack([m.nucleus for m in masks]),
                                               batch_size=batch_size, seeds=[pairs[k][0] for k in chunk])
            for j, k in enumerate(chunk):
                cache[k] = SourceItem(masks[j], images[j], pairs[k][0], pairs[k][1], source="stylegan2")
        return cache[i]

    size = int(size or generator.resolution)
    check_noise_mode(noise_mode)
    recipe = {"source": "stylegan2", "size": size, "pairs": [list(p) for p in pairs], "generator_sha256": generator.sha256,
              "renderer_sha256": renderer.sha256 if renderer is not None else "", "noise_mode": noise_mode,
              "precision": _precision(generator, renderer), **(recipe_extra or {})}
    kwargs["extra_attrs"] = dict(kwargs.get("extra_attrs") or {}, noise_mode=noise_mode)
    if generator.info.get("compartments"):  # a generator calibrated on nucleus-only (or cell-only) data
        kwargs["extra_attrs"]["compartments"] = json.dumps(list(generator.info["compartments"]))
    return write_set(path, len(pairs), source, image_size=(size, size), pixel_size_um=pixel_size_um,
                     with_images=renderer is not None, recipe=recipe, generator_sha256=generator.sha256,
                     renderer_sha256=renderer.sha256 if renderer is not None else "", **kwargs)


def _precision(generator, renderer) -> dict:
    """The float precision each model computed in: part of what decides a set's content."""
    return {k: getattr(m, "precision", "float32") for k, m in (("generator", generator), ("renderer", renderer))
            if m is not None}


def rendered_set(path, masks_set, renderer, *, batch_size: int = 8, **kwargs):
    """Render images for every mask of an existing set into a new set (same seeds, psi, tiers)."""
    from cellgen.checkpoint import sha256_of
    from cellgen.datasets.h5 import BenchmarkSet

    src = BenchmarkSet(masks_set)
    meta = src.metadata
    cache: dict[int, SourceItem] = {}

    def source(i: int) -> SourceItem:
        if i not in cache:
            cache.clear()
            first = i - i % batch_size  # aligned batches: a resumed run renders the same batches
            chunk = range(first, min(first + batch_size, src.n))
            masks = [src.masks(k) for k in chunk]
            images = renderer.render_batch(np.stack([m.semantic for m in masks]), np.stack([m.cell for m in masks]),
                                           np.stack([m.nucleus for m in masks]), batch_size=batch_size,
                                           seeds=[int(meta["seed"][k]) for k in chunk])
            for j, k in enumerate(chunk):
                cache[k] = SourceItem(masks[j], images[j], int(meta["seed"][k]), float(meta["psi"][k]),
                                      str(meta["source"][k]))
        return cache[i]

    recipe = {"source": "render", "masks_set_sha256": sha256_of(masks_set), "renderer_sha256": renderer.sha256,
              "precision": _precision(None, renderer)}
    try:
        return write_set(path, src.n, source, image_size=src.image_size, pixel_size_um=src.pixel_size_um,
                         tiers=src.tier_scheme, recipe=recipe, renderer_sha256=renderer.sha256,
                         generator_sha256=str(src.attrs.get("generator_sha256", "")), **kwargs)
    finally:
        src.close()
