"""Choosing the torch device for the learned models."""

from __future__ import annotations

import torch

from cellgen.errors import CellgenError


def resolve_device(device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> torch.device; a missing GPU is a one-line error, not a crash later."""
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise CellgenError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CellgenError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CellgenError(f"unsupported device '{device}'; use cpu or cuda")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CellgenError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


#: inference precisions of the learned models; float64 makes sets the same on every CPU
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def compute_dtype(precision: str) -> torch.dtype:
    """``float64`` or ``float32`` -> the torch dtype the models sample in."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise CellgenError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}") from None
