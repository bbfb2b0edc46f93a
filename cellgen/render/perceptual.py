"""Perceptual loss for the renderer from the packaged EfficientNet-Lite0 weights.

pix2pixHD's perceptual term compares VGG19 activations of the rendered and the real image;
VGG19 weights cannot be shipped or downloaded here, but the ImageNet EfficientNet-Lite0
that the FD metric uses is packaged. The loss is the L1 distance between the two images'
activations after the stem and after stages 2, 3 and 4 of the network (1/2 to 1/16 of the
input resolution), weighted 1/8, 1/4, 1/2, 1 as pix2pixHD weights its deeper layers more.
Images enter as the FD metric's RGB (R 0, G cytoplasm, B nucleus) at their own size (the
convolutions take any size), normalised as the weights expect. The network stays frozen in
eval mode (batch norm uses its stored statistics).

Public API: :class:`EffNetPerceptualLoss`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# blocks after which activations are compared: end of stage 2 (24 ch, 1/4), stage 3
# (40 ch, 1/8), stage 4 (80 ch, 1/16); the stem output (32 ch, 1/2) comes first
_CUTS = (2, 4, 7)
_WEIGHTS = (1.0 / 8, 1.0 / 4, 1.0 / 2, 1.0)


class EffNetPerceptualLoss(nn.Module):
    def __init__(self, device="cpu"):
        super().__init__()
        from cellgen.quality import EFFNET_MEAN, EFFNET_STD, load_backbone

        self.net = load_backbone("efficientnet-lite0", device=device).net
        self.mean, self.std = EFFNET_MEAN, EFFNET_STD

    def _features(self, x):
        # x: (N, 2, H, W) in [-1, 1] (nucleus, cytoplasm) -> activations
        unit = (x + 1.0) * 0.5
        rgb = torch.cat([torch.zeros_like(unit[:, :1]), unit[:, 1:2], unit[:, :1]], 1)
        h = (rgb - self.mean) / self.std
        h = F.relu6(self.net._bn0(self.net._conv_stem(h)))
        feats = [h]
        for i, block in enumerate(self.net._blocks[: _CUTS[-1] + 1]):
            h = block(h)
            if i in _CUTS:
                feats.append(h)
        return feats

    def forward(self, fake, real):
        with torch.no_grad():
            target = self._features(real)
        return sum(w * F.l1_loss(a, b) for w, a, b in zip(_WEIGHTS, self._features(fake), target))
