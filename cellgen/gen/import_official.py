"""Import an official stylegan2-ada-pytorch network file (``.pkl``) without running its code.

An official ``network-snapshot-*.pkl`` is a plain pickle of ``dict(G=, D=, G_ema=, ...)``
whose networks are "persistent" objects: each is pickled as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta`` holding the
Python source of its module (``module_src``), its ``class_name`` and its ``state`` (the
module's ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, attributes such as
``z_dim``, and the init arguments). Unpickling it the normal way executes ``module_src``
and any other callable the file names.

Here a restricted :class:`pickle.Unpickler` resolves only a fixed list of names to safe
stand-ins: tensor and parameter rebuilders (storages are re-read with
``torch.load(weights_only=True)``), ``torch.Size``, ``collections.OrderedDict``, ``set``,
numpy scalars / dtypes / arrays, ``dnnlib.util.EasyDict`` (a plain dict here) and the
persistence hook, which only records ``class_name`` and ``state`` in an
:class:`OfficialObject`; ``module_src`` is never executed or even compiled. Every other
name (``os.system``, ``builtins.eval``, any class) is refused with a one-line
:class:`~cellgen.errors.CellgenError`.

The recorded module tree is then walked: our :mod:`cellgen.gen.networks` uses the official
module, parameter and buffer names (``mapping.fc0.weight``, ``mapping.w_avg``,
``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``, ``...noise_const``,
``...resample_filter``, ``b4.fc.weight`` in D, ...), so names map one to one; every module's
class name, every tensor's name and shape are checked, and anything unknown, missing or
of the wrong shape stops the import with one line naming it.

Public API: :func:`read_official_pickle`, :func:`import_official`, :class:`OfficialObject`.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from cellgen.checkpoint import load_into
from cellgen.errors import CellgenError
from cellgen.gen.networks import Discriminator, Generator, check_config

_NETWORK_CLASSES = {
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer",
    "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue",
    "MinibatchStdLayer", "AugmentPipe",
}


class OfficialObject:
    """What a persistent network object leaves behind here: its class name and state dict."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def attr(self, name, default=None):
        if name in self.state:
            return self.state[name]
        kwargs = self.state.get("_init_kwargs") or {}
        return kwargs.get(name, default)

    def child(self, name):
        return (self.state.get("_modules") or {}).get(name)

    def __repr__(self):
        return f"OfficialObject({self.class_name})"


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: just a dict."""


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CellgenError("official pickle: a persistent object has unknown metadata (expected type 'class')")
    name = meta.get("class_name")
    state = meta.get("state")
    if name not in _NETWORK_CLASSES:
        raise CellgenError(f"official pickle: unknown network class '{name}'")
    if not isinstance(state, dict):
        raise CellgenError(f"official pickle: {name} has no state dict")
    return OfficialObject(name, state)  # meta['module_src'] is deliberately ignored


def _load_storage(data):
    if not isinstance(data, (bytes, bytearray)):
        raise CellgenError("official pickle: a tensor storage is not a byte string")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a foreign storage
        raise CellgenError(f"official pickle: unreadable tensor storage: {str(err).splitlines()[0][:160]}") from None
    if not isinstance(storage, (torch.UntypedStorage, torch.storage.TypedStorage)):
        raise CellgenError("official pickle: a tensor storage holds something else")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CellgenError("official pickle: a tensor does not refer to a tensor storage")
    t = torch.empty((0,), dtype=storage.dtype)
    t.set_(storage._untyped_storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not torch.is_tensor(data):
        raise CellgenError("official pickle: a parameter does not hold a tensor")
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CellgenError("official pickle: refusing a numpy object scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise CellgenError("official pickle: refusing a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _codecs_encode(text, encoding="latin1"):
    # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CellgenError("official pickle: unexpected _codecs.encode call")
    return text.encode("latin1")


_SAFE = {
    ("_codecs", "encode"): _codecs_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _SAFE[(module, name)]
        except KeyError:
            raise CellgenError(
                f"refusing to load this network pickle: it references '{module}.{name}', which is not part of "
                "an official StyleGAN2-ADA network file (pickles can run code; only known names are allowed)"
            ) from None

    def persistent_load(self, pid):
        raise CellgenError("refusing to load this network pickle: it uses persistent ids (not an official network file)")


def read_official_pickle(path) -> dict:
    """The top-level dict of an official ``.pkl`` with networks as :class:`OfficialObject`."""
    path = Path(path)
    if not path.exists():
        raise CellgenError(f"no such network file: {path}")
    try:
        with open(path, "rb") as fh:
            data = _RestrictedUnpickler(fh).load()
    except CellgenError as err:
        raise CellgenError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises many kinds
        raise CellgenError(f"{path} is not a readable network pickle: {type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160] if str(err) else ''}") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), OfficialObject) for k in ("G_ema", "G", "D")):
        raise CellgenError(f"{path} is not an official StyleGAN2-ADA network file (no G_ema / G / D networks)")
    return data


def _flatten(obj: OfficialObject, model: torch.nn.Module, prefix: str, out: dict, where: str):
    """Collect obj's tensors under official names, checking class names against ``model``."""
    ours = type(model).__name__
    if obj.class_name != ours:
        raise CellgenError(f"{where}: '{prefix.rstrip('.') or 'network'}' is a {obj.class_name} in the file, "
                           f"expected {ours}")
    skip = set(obj.state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if t is None or name in skip:
                continue
            if not torch.is_tensor(t):
                raise CellgenError(f"{where}: {prefix}{name} is not a tensor")
            out[prefix + name] = t.detach().to(torch.float32).clone()
    ours_children = dict(model.named_children())
    for name, sub in (obj.state.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, OfficialObject):
            raise CellgenError(f"{where}: {prefix}{name} is not a network module")
        if name not in ours_children:
            raise CellgenError(f"{where}: unknown module '{prefix}{name}' ({sub.class_name}) has no counterpart here")
        _flatten(sub, ours_children[name], f"{prefix}{name}.", out, where)


def _require(cond, where, message):
    if not cond:
        raise CellgenError(f"{where}: {message}")


def config_from_official(g: OfficialObject, d: OfficialObject | None = None, where: str = "official pickle") -> dict:
    """Our config dict for an official generator record (channels read from tensor shapes)."""
    _require(g.class_name == "Generator", where, f"expected a Generator, found {g.class_name}")
    c_dim = int(g.attr("c_dim", 0) or 0)
    _require(c_dim == 0, where, f"conditional generators are not supported (c_dim={c_dim})")
    mapping, synthesis = g.child("mapping"), g.child("synthesis")
    _require(isinstance(mapping, OfficialObject) and isinstance(synthesis, OfficialObject), where,
             "the generator lacks its mapping or synthesis network")
    res = int(g.attr("img_resolution"))
    channels = {}
    conv_clamp = None
    for r in [2 ** i for i in range(2, int(np.log2(res)) + 1)]:
        block = synthesis.child(f"b{r}")
        _require(isinstance(block, OfficialObject), where, f"synthesis.b{r} is missing")
        arch = block.attr("architecture", "skip")
        _require(arch == "skip", where, f"synthesis.b{r} uses the '{arch}' architecture; only 'skip' is supported")
        conv1 = block.child("conv1")
        _require(isinstance(conv1, OfficialObject), where, f"synthesis.b{r}.conv1 is missing")
        _require(conv1.attr("use_noise", True), where, "generators without noise inputs are not supported")
        _require(conv1.attr("activation", "lrelu") == "lrelu", where, "only lrelu activations are supported")
        w = (conv1.state.get("_parameters") or {}).get("weight")
        _require(torch.is_tensor(w) and w.ndim == 4, where, f"synthesis.b{r}.conv1.weight is missing")
        channels[r] = int(w.shape[0])
        conv_clamp = conv1.attr("conv_clamp", None)
    fc0 = mapping.child("fc0")
    _require(isinstance(fc0, OfficialObject), where, "mapping.fc0 is missing")
    cfg = {
        "arch": "stylegan2", "preset": "official",
        "resolution": res, "z_dim": int(g.attr("z_dim")), "w_dim": int(g.attr("w_dim")),
        "img_channels": int(g.attr("img_channels")), "c_dim": 0,
        "mapping_layers": int(mapping.attr("num_layers")),
        "mapping_lr_multiplier": float(fc0.attr("bias_gain", fc0.attr("lr_multiplier", 0.01))),
        "w_avg_beta": mapping.attr("w_avg_beta", 0.995),
        "conv_clamp": None if conv_clamp is None else float(conv_clamp),
        "channels": {str(k): v for k, v in channels.items()},
        "channel_base": None, "channel_max": None,  # explicit channels (read from the weights) rule
        "mbstd_group_size": 4, "mbstd_num_channels": 1, "training": {},
    }
    if cfg["w_avg_beta"] is not None:
        cfg["w_avg_beta"] = float(cfg["w_avg_beta"])
    if d is not None:
        epi = d.child("b4")
        mbstd = epi.child("mbstd") if isinstance(epi, OfficialObject) else None
        if isinstance(mbstd, OfficialObject):
            gs = mbstd.attr("group_size", 4)
            cfg["mbstd_group_size"] = None if gs is None else int(gs)
            cfg["mbstd_num_channels"] = int(mbstd.attr("num_channels", 1))
        for r in [2 ** i for i in range(int(np.log2(res)), 2, -1)]:
            blk = d.child(f"b{r}")
            arch = blk.attr("architecture", "resnet") if isinstance(blk, OfficialObject) else None
            _require(arch == "resnet", where, f"D.b{r} uses the '{arch}' architecture; only 'resnet' is supported")
    return check_config(cfg)


def _load_network(obj: OfficialObject, model: torch.nn.Module, where: str, name: str):
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, model, "", tensors, f"{where} ({name})")
    load_into(model, tensors, source=f"{where} ({name})")
    return model.eval().requires_grad_(False)


def import_official(path, which=("G_ema",)) -> dict:
    """Networks from an official ``.pkl`` rebuilt as our modules, plus their shared ``config``.

    ``which`` names the networks wanted (``G_ema``, ``G``, ``D``). Returns
    ``{"config": dict, "G_ema": Generator, ...}``.
    """
    data = read_official_pickle(path)
    where = str(path)
    gname = next((k for k in ("G_ema", "G") if isinstance(data.get(k), OfficialObject)), None)
    _require(gname is not None, where, "the file holds no generator (G_ema or G)")
    d_rec = data.get("D") if isinstance(data.get("D"), OfficialObject) else None
    cfg = config_from_official(data[gname], d_rec, where)
    out = {"config": cfg}
    for key in which:
        rec = data.get(key)
        _require(isinstance(rec, OfficialObject), where, f"the file holds no '{key}' network")
        model = Discriminator(cfg) if key == "D" else Generator(cfg)
        out[key] = _load_network(rec, model, where, key)
    return out
