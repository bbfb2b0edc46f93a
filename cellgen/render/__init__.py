"""Mask-to-image rendering with pix2pixHD (exact masks in, 2-channel fluorescence image out).

Modules: :mod:`~cellgen.render.networks` (generators, discriminators, losses, presets),
:mod:`~cellgen.render.renderer` (:class:`Renderer`: load a checkpoint and render),
:mod:`~cellgen.render.train` (:func:`train_renderer`, :class:`RendererTrainingConfig`), :mod:`~cellgen.render.evaluate`
(:func:`evaluate_renderer`, the paper's Table 3 protocol), :mod:`~cellgen.render.import_official`
(NVIDIA pix2pixHD ``latest_net_G.pth`` import), :mod:`~cellgen.render.data` (training pairs),
:mod:`~cellgen.render.appearance` (per-cell appearance and noise inputs drawn from a seed),
:mod:`~cellgen.render.perceptual` (EfficientNet-Lite0 perceptual loss),
:mod:`~cellgen.render.texture` (checkerboard amplitude, background std, per-cell means,
power spectrum).

The names below are imported lazily so ``import cellgen.render`` stays cheap.
"""

from __future__ import annotations

_LAZY = {
    "Renderer": "cellgen.render.renderer",
    "PRESETS": "cellgen.render.networks",
    "make_config": "cellgen.render.networks",
    "train_renderer": "cellgen.render.train",
    "RendererTrainingConfig": "cellgen.render.train",
    "evaluate_renderer": "cellgen.render.evaluate",
    "import_official_generator": "cellgen.render.import_official",
    "official_to_renderer": "cellgen.render.import_official",
}

__all__ = [
    "PRESETS",
    "Renderer",
    "RendererTrainingConfig",
    "evaluate_renderer",
    "import_official_generator",
    "make_config",
    "official_to_renderer",
    "train_renderer",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cellgen.render' has no attribute {name!r}")
