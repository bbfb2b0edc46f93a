"""Public rendering API: exact masks in, a 2-channel fluorescence image out.

>>> r = Renderer.load("renderer.pt", device="cpu")
>>> image = r.render(masks.semantic, masks.cell, masks.nucleus)   # (2, H, W) float32 in [0, 1]

A renderer checkpoint is the shared container (:mod:`cellgen.checkpoint`) of kind
``renderer``: the generator's config (:func:`cellgen.render.networks.make_config`) and its
state dict. Rendering runs under ``torch.inference_mode`` with the network in eval mode;
pix2pixHD's generator has no dropout and no noise input and instance norm uses per-image
statistics, so the same checkpoint and the same masks give the same image (cuDNN is put
in deterministic mode on CUDA).

Public API: :class:`Renderer`, :data:`KIND`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cellgen.checkpoint import load_checkpoint, load_into, save_checkpoint
from cellgen.device import compute_dtype, resolve_device  # noqa: F401 - resolve_device re-exported
from cellgen.errors import CellgenError
from cellgen.render import networks

KIND = "renderer"


class Renderer:
    """A trained pix2pixHD generator, ready to render masks."""

    def __init__(self, generator: torch.nn.Module, config: dict, device="cpu", sha256: str = "", info: dict | None = None,
                 precision: str = "float32"):
        self.config = dict(config)
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
        load_into(gen, ckpt["state_dict"], source=str(path))
        info = {}
        sidecar = Path(path).with_suffix(".json")
        if sidecar.exists():
            import json

            info = json.loads(sidecar.read_text()).get("info", {})
        return cls(gen, config, device, ckpt["sha256"], info, precision=precision)

    def save(self, path, info: dict | None = None, half: bool = False) -> Path:
        out = save_checkpoint(path, KIND, self.config, self.generator.state_dict(), info=info or self.info, half=half)
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

    def render(self, semantic, cell, nucleus) -> np.ndarray:
        """(2, H, W) float32 in [0, 1] (channel 0 nucleus, 1 cytoplasm) for one image's masks."""
        semantic, cell, nucleus = (np.asarray(a) for a in (semantic, cell, nucleus))
        if semantic.ndim != 2:
            raise CellgenError(f"render takes one image's (H, W) masks, got shape {semantic.shape}; use render_batch")
        return self.render_batch(semantic[None], cell[None], nucleus[None])[0]

    def render_batch(self, semantic, cell, nucleus, batch_size: int = 8) -> np.ndarray:
        """(B, 2, H, W) float32 in [0, 1] for (B, H, W) masks, ``batch_size`` images at a time."""
        semantic, cell, nucleus = (np.asarray(a) for a in (semantic, cell, nucleus))
        if semantic.ndim != 3:
            raise CellgenError(f"render_batch takes (B, H, W) masks, got shape {semantic.shape}")
        if not (semantic.shape == cell.shape == nucleus.shape):
            raise CellgenError(
                f"semantic, cell and nucleus masks differ in shape: {semantic.shape}, {cell.shape}, {nucleus.shape}"
            )
        b, h, w = semantic.shape
        self.check_size(h, w)
        out = np.empty((b, networks.OUTPUT_NC, h, w), np.float32)
        cudnn_det = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = True
        try:
            with torch.inference_mode():
                for s in range(0, b, max(1, int(batch_size))):
                    sl = slice(s, s + max(1, int(batch_size)))
                    x = networks.encode_masks(semantic[sl], cell[sl], nucleus[sl], device=self.device)
                    y = networks.to_unit(self.generator(x.to(self.dtype))).float()
                    out[sl] = y.cpu().numpy()
        finally:
            torch.backends.cudnn.deterministic = cudnn_det
        return out

    def __repr__(self):
        return (f"Renderer(preset={self.config.get('preset')!r}, netG={self.config['netG']!r}, "
                f"device={str(self.device)!r}, sha256={self.sha256[:12]!r})")
