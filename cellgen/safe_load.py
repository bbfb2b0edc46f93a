"""Reading torch weights files without running their code, with cellgen's own one-line errors.

``torch.load(weights_only=True)`` refuses a pickle that would import or call anything beyond
tensors and plain containers, but its message is many lines long and ends by suggesting
``weights_only=False`` -- the one thing never to do with a file from elsewhere. Here every
way a weights file can fail to load becomes one line that says what the file is and what to
do, and never repeats that advice.

Public API: :func:`load_weights`, :func:`load_error`.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

from cellgen.errors import CellgenError

_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global:\s*GLOBAL)\s+([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand\s+(\d+)")
_CORRUPT = ("invalid load key", "PytorchStreamReader", "could not find MARK", "truncated", "unpickling stack underflow",
            "magic number", "central directory", "corrupted")


def load_error(path, err: BaseException, what: str = "weights") -> CellgenError:
    """The one-line error for a weights file that ``torch.load`` refused."""
    text = str(err)
    found = _GLOBAL.search(text)
    if found:
        return CellgenError(
            f"{path} is not a plain {what} file: it would import {found.group(1)} when unpickled, which cellgen "
            "never does; use a file of tensors (a state dict) from a source you trust"
        )
    if _OPERAND.search(text) or isinstance(err, (EOFError, zipfile.BadZipFile)) or any(k in text for k in _CORRUPT):
        return CellgenError(f"{path} is not a readable {what} file (truncated, corrupt, or not a torch file of tensors)")
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text:
        return CellgenError(f"{path} holds objects beyond tensors that cellgen does not unpickle; "
                            f"use a file of tensors (a state dict) from a source you trust")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return CellgenError(f"{path} cannot be read as a {what} file: {first[:160]}")


def load_weights(path, what: str = "weights"):
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one :class:`CellgenError` line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CellgenError(f"{what} file not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise on stderr, not news
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise CellgenError(f"{path} is too large to load as a {what} file") from None
    except Exception as err:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise load_error(path, err, what) from None
