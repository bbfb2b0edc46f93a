"""Procedural two-compartment cell simulator (SIMCEP-like).

Places an exact number of cells, each with an irregular cytoplasm and one nucleus inside,
and renders a nucleus channel (textured chromatin) and a cytoplasm channel with background,
illumination and PSF blur. Masks are exact by construction: the image is drawn from them.

Public API: :class:`SimulationConfig`, :func:`simulate_image` (one seed -> one
:class:`SimulatedImage`), :func:`count_for_density`.

Cells that touch share a border decided by a weighted Voronoi competition (each pixel goes
to the cell in whose own shape it lies deepest), which is how crowded cultured cells look:
polygonal where they meet, round where they are free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from cellgen.errors import CellgenError
from cellgen.masks import (
    keep_nucleus_pieces,
    relabel_sequential,
    semantic_from_instances,
)
from cellgen.resources import check_simulation_memory


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides a simulated image besides its seed.

    ``count`` is the exact number of cells, or an inclusive ``(low, high)`` range from which
    each image draws its own count. Lengths are in micrometres and converted with
    ``pixel_size_um``.
    """

    size: int = 256
    count: int | tuple[int, int] = 12
    pixel_size_um: float = 0.5
    cell_radius_um: float = 9.0
    cell_radius_cv: float = 0.18
    nucleus_ratio: float = 0.45
    irregularity: float = 0.35
    elongation: float = 0.3
    clustering: float = 0.3
    touching: float = 0.5
    psf_sigma_um: float = 0.35
    background: float = 0.03

    def __post_init__(self):
        for name in ("pixel_size_um", "cell_radius_um", "cell_radius_cv", "nucleus_ratio", "irregularity",
                     "elongation", "clustering", "touching", "psf_sigma_um", "background"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise CellgenError(f"{name} must be a finite, non-negative number, got {v}")
        lo, hi = self.count_range
        if self.size < 32:
            raise CellgenError(f"--size must be at least 32 pixels, got {self.size}")
        if lo < 0 or hi < lo:
            raise CellgenError(f"--count must be a non-negative number or LOW:HIGH range, got {self.count}")
        for name in ("clustering", "touching", "irregularity", "elongation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise CellgenError(f"{name} must lie in [0, 1], got {v}")
        if not 0.15 <= self.nucleus_ratio <= 0.7:
            raise CellgenError(f"nucleus_ratio must lie in [0.15, 0.7], got {self.nucleus_ratio}")
        if self.pixel_size_um <= 0 or self.cell_radius_um <= 0:
            raise CellgenError("pixel size and cell radius must be positive")
        if self.cell_radius_um / self.pixel_size_um < 1.5:
            raise CellgenError(f"cells of radius {self.cell_radius_um} um are under 2 pixels across at "
                               f"{self.pixel_size_um} um/px; raise the cell radius or lower the pixel size")
        if hi > self.max_count:
            raise CellgenError(
                f"{hi} cells of radius ~{self.cell_radius_um} um cannot fit a {self.size}x{self.size} image at "
                f"{self.pixel_size_um} um/px (at most ~{self.max_count} even shrunk and tightly packed); "
                "lower --count/--density or the cell radius, or raise --size"
            )
        check_simulation_memory(self.size)

    @property
    def max_count(self) -> int:
        """More cells than this cannot be placed: hexagonal packing of cells at the smallest
        size the layout shrinks them to (0.6 x 0.9^3 of the radius), at the closest spacing
        ``touching`` allows. Counts below it may still be refused by the layout itself."""
        radius_px = self.cell_radius_um / self.pixel_size_um * 0.6 * 0.9**3
        spacing = 2 * radius_px * (1.05 - 0.4 * self.touching)
        return int(self.size**2 * 2 / (math.sqrt(3) * spacing**2))

    @property
    def count_range(self) -> tuple[int, int]:
        if isinstance(self.count, (tuple, list)):
            return int(self.count[0]), int(self.count[1])
        return int(self.count), int(self.count)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["count"] = list(self.count_range) if isinstance(self.count, (tuple, list)) else self.count
        return d


@dataclass
class SimulatedImage:
    image: np.ndarray  # (2, H, W) float32 in [0, 1]: nucleus, cytoplasm
    cell: np.ndarray  # (H, W) uint32
    nucleus: np.ndarray  # (H, W) uint32, same ids as cells
    semantic: np.ndarray  # (H, W) uint8: 0 / 128 / 255
    seed: int
    count: int


def count_for_density(cells_per_mm2: float, size: int, pixel_size_um: float) -> int:
    """Cells needed in a size x size image for a target density."""
    if not math.isfinite(cells_per_mm2) or cells_per_mm2 < 0:
        raise CellgenError(f"--density must be a finite, non-negative number of cells per mm^2, got {cells_per_mm2}")
    if not math.isfinite(pixel_size_um) or pixel_size_um <= 0:
        raise CellgenError(f"--pixel-size must be a finite, positive number, got {pixel_size_um}")
    area_mm2 = (size * pixel_size_um / 1000.0) ** 2
    return int(round(cells_per_mm2 * area_mm2))


@dataclass
class _Shape:
    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # (k, 2): amplitude, phase for k = 2..

    def extent(self) -> float:
        return self.radius * np.sqrt(self.aspect) * (1.0 + np.abs(self.harmonics[:, 0]).sum())

    def depth(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside the shape, 1 on its outline."""
        dy, dx = yy - self.cy, xx - self.cx
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / np.sqrt(self.aspect)
        v = (-dx * s + dy * c) * np.sqrt(self.aspect)
        theta = np.arctan2(v, u)
        outline = np.ones_like(theta)
        for k, (amp, phase) in enumerate(self.harmonics, start=2):
            outline += amp * np.cos(k * theta + phase)
        return np.hypot(u, v) / (self.radius * np.maximum(outline, 0.35))


def _random_shape(rng, cy, cx, radius, irregularity, elongation, n_harmonics=4) -> _Shape:
    k = np.arange(2, 2 + n_harmonics)
    amps = rng.normal(0.0, 1.0, n_harmonics) * irregularity * 0.35 / k
    phases = rng.uniform(0, 2 * np.pi, n_harmonics)
    aspect = 1.0 + abs(rng.normal(0.0, elongation * 1.2))
    return _Shape(cy, cx, radius, aspect, rng.uniform(0, np.pi), np.stack([amps, phases], 1))


def _place_centres(rng, radii, reach, size, margin, cfg: SimulationConfig):
    """Sequential placement: cells keep a separation set by ``touching``, nuclei (with their
    guard ring, ``reach`` from the centre) never overlap. A cell that finds no room shrinks
    step by step (crowded cultures have smaller cells) down to 0.6x. If one still finds no
    room (large early cells can block the last ones), the layout starts over with every cell
    0.9x smaller, up to 3 times; then it raises.

    Returns the centres and each cell's scale factor.
    """
    radii, reach = np.array(radii, float), np.array(reach, float)
    for restart in range(4):
        shrink = 0.9 ** restart
        placed = _try_place(rng, radii * shrink, reach * shrink, size, margin, cfg)
        if placed is not None:
            centres, scale = placed
            return centres, scale * shrink
    raise CellgenError(
        f"cannot place {len(radii)} cells of radius ~{cfg.cell_radius_um} um in a {size}x{size} image "
        f"at {cfg.pixel_size_um} um/px with touching={cfg.touching}; lower --count or the cell radius, "
        "or raise --touching"
    )


def _try_place(rng, radii, reach, size, margin, cfg: SimulationConfig):
    n = len(radii)
    separation = 1.05 - 0.4 * cfg.touching
    centres = np.zeros((n, 2))
    scale = np.ones(n)
    radii, reach = np.array(radii, float), np.array(reach, float)
    lo, hi = margin, size - 1 - margin
    for i in range(n):
        placed = False
        for attempt in range(6000):
            if attempt and attempt % 600 == 0:
                if scale[i] <= 0.6:
                    break
                scale[i] *= 0.93
                radii[i] *= 0.93
                reach[i] *= 0.93
            if i and rng.random() < cfg.clustering:
                j = rng.integers(i)
                ang = rng.uniform(0, 2 * np.pi)
                d = max(separation * (radii[i] + radii[j]), reach[i] + reach[j]) * rng.uniform(1.0, 1.25)
                c = centres[j] + d * np.array([np.sin(ang), np.cos(ang)])
                if not (lo <= c[0] <= hi and lo <= c[1] <= hi):
                    continue
            else:
                c = rng.uniform(lo, hi, 2)
            dist = np.hypot(*(centres[:i] - c).T)
            need = np.maximum(separation * (radii[:i] + radii[i]), reach[:i] + reach[i])
            if np.all(dist >= need):
                placed = True
                break
        if not placed:
            return None
        centres[i] = c
    return centres, scale


def _smooth_field(rng, shape, sigma_px) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px, mode="wrap")
    return f / (f.std() + 1e-8)


def _layout(rng, cfg: SimulationConfig, n: int):
    """Cell and nucleus instance maps for n cells."""
    size = cfg.size
    px = cfg.pixel_size_um
    mean_r = cfg.cell_radius_um / px
    sigma = np.sqrt(np.log(1 + cfg.cell_radius_cv**2))
    radii = mean_r * np.exp(rng.normal(-sigma**2 / 2, sigma, n))
    guard_px = max(1.5, 1.0 / px)

    # shapes are drawn around the origin first, so placement knows each nucleus's reach
    cells, nuclei, offsets = [], [], []
    for i in range(n):
        cells.append(_random_shape(rng, 0.0, 0.0, radii[i], cfg.irregularity, cfg.elongation))
        nuc_r = radii[i] * cfg.nucleus_ratio * np.exp(rng.normal(0, 0.08))
        nuclei.append(_random_shape(rng, 0.0, 0.0, nuc_r, cfg.irregularity * 0.35, cfg.elongation * 0.6, 3))
        offset, ang = radii[i] * 0.22 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        offsets.append((offset * np.sin(ang), offset * np.cos(ang)))
    reach = np.array([np.hypot(*o) + s.extent() + guard_px for o, s in zip(offsets, nuclei)])
    margin = int(np.ceil(reach.max(initial=0.0))) + 1
    centres, scale = _place_centres(rng, radii, reach, size, margin, cfg)
    for i in np.flatnonzero(scale < 1.0):
        cells[i].radius *= scale[i]
        nuclei[i].radius *= scale[i]
        offsets[i] = (offsets[i][0] * scale[i], offsets[i][1] * scale[i])

    yy_full, xx_full = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, dtype=np.float32)
    cell = np.zeros((size, size), dtype=np.int32)
    nucleus = np.zeros((size, size), dtype=np.int32)
    guard = np.zeros((size, size), dtype=np.int32)
    for i in range(n):
        cy, cx = centres[i]
        shape, nshape = cells[i], nuclei[i]
        shape.cy, shape.cx = cy, cx
        nshape.cy, nshape.cx = cy + offsets[i][0], cx + offsets[i][1]
        ext = int(np.ceil(shape.extent())) + 2
        y0, y1 = max(0, int(cy) - ext), min(size, int(cy) + ext + 1)
        x0, x1 = max(0, int(cx) - ext), min(size, int(cx) + ext + 1)
        yy, xx = yy_full[y0:y1, x0:x1], xx_full[y0:y1, x0:x1]
        depth = shape.depth(yy, xx)
        win_best, win_cell = best[y0:y1, x0:x1], cell[y0:y1, x0:x1]
        claim = (depth <= 1.0) & (depth < win_best)
        win_best[claim] = depth[claim]
        win_cell[claim] = i + 1
        nd = nshape.depth(yy, xx)
        nucleus[y0:y1, x0:x1][nd <= 1.0] = i + 1
        # a guard ring around the nucleus keeps every nucleus inside its own cell
        guard[y0:y1, x0:x1][nd <= 1.0 + guard_px / max(nshape.radius, 1.0)] = i + 1

    cell = np.where(guard > 0, guard, cell)
    # competition can leave detached slivers; each cell keeps the piece holding its nucleus
    cell = keep_nucleus_pieces(cell, nucleus)
    return cell, np.where(cell == nucleus, nucleus, 0)


def _render(rng, cfg: SimulationConfig, cell: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Two-channel fluorescence image in [0, 1] drawn from exact instance maps."""
    size = cfg.size
    px = cfg.pixel_size_um
    n = int(cell.max(initial=0))
    shape = cell.shape

    nuc_bright = np.exp(rng.normal(np.log(0.55), 0.22, n + 1)).astype(np.float32)
    mitotic = rng.random(n + 1) < 0.04  # condensed, bright nuclei of dividing cells
    nuc_bright[mitotic] *= 1.7
    cyto_bright = np.exp(rng.normal(np.log(0.30), 0.35, n + 1)).astype(np.float32)
    nuc_bright[0] = cyto_bright[0] = 0.0

    chromatin_fine = _smooth_field(rng, shape, 0.45 / px)
    chromatin_coarse = _smooth_field(rng, shape, 1.4 / px)
    spots = _smooth_field(rng, shape, 0.5 / px)
    cyto_fine = _smooth_field(rng, shape, 0.4 / px)
    cyto_coarse = _smooth_field(rng, shape, 2.5 / px)
    illumination = _smooth_field(rng, shape, size / 3.0)

    in_nuc = nucleus > 0
    in_cell = cell > 0
    # distance to the nucleus edge, inside it: a soft dome rather than a flat disc
    nuc_depth = ndi.distance_transform_edt(in_nuc).astype(np.float32)
    dome = 0.72 + 0.28 * np.clip(nuc_depth / (1.5 / px), 0, 1)
    chromatin = 1.0 + 0.22 * chromatin_coarse + 0.14 * chromatin_fine
    chromatin *= np.where(spots > 2.0, 1.45, 1.0)  # chromocentres
    chromatin *= np.where(spots < -2.2, 0.6, 1.0)  # nucleoli exclude DNA stain
    nucleus_ch = nuc_bright[nucleus] * dome * np.clip(chromatin, 0.2, None) * in_nuc

    cell_radius_px = np.sqrt(np.bincount(cell.ravel(), minlength=n + 1) / np.pi).astype(np.float32)
    cell_radius_px[0] = 1.0
    from_nucleus = ndi.distance_transform_edt(~in_nuc).astype(np.float32)
    perinuclear = np.exp(-2.0 * from_nucleus / np.maximum(cell_radius_px[cell], 1.0))
    edge = ndi.distance_transform_edt(in_cell).astype(np.float32)
    lamella = 0.55 + 0.45 * np.clip(edge / (1.5 / px), 0, 1)
    texture = 1.0 + 0.25 * cyto_coarse + 0.18 * cyto_fine
    cyto_ch = cyto_bright[cell] * (0.5 + 0.5 * perinuclear) * lamella * np.clip(texture, 0.2, None)
    cyto_ch = np.where(in_nuc, cyto_ch * 0.6, cyto_ch) * in_cell

    image = np.stack([nucleus_ch, cyto_ch]).astype(np.float32)
    # out-of-focus haze and an uneven, dim background
    haze = ndi.gaussian_filter(image, (0, 6.0 / px, 6.0 / px))
    level = cfg.background * (1.0 + 0.25 * illumination)
    image = image + 0.08 * haze + level[None] * np.array([0.8, 1.2], np.float32)[:, None, None]
    sigma = cfg.psf_sigma_um / px
    if sigma > 0:
        image = ndi.gaussian_filter(image, (0, sigma, sigma))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def simulate_image(seed: int, config: SimulationConfig | None = None) -> SimulatedImage:
    """One simulated image and its exact masks; the same seed and config give the same arrays."""
    cfg = config or SimulationConfig()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x5EED])))
    lo, hi = cfg.count_range
    n = int(rng.integers(lo, hi + 1))
    cell, nucleus = _layout(rng, cfg, n)
    image = _render(rng, cfg, cell, nucleus)
    cell = relabel_sequential(cell)
    nucleus = np.where(nucleus > 0, cell, 0).astype(np.uint32)
    return SimulatedImage(image, cell, nucleus, semantic_from_instances(cell, nucleus), int(seed), n)
