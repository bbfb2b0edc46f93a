"""StyleGAN2 for 4-class label maps, written for cellgen.

Faithful to the published StyleGAN2 (config F, as in NVlabs' stylegan2-ada-pytorch) in
architecture, initialisation, equalized learning rate and parameter/buffer *names*, so
that an official network file maps onto these modules one to one
(:mod:`cellgen.gen.import_official`):

* mapping network ``z -> w``: z normalised by its 2nd moment, ``num_layers`` fully
  connected lrelu layers with learning-rate multiplier 0.01, tracked ``w_avg`` (moving
  average during training, beta 0.995), broadcast to ``num_ws`` copies, truncation
  ``w' = w_avg + psi (w - w_avg)`` for any real psi, optionally only on the first
  ``truncation_cutoff`` layers;
* synthesis from a learned 4x4 constant, modulated 3x3 convolutions with demodulation
  (eps 1e-8), per-layer noise (``noise_mode`` random / const / none) with learned
  strength, bias + lrelu with gain sqrt(2) and optional clamping, upsampling by a
  transposed convolution followed by the [1,3,3,1] low-pass FIR filter, skip architecture
  (a toRGB per resolution, upsampled with the same filter and summed);
* residual discriminator, minibatch standard deviation (group size 4, 1 channel) and the
  standard epilogue (conv 3x3, fc, out).

The generator's "image" has ``img_channels = 4`` raw class scores (background, cytoplasm,
nucleus, boundary); argmax gives the class map (:mod:`cellgen.masks`).

The configuration is a plain JSON-serialisable dict (:func:`preset_config`), stored in
checkpoints so they rebuild the model. Public API: :data:`PRESETS`, :func:`preset_config`,
:func:`build_generator`, :func:`build_discriminator`, :class:`Generator`,
:class:`Discriminator`, :func:`z_from_seed`, :func:`modulated_conv2d`,
:func:`count_parameters`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from cellgen.errors import CellgenError

LRELU_GAIN = math.sqrt(2.0)
LRELU_SLOPE = 0.2
FIR = (1.0, 3.0, 3.0, 1.0)

# --------------------------------------------------------------------------------------
# configuration

_BASE = {
    "arch": "stylegan2",
    "img_channels": 4,
    "c_dim": 0,
    "mapping_lr_multiplier": 0.01,
    "w_avg_beta": 0.995,
    "conv_clamp": None,
    "mbstd_group_size": 4,
    "mbstd_num_channels": 1,
    "channels": None,  # optional explicit {resolution: channels}, overrides base/max
    # An optional "d_channels" {resolution: channels} gives the discriminator its own widths
    # (default: the generator's), to widen G without strengthening D. It is not set here, so
    # configs written before it existed still compare equal when a run resumes.
}

PRESETS: dict[str, dict] = {
    # The paper's 512x512 configuration (stylegan2-ada-pytorch ``--cfg paper512``):
    # channel base 32768 / max 512, 8 mapping layers, conv clamp 256 as its train.py sets,
    # minibatch-stddev group 8, R1 gamma 0.5, lr 0.0025, batch 64, EMA 20 kimg, path-length
    # weight 2 and style mixing 0.9 (StyleGAN2Loss defaults).
    "paper512": {
        "resolution": 512, "z_dim": 512, "w_dim": 512, "mapping_layers": 8, "channel_base": 32768, "channel_max": 512,
        "conv_clamp": 256, "mbstd_group_size": 8,
        "training": {"batch": 64, "lr": 0.0025, "r1_gamma": 0.5, "ema_kimg": 20.0, "ema_rampup": None, "pl_weight": 2.0,
                      "style_mixing_prob": 0.9, "ada_kimg": 500, "d_input": "softmax"},
    },
    # CPU-trainable 256x256: channels 128 at 4..16 px, then halving: 64 at 32, 32 at 64,
    # 16 at 128, 8 at 256 (label maps are piecewise constant with 4 classes, so few
    # high-resolution channels suffice, and every resolution then costs about the same
    # FLOPs); no activation clamping (it only guards fp16, and costs 4 memory passes per
    # layer on a CPU); mapping depth 4 (the mapping costs nothing next to the convolutions,
    # but with lr multiplier 0.01 a deep mapping learns slowly in a short run; ADA's own
    # small configs use 2, the paper 8).
    "small256": {
        "resolution": 256, "z_dim": 128, "w_dim": 128, "mapping_layers": 4, "channel_base": 2048, "channel_max": 128,
        "conv_clamp": None,
        # training as ADA's "auto" config for batch 8: gamma 0.0002 * res^2 / batch, EMA batch*10/32
        # kimg with ramp-up 0.05; no path-length reg. or style mixing (cheaper, short runs);
        # ADA speed 20 kimg per unit of p (500 is tuned for runs of thousands of kimg)
        "training": {"batch": 8, "lr": 0.0025, "r1_gamma": 1.6, "ema_kimg": 2.5, "ema_rampup": 0.05, "pl_weight": 0.0,
                      "style_mixing_prob": 0.0, "ada_kimg": 20, "d_input": "softmax"},
    },
    # The shipped default: 128 x 128 (1 um/px label maps), half small256's channels above 8 px
    # (64 at 16 px ... 8 at 128 px). On a CPU, activations at 256 px cost ~3.7x more time per
    # image than at 128 px despite the equal-FLOPs channel plan, and channel base 1024 ran 1.8x
    # more kimg per CPU minute than 2048 when two runs started side by side; label maps need
    # few channels. R1 gamma by ADA's rule, 0.0002 * 128^2 / 8.
    "small128": {
        "resolution": 128, "z_dim": 128, "w_dim": 128, "mapping_layers": 4, "channel_base": 1024, "channel_max": 128,
        "conv_clamp": None,
        "training": {"batch": 8, "lr": 0.0025, "r1_gamma": 0.4, "ema_kimg": 2.5, "ema_rampup": 0.05, "pl_weight": 0.0,
                      "style_mixing_prob": 0.0, "ada_kimg": 20, "d_input": "softmax"},
    },
    # Tests: 32x32, 32..8 channels, 2 mapping layers.
    "tiny": {
        "resolution": 32, "z_dim": 32, "w_dim": 32, "mapping_layers": 2, "channel_base": 256, "channel_max": 32,
        "training": {"batch": 4, "lr": 0.0025, "r1_gamma": 1.0, "ema_kimg": 0.05, "ema_rampup": None, "pl_weight": 0.0,
                      "style_mixing_prob": 0.0, "ada_kimg": 1, "d_input": "softmax"},
    },
}


def preset_config(name: str, **overrides) -> dict:
    """A full config dict for preset ``name`` (``overrides`` replace top-level keys)."""
    if name not in PRESETS:
        raise CellgenError(f"unknown generator preset '{name}'; choose one of {', '.join(PRESETS)}")
    cfg = dict(copy.deepcopy(_BASE), preset=name, **copy.deepcopy(PRESETS[name]))
    for k, v in overrides.items():
        if k == "training" and isinstance(v, dict):
            cfg["training"].update(v)
        else:
            cfg[k] = v
    return check_config(cfg)


def check_config(cfg: dict) -> dict:
    cfg = dict(copy.deepcopy(_BASE), **cfg)
    res = int(cfg.get("resolution", 0))
    if res < 4 or res & (res - 1):
        raise CellgenError(f"generator resolution must be a power of two >= 4, got {res}")
    if int(cfg["c_dim"]) != 0:
        raise CellgenError("conditional generators (c_dim > 0) are not supported")
    for key in ("z_dim", "w_dim", "mapping_layers"):
        if int(cfg.get(key, 0)) < 1:
            raise CellgenError(f"generator config needs a positive '{key}'")
    cfg.setdefault("training", {})
    return cfg


def block_resolutions(cfg: dict) -> list[int]:
    return [2 ** i for i in range(2, int(np.log2(cfg["resolution"])) + 1)]


def channels_for(cfg: dict) -> dict[int, int]:
    """Channels per resolution: ``min(channel_base // res, channel_max)`` or explicit ``channels``."""
    if cfg.get("channels"):
        return {int(k): int(v) for k, v in cfg["channels"].items()}
    return {res: min(int(cfg["channel_base"]) // res, int(cfg["channel_max"]))
            for res in block_resolutions(cfg)}


def z_from_seed(seed: int, z_dim: int) -> np.ndarray:
    """The latent of ``seed``, exactly as the official generate.py: float64 (1, z_dim)."""
    return np.random.RandomState(int(seed)).randn(1, int(z_dim))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------
# ops


def setup_filter(taps=FIR) -> torch.Tensor:
    """2-D FIR filter from 1-D taps: outer product, normalised to unit sum (4x4 for [1,3,3,1])."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0, 0, 0), gain: float = 1.0):
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), FIR-filter, decimate."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = (f * gain).to(x.dtype).flip([0, 1])  # true convolution (symmetric filter: no-op)
    k = k[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x, f):
    fw = f.shape[-1]
    return upfirdn2d(x, f, up=2, pad=((fw + 1) // 2, (fw - 2) // 2, (fw + 1) // 2, (fw - 2) // 2), gain=4.0)


def conv2d_resample(x, w, f=None, up: int = 1, down: int = 1, padding: int = 0):
    """Convolution (correlation, like torch) with optional 2x FIR up- or downsampling."""
    kh, kw = w.shape[-2:]
    p0 = p1 = padding
    if f is not None:
        fw = f.shape[-1]
        if up > 1:
            p0 += (fw + up - 1) // 2
            p1 += (fw - up) // 2
        if down > 1:
            p0 += (fw - down + 1) // 2
            p1 += (fw - down) // 2
    if up > 1:
        # transposed strided conv, then the low-pass filter (gain up^2 keeps the DC level)
        p0 -= kw - 1
        p1 -= kw - up
        pt = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=up, padding=pt)
        return upfirdn2d(x, f, pad=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up * up)
    if down > 1:
        if kw == 1 and kh == 1:
            x = upfirdn2d(x, f, down=down, pad=(p0, p1, p0, p1))
            return F.conv2d(x, w)
        x = upfirdn2d(x, f, pad=(p0, p1, p0, p1))
        return F.conv2d(x, w, stride=down)
    return F.conv2d(x, w, padding=padding)


def bias_act(x, b=None, act: str = "linear", gain: float | None = None, clamp: float | None = None):
    """Add bias (per channel), activation (linear / lrelu 0.2), gain (default sqrt 2 for lrelu), clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = LRELU_GAIN if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unknown activation {act}")
    gain = 1.0 if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x, dim: int = 1, eps: float = 1e-8):
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x, weight, styles, noise=None, up: int = 1, padding: int = 0, resample_filter=None,
                     demodulate: bool = True):
    """Modulated convolution: scale input channels by ``styles`` (N, I), convolve with the shared
    ``weight`` (O, I, k, k), then (``demodulate``) divide each output channel by the norm of its
    effective per-sample weight, ``rsqrt(sum((w * s)^2) + 1e-8)``, and add ``noise``.

    Computed by scaling activations before and after a shared convolution, which equals the
    grouped per-sample convolution of the paper and is faster on a CPU.
    """
    n = x.shape[0]
    if demodulate:
        wmod = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
        dcoefs = (wmod.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
    x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
    if demodulate:
        x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# --------------------------------------------------------------------------------------
# layers (parameter and buffer names follow the official networks)


class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 conv_clamp=None):
        super().__init__()
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1.0):
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=None):
        x = normalize_2nd_moment(z.to(self.w_avg.dtype))  # float32, or float64 for portable sampling
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        return truncate(x, self.w_avg, truncation_psi, truncation_cutoff)


def truncate(ws, w_avg, psi=1.0, cutoff=None):
    """``w_avg + psi (w - w_avg)`` on all layers or the first ``cutoff`` (official semantics)."""
    if psi == 1:
        return ws
    w_avg = w_avg.to(ws.dtype)
    if cutoff is None:
        return w_avg.lerp(ws, float(psi))
    ws = ws.clone()
    ws[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], float(psi))
    return ws


class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation = "lrelu"
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", gain=1.0):
        if noise_mode not in ("random", "const", "none"):
            raise CellgenError(f"noise_mode must be random, const or none, got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=LRELU_GAIN * gain, clamp=clamp)


class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.architecture = "skip"
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)  # skip architecture
        self.num_torgb = 1

    def forward(self, x, img, ws, noise_mode="random"):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter)).to(ws.dtype)
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channels: dict[int, int], conv_clamp=None):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's toRGB

    def forward(self, ws, noise_mode="random"):
        ws = ws.to(self.b4.const.dtype)  # the network's own float type (float64 when sampling sets)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # a block's toRGB shares its w with the next block's first conv
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode=noise_mode)
            w_idx += block.num_conv
        return img


class Generator(torch.nn.Module):
    """``G(z, psi, cutoff, noise_mode) -> (N, img_channels, R, R)`` raw class scores."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = check_config(cfg)
        self.config = cfg
        self.z_dim, self.w_dim = int(cfg["z_dim"]), int(cfg["w_dim"])
        self.img_resolution, self.img_channels = int(cfg["resolution"]), int(cfg["img_channels"])
        self.synthesis = SynthesisNetwork(self.w_dim, self.img_resolution, self.img_channels, channels_for(cfg),
                                          conv_clamp=cfg["conv_clamp"])
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(self.z_dim, self.w_dim, self.num_ws, num_layers=int(cfg["mapping_layers"]),
                                      lr_multiplier=float(cfg["mapping_lr_multiplier"]),
                                      w_avg_beta=cfg["w_avg_beta"])

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random"):
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.architecture = "resnet"
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise CellgenError(f"minibatch size {n} is not divisible by the minibatch-stddev group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels, resolution=4, mbstd_group_size=4, mbstd_num_channels=1, conv_clamp=None):
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x):
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class Discriminator(torch.nn.Module):
    """Residual discriminator: ``D(img) -> (N, 1)`` logits."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = check_config(cfg)
        self.config = cfg
        self.img_resolution, self.img_channels = int(cfg["resolution"]), int(cfg["img_channels"])
        ch = channels_for({**cfg, "channels": cfg["d_channels"]}) if cfg.get("d_channels") else channels_for(cfg)
        if 4 not in ch:
            ch[4] = min(int(cfg["channel_base"]) // 4, int(cfg["channel_max"]))
        self.block_resolutions = [2 ** i for i in range(int(np.log2(self.img_resolution)), 2, -1)]
        for res in self.block_resolutions:
            in_ch = ch[res] if res < self.img_resolution else 0
            setattr(self, f"b{res}", DiscriminatorBlock(in_ch, ch[res], ch[res // 2], self.img_channels,
                                                        conv_clamp=cfg["conv_clamp"]))
        self.b4 = DiscriminatorEpilogue(ch[4], 4, int(cfg["mbstd_group_size"]), int(cfg["mbstd_num_channels"]),
                                        conv_clamp=cfg["conv_clamp"])

    def forward(self, img):
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)


def build_generator(cfg: dict) -> Generator:
    return Generator(cfg)


def build_discriminator(cfg: dict) -> Discriminator:
    return Discriminator(cfg)
