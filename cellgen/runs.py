"""Training run folders, whichever network they train.

A run folder holds ``snapshot.pt`` (weights, optimiser and RNG state at the last tick; its
``kind`` says which trainer wrote it), ``log.jsonl`` and sample images; the trainers resume
from it. Public API: :func:`export_run`.
"""

from __future__ import annotations

from pathlib import Path

from cellgen.errors import CellgenError


def export_run(run_dir, out_path=None, half: bool = False) -> Path:
    """The checkpoint of a run's last snapshot: a contour generator or a renderer, as the
    snapshot's kind says; the run stays resumable."""
    from cellgen.checkpoint import load_checkpoint
    from cellgen.gen import train as gen_train
    from cellgen.render import train as render_train

    snap = Path(run_dir) / "snapshot.pt"
    kind = load_checkpoint(snap).get("kind")
    if kind == gen_train.SNAPSHOT_KIND:
        return gen_train.export_generator(run_dir, out_path, half=half)
    if kind == render_train.SNAPSHOT_KIND:
        return render_train.export_renderer(run_dir, out_path, half=half)
    raise CellgenError(f"{snap} is a '{kind}' checkpoint, not a training snapshot")
