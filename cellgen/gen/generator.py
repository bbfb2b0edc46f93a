"""Public API of the contour generator: seeds in, 4-class label-map scores out.

>>> g = ContourGenerator.load("generator.pt", device="cpu")     # or an official .pkl
>>> scores = g.label_maps([0, 1, 2], psi=0.7)                    # (3, 4, R, R) float32
>>> masks = cellgen.masks.instances_from_label_map(scores[0])

A seed means the same latent as in the official ``generate.py``
(``np.random.RandomState(seed).randn(1, z_dim)``). In every noise mode the output depends
only on checkpoint, seed, psi, cutoff and noise mode: same inputs, identical
arrays, and with ``batch_size=1`` (the default) an image never depends on the other seeds
generated with it.

**Noise.** StyleGAN2 adds a per-pixel noise field at every synthesis layer, and a trained
generator keeps much of the *layout* in it. ``noise_mode='random'`` (the default) gives
every image its own noise, drawn from its seed: numpy ``PCG64(SeedSequence([seed, 1]))``,
one ``standard_normal((r, r))`` float64 field per noise layer in synthesis order (see
:func:`noise_fields`); deterministic, portable (numpy's generator is the same on every
CPU) and independent of the batch. ``'const'`` uses the network's one stored noise field
for every image, as the official ``generate.py`` does: then every seed shares that field
and the layouts come out nearly the same (issue 14), and psi = 0 gives one image for all
seeds. ``'none'`` adds no noise.

Sampling computes in float64 by default (``precision``): float32 convolutions round
differently on CPUs with other instruction sets (oneDNN / MKL kernels), which moves a
class-score argmax now and then; in float64 those differences are ~1e-16 and never change
a mask in practice, so a set means the same set on every machine (docs/format.md).
Results are returned as float32 arrays either way; ``precision='float32'`` is faster.

Public API: :class:`ContourGenerator`, :data:`KIND`, :data:`NOISE_MODES`, :data:`DEFAULT_NOISE_MODE`,
:func:`noise_fields`, :func:`resolve_device`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cellgen.checkpoint import load_checkpoint, load_into, sha256_of
from cellgen.device import compute_dtype, resolve_device
from cellgen.errors import CellgenError
from cellgen.gen.networks import Generator, preset_config, truncate, z_from_seed

KIND = "contour-generator"
ENV_DEFAULT = "CELLGEN_CONTOUR_GENERATOR"
NOISE_MODES = ("random", "const", "none")
DEFAULT_NOISE_MODE = "random"
_NOISE_STREAM = 1  # SeedSequence([seed, 1]): the noise stream of a seed, apart from its z


def noise_fields(seed: int, resolutions) -> list[np.ndarray]:
    """The per-layer noise of the image with this seed: one (r, r) float64 standard-normal
    field per entry of ``resolutions`` (the noise layers' sizes, in synthesis order)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _NOISE_STREAM])))
    return [rng.standard_normal((int(r), int(r))) for r in resolutions]


def check_noise_mode(noise_mode: str) -> str:
    if noise_mode not in NOISE_MODES:
        raise CellgenError(f"noise mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
    return noise_mode


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        seeds = [seeds]
    out = [int(s) for s in seeds]
    if any(s < 0 or s >= 2 ** 32 for s in out):
        raise CellgenError("seeds must lie in 0..2^32-1 (numpy RandomState)")
    return out


class ContourGenerator:
    """A StyleGAN2 label-map generator (EMA weights), in eval mode, ready to sample."""

    def __init__(self, G: Generator, config: dict, device="cpu", sha256: str = "", info: dict | None = None,
                 source: str = "", precision: str = "float64"):
        self.device = resolve_device(device)
        self.precision = precision
        self.G = G.to(self.device, compute_dtype(precision)).eval().requires_grad_(False)
        self.config = dict(config)
        self.sha256 = sha256
        self.info = dict(info or {})
        self.source = source
        if self.G.img_channels != 4:
            raise CellgenError(f"{source or 'generator'} outputs {self.G.img_channels} channels; a contour generator "
                               "outputs the 4 label-map classes (background, cytoplasm, nucleus, boundary)")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, path=None, device="cpu", precision: str = "float64") -> ContourGenerator:
        """Our checkpoint (``.pt``, kind ``contour-generator``) or an official ``.pkl``.

        ``path=None`` uses ``$CELLGEN_CONTOUR_GENERATOR``.
        """
        if path is None:
            path = os.environ.get(ENV_DEFAULT)
            if not path:
                raise CellgenError(f"no contour generator given: pass a generator .pt/.pkl or set ${ENV_DEFAULT}")
        path = Path(path)
        if path.suffix == ".pkl":
            from cellgen.gen.import_official import import_official

            nets = import_official(path, which=("G_ema",))
            return cls(nets["G_ema"], nets["config"], device, sha256_of(path), {"source": "official pkl"}, str(path),
                       precision)
        ckpt = load_checkpoint(path, KIND)
        G = Generator(ckpt["config"])
        load_into(G, ckpt["state_dict"], source=str(path))
        info = {}
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            import json

            info = json.loads(sidecar.read_text()).get("info", {})
        return cls(G, ckpt["config"], device, ckpt["sha256"], info, str(path), precision)

    @classmethod
    def untrained(cls, preset: str = "tiny", seed: int = 0, device="cpu") -> ContourGenerator:
        """A randomly initialised generator (smoke tests, plumbing)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            G = Generator(preset_config(preset))
        return cls(G, G.config, device, "", {"untrained": True}, f"untrained {preset}")

    # -- properties --------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.G.img_resolution

    @property
    def z_dim(self) -> int:
        return self.G.z_dim

    @property
    def w_dim(self) -> int:
        return self.G.w_dim

    @property
    def num_ws(self) -> int:
        return self.G.num_ws

    @property
    def w_avg(self) -> np.ndarray:
        return self.G.mapping.w_avg.detach().cpu().numpy().copy()

    # -- sampling ------------------------------------------------------------------------
    def z_from_seeds(self, seeds) -> np.ndarray:
        """(N, z_dim) float64 latents, one official ``RandomState(seed).randn`` row per seed."""
        return np.concatenate([z_from_seed(s, self.z_dim) for s in _seeds(seeds)], axis=0)

    def w_from_seeds(self, seeds) -> np.ndarray:
        """(N, num_ws, w_dim) float32 untruncated w (the ``w_avg`` tracker is never updated here).

        Each seed is mapped on its own, so its w never depends on the other seeds.
        """
        z = self.z_from_seeds(seeds)
        out = []
        with torch.inference_mode():
            for i in range(len(z)):
                zt = torch.from_numpy(z[i:i + 1]).to(self.device)
                out.append(self.G.mapping(zt, update_w_avg=False).cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def truncate(self, w, psi: float = 1.0, cutoff: int | None = None) -> np.ndarray:
        """``w_avg + psi (w - w_avg)`` on all layers, or only the first ``cutoff``; any real psi."""
        w = np.asarray(w, dtype=np.float32).astype(self._np_dtype)
        self._check_w(w)
        if cutoff is not None and not 0 <= int(cutoff) <= self.num_ws:
            raise CellgenError(f"truncation cutoff must lie in 0..{self.num_ws}, got {cutoff}")
        # the official formula (torch lerp), bit for bit: psi == 1 leaves w untouched
        out = truncate(torch.from_numpy(w.copy()), self.G.mapping.w_avg.detach().cpu(), float(psi),
                       None if cutoff is None else int(cutoff))
        return out.numpy().astype(np.float32)

    def _noise_layers(self) -> list:
        return [m for m in self.G.synthesis.modules() if getattr(m, "use_noise", False)]

    def _synthesis_seeded(self, w1: torch.Tensor, seed: int) -> torch.Tensor:
        """One image with the noise of its seed: the layers' stored fields are swapped for the
        seed's own for this call (the network computes exactly as in ``'const'`` mode)."""
        layers = self._noise_layers()
        saved = [m.noise_const for m in layers]
        fields = noise_fields(seed, [m.resolution for m in layers])
        try:
            for m, f, old in zip(layers, fields, saved):
                m.noise_const = torch.from_numpy(f).to(device=old.device, dtype=old.dtype)
            return self.G.synthesis(w1, noise_mode="const")
        finally:
            for m, old in zip(layers, saved):
                m.noise_const = old

    def label_maps_from_w(self, w, noise_mode: str = DEFAULT_NOISE_MODE, batch_size: int = 1, seeds=None,
                          output_size: int | None = None) -> np.ndarray:
        """(N, 4, R, R) float32 raw class scores for given w (N, num_ws, w_dim).

        ``output_size`` (default: the network's resolution R) resamples the scores bilinearly
        to that size: a generator trained at 128 px on 1 um/px maps then yields 256 px maps at
        0.5 um/px with smooth contours (interpolating scores, not argmax classes, is what keeps
        the contours smooth rather than blocky).

        ``batch_size`` > 1 is faster, but CPU kernels round differently for different batch
        shapes, so only ``batch_size=1`` (the default) makes every image bit-identical
        whatever else is generated with it; equal batch sizes always give equal arrays.
        ``seeds`` (one per w) seed the noise when ``noise_mode='random'`` and are required
        then: an image's noise must come from its own seed, not from its place in a batch.
        """
        w = np.asarray(w, dtype=np.float32).astype(self._np_dtype)
        self._check_w(w)
        check_noise_mode(noise_mode)
        if noise_mode == "random":
            if seeds is None:
                raise CellgenError("noise mode 'random' draws each image's noise from its seed: pass seeds "
                                   "(one per w), or use noise mode 'const'")
            seeds = _seeds(seeds)
            if len(seeds) != len(w):
                raise CellgenError(f"{len(seeds)} seeds for {len(w)} w: give one seed per image")
        out = []
        with torch.inference_mode():
            for i in range(0, len(w), batch_size):
                wt = torch.from_numpy(w[i:i + batch_size]).to(self.device)
                if noise_mode == "random":
                    # image by image: each one's noise is its seed's, whatever the batch holds
                    img = torch.cat([self._synthesis_seeded(wt[j:j + 1], seeds[i + j]) for j in range(len(wt))])
                else:
                    img = self.G.synthesis(wt, noise_mode=noise_mode)
                if output_size is not None and int(output_size) != img.shape[-1]:
                    img = torch.nn.functional.interpolate(img, size=(int(output_size),) * 2, mode="bilinear",
                                                          align_corners=False)
                out.append(img.float().cpu().numpy())
        return np.concatenate(out, axis=0)

    def label_maps(self, seeds, psi: float = 1.0, cutoff: int | None = None, noise_mode: str = DEFAULT_NOISE_MODE,
                   batch_size: int = 1, output_size: int | None = None) -> np.ndarray:
        """(N, 4, R, R) float32 raw class scores for seeds at truncation ``psi``."""
        seeds = _seeds(seeds)
        w = self.truncate(self.w_from_seeds(seeds), psi, cutoff)
        return self.label_maps_from_w(w, noise_mode=noise_mode, batch_size=batch_size, seeds=seeds,
                                      output_size=output_size)

    def pixel_size_at(self, output_size: int | None = None) -> float:
        """um/px of maps resampled to ``output_size``, from the training data's pixel size."""
        base = float(self.info.get("pixel_size_um", 0.5))
        return base * self.resolution / int(output_size or self.resolution)

    def classes(self, seeds, psi: float = 1.0, **kwargs) -> np.ndarray:
        """(N, R, R) uint8 class maps (argmax of :meth:`label_maps`)."""
        return np.argmax(self.label_maps(seeds, psi, **kwargs), axis=1).astype(np.uint8)

    @property
    def _np_dtype(self):
        return np.float64 if self.precision == "float64" else np.float32

    def _check_w(self, w: np.ndarray):
        if w.ndim != 3 or w.shape[1:] != (self.num_ws, self.w_dim):
            raise CellgenError(f"w must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(w.shape)}")
