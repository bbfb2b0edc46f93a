"""Registry of segmentation methods: name -> adapter class.

Adapter modules import their heavy packages (CellProfiler, CellPose, TensorFlow) only
inside ``check``/``segment``/helpers, so importing this registry is cheap and works
without them; :meth:`Method.check` reports what is missing.
"""

from __future__ import annotations

import importlib
import inspect

from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation
from cellgen.errors import CellgenError


def _adapter(module: str, cls: str) -> type[Method]:
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


#: method name (as typed on the command line) -> adapter class; one line per method
METHODS: dict[str, type[Method]] = {
    "watershed": _adapter("watershed", "Watershed"),
    "cellprofiler": _adapter("cellprofiler", "CellProfiler"),
    "cellpose": _adapter("cellpose", "CellPose"),
    "deepcell": _adapter("deepcell", "DeepCellMesmer"),
    "predictions": _adapter("predictions", "StoredPredictions"),
}


def get_method(name: str, **options) -> Method:
    """An adapter instance for ``name`` built with ``options`` (its constructor keywords)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise CellgenError(f"unknown method '{name}'; choose from: {', '.join(METHODS)}") from None
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as err:
        # a misspelt option is a user error, reported in one line rather than a traceback
        raise CellgenError(f"method '{name}': {err}") from None
    return cls(**options)


__all__ = ["METHODS", "Method", "MethodUnavailable", "Segmentation", "get_method"]
