"""Pix2PixHD networks and losses (Wang et al., CVPR 2018), written for cellgen.

Architecture and parameter naming follow the paper and NVIDIA's official code, so the
official generators' state dicts (``model.0.weight``, ``model1_1.1.weight``, ...) load
into these modules unchanged (see :mod:`cellgen.render.import_official`):

* :class:`GlobalGenerator` (G1): ``c7s1-ngf`` stem (reflection pad 3, 7x7 conv, instance
  norm, ReLU), ``n_downsampling`` stride-2 3x3 convs doubling the width, ``n_blocks``
  residual blocks (reflection pad 1 + 3x3 conv + norm + ReLU + pad + conv + norm, skip),
  as many stride-2 transposed convs back up, and a final ``c7s1-output_nc`` + tanh, all in
  one ``nn.Sequential`` called ``model``.
* :class:`LocalEnhancer` (G2 around G1): G1 with width ``ngf * 2**n_local_enhancers``
  minus its last three layers runs on the input downsampled by average pooling; G2's
  front end (``model1_1``: c7s1 + one stride-2 conv) runs at full resolution; the two are
  summed and G2's back end (``model1_2``: residual blocks, one transposed conv, final c7s1
  + tanh) produces the image.
* :class:`MultiscaleDiscriminator`: ``num_D`` PatchGAN discriminators (``n_layers`` 3,
  4x4 convs, LeakyReLU 0.2) on the input average-pooled 0, 1, 2, ... times, returning every
  layer's features for the feature-matching loss (official attribute names
  ``scale{i}_layer{j}``).
* :class:`GANLoss` (least squares), :func:`feature_matching_loss` (``lambda_feat`` 10,
  weights ``4 / (n_layers + 1)`` and ``1 / num_D`` as in the official code), and an
  optional :class:`VGGLoss` with our own :class:`Vgg19` definition that needs a local
  weights file (there is no torchvision here, and nothing is downloaded).

Generator input (:func:`encode_masks`): one-hot semantic classes (background, nucleus,
cytoplasm) plus pix2pixHD's instance edge map taken from both the cell and the nucleus
instance maps (a pixel is an edge where its id differs from a 4-neighbour's), 4 channels.
Output: 2 channels (nucleus, cytoplasm) in [-1, 1]; :func:`to_unit` maps them to [0, 1].

Additions to pix2pixHD, off in the original-architecture presets (so official weights and
older checkpoints build the same network): ``upsample`` ``nearest`` / ``bilinear``
replaces every transposed convolution with :class:`ResizeConv` (no checkerboard);
``feat_nc`` / ``noise_nc`` widen the generator's input by appearance and noise channels
(:mod:`cellgen.render.appearance`); ``lambda_perc`` weights a perceptual loss
(:mod:`cellgen.render.perceptual`), ``lambda_region`` and ``lambda_spectrum`` the region-mean
and power-spectrum losses (:mod:`cellgen.render.losses`); ``background_offset`` sets each
image's background level from the appearance input (:func:`run_generator`).
:func:`transplant` warm-starts one config from another's
weights.

Public API: :data:`PRESETS`, :func:`make_config`, :func:`complete_config`,
:func:`generator_input_nc`, :func:`build_generator`, :func:`build_discriminator`,
:func:`downsampling_factor`, :func:`encode_masks`, :func:`edge_map`, :func:`run_generator`, :func:`to_unit`,
:func:`to_tanh`, :func:`transplant`, :func:`count_parameters`, the modules and losses above.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellgen.checkpoint import load_state_dict_file
from cellgen.errors import CellgenError

INPUT_CLASSES = ("background", "nucleus", "cytoplasm")
SEMANTIC_VALUES = (0, 128, 255)  # cellgen.masks convention, same order as INPUT_CLASSES
OUTPUT_CHANNELS = ("nucleus", "cytoplasm")
INPUT_NC = len(INPUT_CLASSES) + 1  # + instance edge map
OUTPUT_NC = len(OUTPUT_CHANNELS)

# ----------------------------------------------------------------------------- presets

_BASE = {
    "input_nc": INPUT_NC,
    "output_nc": OUTPUT_NC,
    "netG": "global",
    "ngf": 64,
    "n_downsample_global": 4,
    "n_blocks_global": 9,
    "n_local_enhancers": 1,
    "n_blocks_local": 3,
    "ndf": 64,
    "n_layers_D": 3,
    "num_D": 2,
    "lambda_feat": 10.0,
    "no_ganFeat_loss": False,
    "lr": 2e-4,
    "beta1": 0.5,
    "size": 256,
    # Additions to pix2pixHD; their defaults are the original architecture, so configs
    # written before they existed (and official weights) still build the same network.
    "upsample": "transpose",  # or "nearest" / "bilinear": resize, then a 3x3 convolution
    "feat_nc": 0,  # per-instance appearance channels (cellgen.render.appearance)
    "noise_nc": 0,  # per-pixel noise channels drawn from the image's seed
    "lambda_perc": 0.0,  # weight of the EfficientNet-Lite0 perceptual loss (0: off)
    "lambda_region": 0.0,  # weight of the region-mean loss (cellgen.render.losses; 0: off)
    "lambda_spectrum": 0.0,  # weight of the power-spectrum loss (cellgen.render.losses; 0: off)
    "background_offset": False,  # set each image's background level from the appearance input (run_generator)
}
UPSAMPLE_MODES = ("transpose", "nearest", "bilinear")

#: Named configurations. ``size`` is the training crop (the full image side for 1024).
PRESETS: dict[str, dict] = {
    # The paper's 2048x1024 recipe scaled to square 1024 images: G1 (c7s1-64, d128..d1024,
    # 9 x R1024, u512..u64, c7s1) at 512, G2 (c7s1-32, d64, 3 x R64, u32, c7s1) at 1024;
    # official flags --netG local --ngf 32 --num_D 3 (G1 then has 64 filters, as the paper).
    "paper1024": dict(_BASE, netG="local", ngf=32, n_downsample_global=4, n_blocks_global=9,
                      n_local_enhancers=1, n_blocks_local=3, num_D=3, size=1024),
    # CPU-trainable default, the paper's two-stage layout shrunk: G1 (ngf 32, 3 downsamplings,
    # 6 residual blocks) at 128 inside G2 (ngf 16, 3 residual blocks) at 256; 2 x PatchGAN,
    # ndf 32. Measured on 2 CPU threads, batch 1: 0.41 s per G+D step, against 0.71 s for a
    # single global generator at 256 with the same G1 (ngf 32, 7.9 M parameters either way).
    "small256": dict(_BASE, netG="local", ngf=16, n_downsample_global=3, n_blocks_global=6,
                     n_local_enhancers=1, n_blocks_local=3, ndf=32, num_D=2, size=256),
    # small256's layout without its checkerboard and "average cell": resize-then-convolve
    # upsampling, each region's mean intensity (nucleus / cytoplasm of every cell, the
    # background) as 2 input channels, one noise channel, a perceptual loss, and the region-mean
    # and spectrum losses that make the appearance inputs a control and keep the finest grain
    "varied256": dict(_BASE, netG="local", ngf=16, n_downsample_global=3, n_blocks_global=6,
                      n_local_enhancers=1, n_blocks_local=3, ndf=32, num_D=2, size=256,
                      upsample="bilinear", feat_nc=2, noise_nc=1, lambda_perc=1.0,
                      lambda_region=50.0, lambda_spectrum=3.0, background_offset=True),
    # for tests: a few thousand parameters, 64 x 64
    "tiny": dict(_BASE, netG="global", ngf=8, n_downsample_global=2, n_blocks_global=2,
                 ndf=8, num_D=2, size=64),
}


def make_config(preset: str = "small256", **overrides) -> dict:
    """A JSON-serialisable config from a preset plus overrides (unknown keys are refused)."""
    if preset not in PRESETS:
        raise CellgenError(f"unknown renderer preset '{preset}'; choose from: {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise CellgenError(f"unknown renderer config keys: {', '.join(unknown)}")
    config.update({k: v for k, v in overrides.items()})
    config["preset"] = preset
    check_config(config)
    return config


def complete_config(config: dict) -> dict:
    """``config`` with the keys added since it was written set to their (original-architecture) defaults."""
    out = dict(config)
    for key in ("upsample", "feat_nc", "noise_nc", "lambda_perc", "lambda_region", "lambda_spectrum",
                "background_offset"):
        out.setdefault(key, _BASE[key])
    return out


def generator_input_nc(config: dict) -> int:
    """Channels the generator reads: the mask encoding, then appearance features, then noise."""
    config = complete_config(config)
    return int(config["input_nc"]) + int(config["feat_nc"]) + int(config["noise_nc"])


def check_config(config: dict) -> None:
    config = complete_config(config)
    if config["upsample"] not in UPSAMPLE_MODES:
        raise CellgenError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {config['upsample']!r}")
    for key in ("feat_nc", "noise_nc"):
        if int(config[key]) < 0:
            raise CellgenError(f"renderer config {key} must be >= 0, got {config[key]}")
    if int(config["feat_nc"]) not in (0, int(config["output_nc"])):
        raise CellgenError(f"renderer config feat_nc must be 0 or {config['output_nc']} (one region mean per image "
                           f"channel), got {config['feat_nc']}")
    if config["background_offset"] and not int(config["feat_nc"]):
        raise CellgenError("renderer config background_offset needs the appearance inputs (feat_nc > 0)")
    for key in ("lambda_perc", "lambda_region", "lambda_spectrum"):
        if not float(config[key]) >= 0:
            raise CellgenError(f"renderer config {key} must be >= 0, got {config[key]}")
    if config.get("netG") not in ("global", "local"):
        raise CellgenError(f"netG must be 'global' or 'local', got {config.get('netG')!r}")
    for key in ("ngf", "ndf", "n_layers_D", "num_D", "input_nc", "output_nc"):
        if int(config[key]) < 1:
            raise CellgenError(f"renderer config {key} must be >= 1, got {config[key]}")
    if config["size"] % downsampling_factor(config):
        raise CellgenError(
            f"renderer size {config['size']} is not divisible by the downsampling factor {downsampling_factor(config)}"
        )


def downsampling_factor(config: dict) -> int:
    """Image sides must be multiples of this (G1's downsamplings plus the enhancers' halvings)."""
    n = int(config["n_downsample_global"])
    if config["netG"] == "local":
        n += int(config["n_local_enhancers"])
    return 2**n


# ----------------------------------------------------------------------------- inputs


def edge_map(instances: torch.Tensor) -> torch.Tensor:
    """pix2pixHD's instance boundary map: 1 where a pixel's id differs from a 4-neighbour's.

    ``instances``: (B, 1, H, W) integer ids; returns (B, 1, H, W) float. Both pixels of a
    differing pair are marked, so two touching cells get a 2-pixel line between them, and
    an object's outline against the background (id 0) is marked too.
    """
    t = instances
    edge = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    dx = t[..., :, 1:] != t[..., :, :-1]
    dy = t[..., 1:, :] != t[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge.float()


def _as_batch(a, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a).astype(np.int64)) if not torch.is_tensor(a) else a.long()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise CellgenError(f"{name} masks must be (H, W) or (B, H, W), got shape {tuple(t.shape)}")
    return t


def encode_masks(semantic, cell, nucleus, device=None) -> torch.Tensor:
    """(B, 4, H, W) generator input: one-hot (background, nucleus, cytoplasm) + edge map.

    Accepts numpy arrays or tensors, (H, W) or (B, H, W); semantic uses 0 / 128 / 255.
    """
    sem, cel, nuc = (_as_batch(a, n) for a, n in ((semantic, "semantic"), (cell, "cell"), (nucleus, "nucleus")))
    if not (sem.shape == cel.shape == nuc.shape):
        raise CellgenError(
            f"semantic, cell and nucleus masks differ in shape: {tuple(sem.shape)}, {tuple(cel.shape)}, {tuple(nuc.shape)}"
        )
    if device is not None:
        sem, cel, nuc = sem.to(device), cel.to(device), nuc.to(device)
    classes = torch.full(sem.shape, -1, dtype=torch.long, device=sem.device)
    for k, v in enumerate(SEMANTIC_VALUES):
        classes[sem == v] = k
    if (classes < 0).any():
        bad = torch.unique(sem[classes < 0])[:5].tolist()
        raise CellgenError(f"semantic map values must be 0, 128 or 255; found {bad}")
    onehot = F.one_hot(classes, len(INPUT_CLASSES)).permute(0, 3, 1, 2).float()
    edges = torch.maximum(edge_map(cel[:, None]), edge_map(nuc[:, None]))
    return torch.cat([onehot, edges], dim=1)


def run_generator(G: nn.Module, config: dict, x: torch.Tensor) -> torch.Tensor:
    """``G(x)``, with the background level set from the input when ``config["background_offset"]``.

    Instance normalisation removes any image-wide offset of an input channel, so a generator
    cannot read an image's background level from its appearance input (trained renderers drew
    every background at one level, a sixth of the simulator's spread between images). Here the
    level is added, not learned: each channel of the output is shifted so that its mean over
    the background (the one-hot background channel of ``x``) equals the appearance input's
    background value. A camera offset and out-of-focus light add to every pixel in the same
    way, cells included. Used identically in training and rendering.
    """
    out = G(x)
    if not config.get("background_offset"):
        return out
    start = int(config["input_nc"])
    feat = x[:, start:start + int(config["feat_nc"])].to(out.dtype)
    bg = x[:, :1].to(out.dtype)  # encode_masks: channel 0 is the background class
    n = bg.sum((2, 3)).clamp(min=1.0)
    shift = ((feat - out) * bg).sum((2, 3)) / n  # zero for an image without background
    return out + shift[:, :, None, None]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> image in [0, 1]."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def to_tanh(x: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


# ----------------------------------------------------------------------------- generator


def _norm(n: int) -> nn.Module:
    # official 'instance' norm: InstanceNorm2d(affine=False), no parameters, no buffers
    return nn.InstanceNorm2d(n, affine=False)


class ResnetBlock(nn.Module):
    """x + [pad1, conv3, norm, ReLU, pad1, conv3, norm](x); conv weights at conv_block.1 / .5."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResizeConv(nn.Module):
    """2x upsampling that cannot make a checkerboard: resize, reflection pad 1, 3x3 conv.

    A stride-2 transposed convolution gives the four output phases different sets of kernel
    taps, which leaves a 2x2 pattern unless training cancels it exactly (Odena et al. 2016,
    "Deconvolution and checkerboard artifacts"); every output pixel here uses all taps.
    """

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x):
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(self.pad(x))


def _up(cin: int, cout: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    return ResizeConv(cin, cout, mode)


def _global_layers(input_nc, output_nc, ngf, n_down, n_blocks, upsample="transpose") -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), _norm(ngf), nn.ReLU(True)]
    for i in range(n_down):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
    c = ngf * 2**n_down
    layers += [ResnetBlock(c) for _ in range(n_blocks)]
    for i in range(n_down):
        c = ngf * 2 ** (n_down - i)
        layers += [_up(c, c // 2, upsample), _norm(c // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    def __init__(self, input_nc=INPUT_NC, output_nc=OUTPUT_NC, ngf=64, n_downsampling=3, n_blocks=9,
                 upsample="transpose"):
        super().__init__()
        self.model = nn.Sequential(*_global_layers(input_nc, output_nc, ngf, n_downsampling, n_blocks, upsample))

    def forward(self, x):
        return self.model(x)


def _avg_down() -> nn.Module:
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    def __init__(self, input_nc=INPUT_NC, output_nc=OUTPUT_NC, ngf=32, n_downsample_global=3, n_blocks_global=9,
                 n_local_enhancers=1, n_blocks_local=3, upsample="transpose"):
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        g1 = _global_layers(input_nc, output_nc, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global,
                            upsample)
        self.model = nn.Sequential(*g1[:-3])  # G1 without its final pad / conv / tanh
        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            front = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, 7), _norm(c), nn.ReLU(True),
                     nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
            back: list[nn.Module] = [ResnetBlock(2 * c) for _ in range(n_blocks_local)]
            back += [_up(2 * c, c, upsample), _norm(c), nn.ReLU(True)]
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))
        self.downsample = _avg_down()

    def forward(self, x):
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


def init_weights(module: nn.Module) -> None:
    """Official initialisation: conv weights ~ N(0, 0.02) (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)


def build_generator(config: dict) -> nn.Module:
    check_config(config)
    config = complete_config(config)
    cin = generator_input_nc(config)
    if config["netG"] == "global":
        g = GlobalGenerator(cin, config["output_nc"], config["ngf"], config["n_downsample_global"],
                            config["n_blocks_global"], config["upsample"])
    else:
        g = LocalEnhancer(cin, config["output_nc"], config["ngf"], config["n_downsample_global"],
                          config["n_blocks_global"], config["n_local_enhancers"], config["n_blocks_local"],
                          config["upsample"])
    init_weights(g)
    return g


# ----------------------------------------------------------------------------- discriminator


class NLayerDiscriminator(nn.Module):
    """PatchGAN with every stage kept apart (``model0`` .. ``model{n_layers+1}``) for feature matching."""

    def __init__(self, input_nc, ndf=64, n_layers=3):
        super().__init__()
        self.n_layers = n_layers
        k, p = 4, 2  # official: kw 4, padw ceil(3 / 2)
        stages = [[nn.Conv2d(input_nc, ndf, k, stride=2, padding=p), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            stages.append([nn.Conv2d(prev, nf, k, stride=2, padding=p), _norm(nf), nn.LeakyReLU(0.2, True)])
        prev, nf = nf, min(nf * 2, 512)
        stages.append([nn.Conv2d(prev, nf, k, stride=1, padding=p), _norm(nf), nn.LeakyReLU(0.2, True)])
        stages.append([nn.Conv2d(nf, 1, k, stride=1, padding=p)])
        for j, s in enumerate(stages):
            setattr(self, f"model{j}", nn.Sequential(*s))

    def stages(self):
        return [getattr(self, f"model{j}") for j in range(self.n_layers + 2)]


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs; ``forward`` returns, per scale (finest first), all stage outputs."""

    def __init__(self, input_nc, ndf=64, n_layers=3, num_D=3):
        super().__init__()
        self.num_D = num_D
        self.n_layers = n_layers
        for i in range(num_D):
            d = NLayerDiscriminator(input_nc, ndf, n_layers)
            for j, stage in enumerate(d.stages()):
                setattr(self, f"scale{i}_layer{j}", stage)
        self.downsample = _avg_down()

    def forward(self, x) -> list[list[torch.Tensor]]:
        results = []
        for i in range(self.num_D):
            # official order: scale num_D-1 sees the full-resolution input
            feats, h = [], x
            for j in range(self.n_layers + 2):
                h = getattr(self, f"scale{self.num_D - 1 - i}_layer{j}")(h)
                feats.append(h)
            results.append(feats)
            if i != self.num_D - 1:
                x = self.downsample(x)
        return results


def build_discriminator(config: dict) -> nn.Module:
    d = MultiscaleDiscriminator(config["input_nc"] + config["output_nc"], config["ndf"], config["n_layers_D"],
                                config["num_D"])
    init_weights(d)
    return d


# ----------------------------------------------------------------------------- losses


class GANLoss(nn.Module):
    """LSGAN: mean squared error of each scale's final map against 1 (real) or 0 (fake), summed over scales."""

    def forward(self, preds: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
        loss = 0.0
        for feats in preds:
            out = feats[-1]
            loss = loss + F.mse_loss(out, torch.full_like(out, 1.0 if real else 0.0))
        return loss


def feature_matching_loss(pred_fake, pred_real, n_layers: int, num_D: int, lambda_feat: float = 10.0) -> torch.Tensor:
    """Discriminator feature matching (L1 over intermediate features, official weighting)."""
    feat_w = 4.0 / (n_layers + 1)
    d_w = 1.0 / num_D
    loss = 0.0
    for fake, real in zip(pred_fake, pred_real):
        for j in range(len(fake) - 1):
            loss = loss + d_w * feat_w * lambda_feat * F.l1_loss(fake[j], real[j].detach())
    return loss


# VGG19 "features" layer list (torchvision index layout, so its state dict keys fit)
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class Vgg19(nn.Module):
    """VGG19 convolutional trunk with torchvision's ``features.N`` naming; returns relu1_1..relu5_1."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.cuts = (2, 7, 12, 21, 30)  # after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (as pix2pixHD)

    def forward(self, x):
        outs, start = [], 0
        for cut in self.cuts:
            for m in self.features[start:cut]:
                x = m(x)
            outs.append(x)
            start = cut
        return outs


def load_vgg19(path) -> Vgg19:
    """Our VGG19 with user-supplied weights (a torchvision-style state dict file, read with weights_only)."""
    sd = load_state_dict_file(path, "VGG19 weights")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    vgg = Vgg19()
    own = vgg.state_dict()
    picked = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(picked))
    wrong = [k for k in picked if tuple(picked[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"wrong shape {wrong[:3]}"
        raise CellgenError(f"{path} does not hold VGG19 'features.N' weights: {what}")
    vgg.load_state_dict(picked)
    for p in vgg.parameters():
        p.requires_grad_(False)
    return vgg.eval()


class VGGLoss(nn.Module):
    """pix2pixHD perceptual loss: weighted L1 of relu1_1..relu5_1 features (weights 1/32 .. 1)."""

    weights = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

    def __init__(self, path):
        super().__init__()
        self.vgg = load_vgg19(path)

    @staticmethod
    def _rgb(x):
        # 2-channel (nucleus, cytoplasm) in [-1, 1] -> RGB (R empty, G cytoplasm, B nucleus)
        return torch.cat([torch.full_like(x[:, :1], -1.0), x[:, 1:2], x[:, :1]], dim=1)

    def forward(self, x, y):
        fx, fy = self.vgg(self._rgb(x)), self.vgg(self._rgb(y))
        return sum(w * F.l1_loss(a, b.detach()) for w, a, b in zip(self.weights, fx, fy))


def transplant(module: nn.Module, state_dict: dict) -> dict:
    """Copy ``state_dict`` into ``module`` wherever it fits, for warm starts across configs.

    Same-shape tensors are copied. A first convolution that now reads more input channels
    keeps the old ones and starts the new ones at zero, so the network computes what it did
    before until training uses them. A transposed-convolution kernel becomes the kernel of
    the resize-then-convolve layer that replaced it (in/out swapped, flipped), a start that
    the normalisation after it makes close. Returns counts of copied / adapted / fresh tensors.
    """
    own = module.state_dict()
    new = {}
    counts = {"copied": 0, "adapted": 0, "fresh": 0}
    for key, target in own.items():
        src_key = key if key in state_dict else key.replace(".conv.", ".") if ".conv." in key else None
        src = state_dict.get(src_key) if src_key else None
        if src is not None and tuple(src.shape) == tuple(target.shape):
            new[key] = src.to(target.dtype)
            counts["copied"] += 1
        elif src is not None and key != src_key and src.ndim == 4 and \
                tuple(src.shape) == (target.shape[1], target.shape[0], *target.shape[2:]):
            new[key] = src.transpose(0, 1).flip(-1, -2).to(target.dtype).contiguous()
            counts["adapted"] += 1
        elif src is not None and src.ndim == 4 and src.shape[0] == target.shape[0] and \
                src.shape[1] < target.shape[1] and src.shape[2:] == target.shape[2:]:
            t = torch.zeros_like(target)
            t[:, : src.shape[1]] = src.to(target.dtype)
            new[key] = t
            counts["adapted"] += 1
        else:
            new[key] = target
            counts["fresh"] += 1
    with torch.no_grad():
        module.load_state_dict(new)
    return counts


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
