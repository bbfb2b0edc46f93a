"""Checkpoint container shared by the contour generator and the renderer.

A checkpoint is two files side by side:

* ``NAME.pt``: a plain dict saved with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, so loading never runs pickled code:
  ``{"format": "cellgen-checkpoint", "kind": str, "config": JSON str, "state_dict": {name: tensor},
  "extra": {name: tensor or number}}`` (``extra`` holds e.g. ``w_avg``, training step,
  optimiser state in training snapshots);
* ``NAME.json``: the same ``kind`` and ``config`` in readable form, plus the sha256 of
  ``NAME.pt`` and free-form ``info`` (training data, kimg, hardware, ...).

Loading checks the sha256 (when the JSON is there), the kind, and every tensor's name and
shape against the model built from the config, and says exactly what does not fit.

Public API: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_into`, :func:`load_state_dict_file`
(a file's sha256 is :func:`cellgen.fileio.sha256_of`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cellgen.errors import CellgenError, ChecksumMismatch
from cellgen.fileio import atomic_path, sha256_of
from cellgen.safe_load import load_weights

FORMAT = "cellgen-checkpoint"


def save_checkpoint(path, kind: str, config: dict, state_dict: dict, extra: dict | None = None,
                    info: dict | None = None, half: bool = False) -> Path:
    """Write ``path`` (.pt) and its .json atomically; ``half`` stores float tensors as fp16."""
    path = Path(path)
    if path.suffix != ".pt":
        raise CellgenError(f"checkpoint files end in .pt, got {path.name}")

    def prepare(t):
        t = t.detach().cpu()
        if t.dtype == torch.float64:  # a model sampling in float64 still stores float32 weights
            t = t.float()
        return t.half() if half and t.is_floating_point() else t.clone()

    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "state_dict": {k: prepare(v) for k, v in state_dict.items()},
        "extra": {k: prepare(v) if torch.is_tensor(v) else v for k, v in (extra or {}).items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    meta = {"format": FORMAT, "kind": kind, "config": config, "sha256": sha256_of(path),
            "storage": "float16" if half else "float32", "info": info or {}}
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_checkpoint(path, kind: str | None = None) -> dict:
    """The checkpoint dict with ``config`` parsed and ``sha256`` added; refuses foreign files."""
    path = Path(path)
    if not path.exists():
        raise CellgenError(f"no such checkpoint: {path}")
    digest = sha256_of(path)
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except ValueError:
            raise CellgenError(f"{sidecar} is not valid JSON") from None
        if meta.get("sha256") and meta["sha256"] != digest:
            raise ChecksumMismatch(f"{path} does not match the sha256 in {sidecar.name}: the file is corrupt or was replaced")
    payload = load_weights(path, "cellgen checkpoint")  # never runs pickled code; errors are one line
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CellgenError(f"{path} is not a cellgen checkpoint (no '{FORMAT}' marker)")
    if kind is not None and payload.get("kind") != kind:
        raise CellgenError(f"{path} holds a '{payload.get('kind')}' checkpoint, expected '{kind}'")
    payload["config"] = json.loads(payload["config"])
    payload["sha256"] = digest
    return payload


def load_state_dict_file(path, what: str) -> dict:
    """A foreign weights file (e.g. official pix2pixHD or VGG19) read with ``weights_only``."""
    return load_weights(path, what)


def load_into(module: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Load tensors into ``module`` after checking names and shapes; one line says what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise CellgenError(f"{source} does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()})
