"""Public rendering API: exact masks in, a 2-channel fluorescence image out.

>>> r = Renderer.load("renderer.pt", device="cpu")
>>> image = r.render(masks.semantic, masks.cell, masks.nucleus)   # (2, H, W) float32 in [0, 1]

A renderer checkpoint is the shared container (:mod:`cellgen.checkpoint`) of kind
``renderer``: the generator's config (:func:`cellgen.render.networks.make_config`) and its
state dict. Rendering runs under ``torch.inference_mode`` with the network in eval mode;
the generator has no dropout and instance norm uses per-image statistics. A renderer with
appearance inputs (config ``feat_nc`` / ``noise_nc``, :mod:`cellgen.render.appearance`)
also takes a seed per image: the cells' intensities and the noise are drawn from it, so
one mask renders differently under different seeds and the same checkpoint, masks and
seed give the same image (cuDNN is put in deterministic mode on CUDA). Its checkpoint
carries the appearance tables next to the weights.

Public API: :class:`Renderer`, :data:`KIND`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cellgen.checkpoint import load_checkpoint, load_into, save_checkpoint
from cellgen.device import compute_dtype, resolve_device  # noqa: F401 - resolve_device re-exported
from cellgen.errors import CellgenError
from cellgen.render import appearance, networks

KIND = "renderer"


class Renderer:
    """A trained pix2pixHD generator, ready to render masks."""

    def __init__(self, generator: torch.nn.Module, config: dict, device="cpu", sha256: str = "", info: dict | None = None,
                 tables: dict | None = None, precision: str = "float32"):
        self.config = networks.complete_config(config)
        self.tables = tables
        if int(self.config["feat_nc"]) and tables is None:
            raise CellgenError("this renderer takes appearance features but has no appearance tables")
        self.device = resolve_device(device)
        # float32 rounds differently on CPUs with other instruction sets (images then differ by
        # 1 ADU in ~0.2% of pixels, within a set's image tolerance, docs/format.md); float64 makes
        # them practically identical but renders about 5x slower on a CPU
        self.precision, self.dtype = precision, compute_dtype(precision)
        self.generator = generator.to(self.device, self.dtype).eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.sha256 = sha256
        self.info = dict(info or {})
        self.factor = networks.downsampling_factor(self.config)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, path, device="cpu", precision: str = "float32") -> Renderer:
        ckpt = load_checkpoint(path, KIND)
        config = ckpt["config"]
        gen = networks.build_generator(config)
        weights, tables = appearance.split_state(ckpt["state_dict"])
        load_into(gen, weights, source=str(path))
        if int(networks.complete_config(config)["feat_nc"]) and tables is None:
            raise CellgenError(f"{path} takes appearance features but holds no appearance tables")
        info = {}
        sidecar = Path(path).with_suffix(".json")
        if sidecar.exists():
            import json

            info = json.loads(sidecar.read_text()).get("info", {})
        return cls(gen, config, device, ckpt["sha256"], info, tables, precision)

    def save(self, path, info: dict | None = None, half: bool = False) -> Path:
        out = save_checkpoint(path, KIND, self.config, appearance.join_state(self.generator.state_dict(), self.tables),
                              info=info or self.info, half=half)
        from cellgen.checkpoint import sha256_of

        self.sha256 = sha256_of(out)
        return out

    # -- rendering ---------------------------------------------------------------------
    def check_size(self, h: int, w: int) -> None:
        f = self.factor
        if h % f or w % f or h == 0 or w == 0:
            raise CellgenError(
                f"image size {h}x{w} cannot be rendered: this renderer ({self.config.get('preset', 'custom')}) needs "
                f"sides that are multiples of {f}"
            )

    @property
    def varies(self) -> bool:
        """Whether the image depends on a seed (appearance features or noise inputs)."""
        return bool(int(self.config["feat_nc"]) or int(self.config["noise_nc"]))

    def render(self, semantic, cell, nucleus, seed: int = 0) -> np.ndarray:
        """(2, H, W) float32 in [0, 1] (channel 0 nucleus, 1 cytoplasm) for one image's masks."""
        semantic, cell, nucleus = (np.asarray(a) for a in (semantic, cell, nucleus))
        if semantic.ndim != 2:
            raise CellgenError(f"render takes one image's (H, W) masks, got shape {semantic.shape}; use render_batch")
        return self.render_batch(semantic[None], cell[None], nucleus[None], seeds=[seed])[0]

    def render_batch(self, semantic, cell, nucleus, batch_size: int = 8, seeds=None) -> np.ndarray:
        """(B, 2, H, W) float32 in [0, 1] for (B, H, W) masks, ``batch_size`` images at a time.

        ``seeds``: one integer per image (default 0, 1, ..., B - 1), used by renderers that
        :attr:`varies`; others ignore it.
        """
        semantic, cell, nucleus = (np.asarray(a) for a in (semantic, cell, nucleus))
        if semantic.ndim != 3:
            raise CellgenError(f"render_batch takes (B, H, W) masks, got shape {semantic.shape}")
        if not (semantic.shape == cell.shape == nucleus.shape):
            raise CellgenError(
                f"semantic, cell and nucleus masks differ in shape: {semantic.shape}, {cell.shape}, {nucleus.shape}"
            )
        b, h, w = semantic.shape
        self.check_size(h, w)
        seeds = list(range(b)) if seeds is None else [int(s) for s in np.asarray(seeds).ravel()]
        if len(seeds) != b:
            raise CellgenError(f"render_batch got {len(seeds)} seeds for {b} images")
        out = np.empty((b, networks.OUTPUT_NC, h, w), np.float32)
        cudnn_det = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = True
        try:
            with torch.inference_mode():
                for s in range(0, b, max(1, int(batch_size))):
                    sl = slice(s, s + max(1, int(batch_size)))
                    x = networks.encode_masks(semantic[sl], cell[sl], nucleus[sl], device=self.device)
                    if self.varies:
                        extra = [appearance.extra_inputs(self.config, self.tables, sem, cel, seed)
                                 for sem, cel, seed in zip(semantic[sl], cell[sl], seeds[sl])]
                        x = torch.cat([x, torch.from_numpy(np.stack(extra)).to(self.device)], 1)
                    y = networks.to_unit(networks.run_generator(self.generator, self.config, x.to(self.dtype))).float()
                    out[sl] = y.cpu().numpy()
        finally:
            torch.backends.cudnn.deterministic = cudnn_det
        return out

    def __repr__(self):
        return (f"Renderer(preset={self.config.get('preset')!r}, netG={self.config['netG']!r}, "
                f"device={str(self.device)!r}, sha256={self.sha256[:12]!r})")
