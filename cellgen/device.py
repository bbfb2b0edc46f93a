"""Choosing the torch device for the learned models."""

from __future__ import annotations

import torch

from cellgen.errors import CellgenError


def resolve_device(device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> torch.device; a missing GPU is a one-line error, not a crash later."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CellgenError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CellgenError(f"unsupported device '{device}'; use cpu or cuda")
    return dev
