"""``cellgen checkpoints``: the installed model checkpoints."""

from __future__ import annotations

import json

import click

from cellgen.cli.root import OrderedGroup, cli


@cli.group(cls=OrderedGroup)
def checkpoints():
    """Installed model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """Checkpoints in the default folder: $CELLGEN_CHECKPOINTS, else the models installed with
    cellgen (a wheel's cellgen/checkpoints/, a source checkout's checkpoints/)."""
    from cellgen.defaults import FILES, checkpoints_dir

    folder = checkpoints_dir()
    cards = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not cards:
        click.echo(f"no checkpoints in {folder}")
        return
    defaults = set(FILES.values())
    for card in cards:
        meta = json.loads(card.read_text())
        info = meta.get("info", {})
        pt = card.with_suffix(".pt")
        mark = " (default)" if pt.name in defaults else ""
        click.echo(f"{pt.name}{mark}: {meta.get('kind')}, preset {meta.get('config', {}).get('preset', '?')}, "
                   f"{info.get('steps', '?')} steps, {meta.get('storage')}, sha256 {meta.get('sha256', '?')[:16]}..."
                   + ("" if pt.exists() else "  [weights file missing]"))
