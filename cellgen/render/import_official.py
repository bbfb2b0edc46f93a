"""Import generators trained with NVIDIA's official pix2pixHD code (``latest_net_G.pth``).

Our modules (:mod:`cellgen.render.networks`) keep the official ``nn.Sequential`` index
layout, so an official state dict maps over name for name:

* global generator: ``model.{i}.weight|bias`` (stem conv at 1, downsampling convs at
  4, 7, ..., residual blocks ``model.{k}.conv_block.{1,5}.*``, transposed convs, final
  conv), instance norm without parameters;
* local enhancer: ``model.*`` (G1 without its last three layers), ``model1_1.*`` (G2 front
  end) and ``model1_2.*`` (G2 residual blocks, upsampling, final conv).

The file is read with ``torch.load(weights_only=True)`` (no pickled code runs); a
``module.`` prefix (DataParallel) is stripped and fp16 tensors are widened. The
architecture (global / local, ``ngf``, downsamplings, residual blocks, channels) is
inferred from the tensors, then every name and shape is checked against the model built
from it. To render cellgen masks, the official model must have been trained with
``--label_nc 3`` (label ids 0 background, 1 nucleus, 2 cytoplasm) plus instance maps (the
edge channel), i.e. 4 input channels, and ``--output_nc 2`` (nucleus, cytoplasm).

Public API: :func:`read_official_state_dict`, :func:`infer_official_config`,
:func:`import_official_generator`, :func:`official_to_renderer`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cellgen.checkpoint import load_into, save_checkpoint
from cellgen.checkpoint import load_state_dict_file
from cellgen.errors import CellgenError
from cellgen.render import networks
from cellgen.render.renderer import KIND


def read_official_state_dict(path) -> dict:
    """The generator state dict of an official ``*_net_G.pth`` file (float32, no ``module.`` prefix)."""
    sd = load_state_dict_file(path, "pix2pixHD weights")
    return normalise_state_dict(sd, str(path))


def normalise_state_dict(sd, source: str = "state dict") -> dict:
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CellgenError(f"{source} is not a generator state dict (expected a dict of named tensors)")
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _need(sd: dict, key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CellgenError(f"{source} does not look like a pix2pixHD generator: no tensor '{key}'")
    return sd[key]


def infer_official_config(sd: dict, source: str = "state dict") -> dict:
    """Generator architecture keys (netG, ngf, n_downsample_global, ...) read off the tensors."""
    stem = _need(sd, "model.1.weight", source)
    if stem.ndim != 4 or tuple(stem.shape[2:]) != (7, 7):
        raise CellgenError(f"{source}: 'model.1.weight' has shape {tuple(stem.shape)}, expected a 7x7 conv")
    width, input_nc = int(stem.shape[0]), int(stem.shape[1])
    # downsampling convs follow the stem at indices 4, 7, 10, ... (conv, norm, ReLU triples)
    n_down, idx = 0, 4
    while f"model.{idx}.weight" in sd and sd[f"model.{idx}.weight"].ndim == 4 \
            and tuple(sd[f"model.{idx}.weight"].shape[2:]) == (3, 3) \
            and tuple(sd[f"model.{idx}.weight"].shape[:2]) == (2 * width * 2**n_down, width * 2**n_down):
        n_down, idx = n_down + 1, idx + 3
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    n_blocks = len(blocks)
    locals_ = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model(\d+)_1\.", k))})
    if locals_:
        n_local = len(locals_)
        if locals_ != list(range(1, n_local + 1)):
            raise CellgenError(f"{source}: local enhancer parts {locals_} are not numbered 1..{n_local}")
        last = f"model{n_local}_2"
        blocks_local = {int(m.group(1)) for k in sd if (m := re.match(rf"{last}\.(\d+)\.conv_block\.", k))}
        finals = sorted(int(m.group(1)) for k in sd if (m := re.match(rf"{last}\.(\d+)\.weight$", k)))
        out = _need(sd, f"{last}.{finals[-1]}.weight", source) if finals else None
        if out is None or out.ndim != 4 or tuple(out.shape[2:]) != (7, 7):
            raise CellgenError(f"{source}: no final 7x7 convolution in {last}")
        ngf = width // 2**n_local
        if ngf * 2**n_local != width:
            raise CellgenError(f"{source}: G1 width {width} is not ngf * 2**{n_local}")
        return {"netG": "local", "input_nc": input_nc, "output_nc": int(out.shape[0]), "ngf": ngf,
                "n_downsample_global": n_down, "n_blocks_global": n_blocks, "n_local_enhancers": n_local,
                "n_blocks_local": len(blocks_local)}
    convs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.weight$", k)))
    out = sd[f"model.{convs[-1]}.weight"]
    if out.ndim != 4 or tuple(out.shape[2:]) != (7, 7):
        raise CellgenError(f"{source}: the last layer 'model.{convs[-1]}' is not the final 7x7 convolution")
    return {"netG": "global", "input_nc": input_nc, "output_nc": int(out.shape[0]), "ngf": width,
            "n_downsample_global": n_down, "n_blocks_global": n_blocks}


def import_official_generator(weights, config: dict | None = None, source: str | None = None):
    """``(generator, config)`` from an official ``*_net_G.pth`` path or an already loaded state dict.

    ``config`` (a renderer config, e.g. ``make_config("paper1024")``) is checked against the
    tensors; without it, the architecture is inferred and completed from the preset that
    fits (``paper1024`` for local enhancers, ``small256`` otherwise: discriminator and
    training keys do not matter for rendering).
    """
    if isinstance(weights, (str, Path)):
        source = source or str(weights)
        sd = read_official_state_dict(weights)
    else:
        source = source or "state dict"
        sd = normalise_state_dict(weights, source)
    arch = infer_official_config(sd, source)
    if config is None:
        preset = "paper1024" if arch["netG"] == "local" else "small256"
        base = networks.make_config(preset)
        config = dict(base, **arch, preset=f"official-{arch['netG']}")
        f = networks.downsampling_factor(config)
        config["size"] = max(f, base["size"] // f * f)
    else:
        config = dict(config)
        diff = {k: (config.get(k), v) for k, v in arch.items() if config.get(k) != v}
        if diff:
            what = ", ".join(f"{k} {a} (config) vs {b} (weights)" for k, (a, b) in diff.items())
            raise CellgenError(f"{source} does not fit the given renderer config: {what}")
    gen = networks.build_generator(config)
    load_into(gen, sd, source=source)
    return gen.eval(), config


def official_to_renderer(weights, out_path, config: dict | None = None, info: dict | None = None) -> Path:
    """Convert an official generator into a cellgen ``renderer`` checkpoint (4 inputs, 2 outputs)."""
    gen, config = import_official_generator(weights, config)
    if config["input_nc"] != networks.INPUT_NC or config["output_nc"] != networks.OUTPUT_NC:
        raise CellgenError(
            f"{weights}: the generator takes {config['input_nc']} input and gives {config['output_nc']} output channels; "
            f"a cellgen renderer needs {networks.INPUT_NC} inputs (background, nucleus, cytoplasm one-hot + instance "
            f"edges: --label_nc 3 with instance maps) and {networks.OUTPUT_NC} outputs (--output_nc 2)"
        )
    meta = dict(info or {}, imported_from=str(weights), source="NVIDIA pix2pixHD official checkpoint")
    return save_checkpoint(out_path, KIND, config, gen.state_dict(), info=meta)
