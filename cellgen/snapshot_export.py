"""A checkpoint from a training run's last snapshot, whichever network the run trains."""

from __future__ import annotations

from pathlib import Path

from cellgen.checkpoint import load_checkpoint
from cellgen.errors import CellgenError
from cellgen.gen import train as gen_train
from cellgen.render import train as render_train


def export_snapshot(run_dir, out_path=None, half: bool = False) -> Path:
    """The checkpoint of a run's last snapshot: a contour generator or a renderer, as the
    snapshot's kind says; the run stays resumable."""
    snap = Path(run_dir) / "snapshot.pt"
    kind = load_checkpoint(snap).get("kind")
    if kind == gen_train.SNAPSHOT_KIND:
        return gen_train.export_generator(run_dir, out_path, half=half)
    if kind == render_train.SNAPSHOT_KIND:
        return render_train.export_renderer(run_dir, out_path, half=half)
    raise CellgenError(f"{snap} is a '{kind}' checkpoint, not a training snapshot")
