"""``cellgen checkpoints``: the installed model checkpoints."""

from __future__ import annotations

import click

from cellgen.cli.root import OrderedGroup, cli


@cli.group(cls=OrderedGroup)
def checkpoints():
    """Installed model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """Checkpoints in the default folder: $CELLGEN_CHECKPOINTS, else the models installed with
    cellgen (a wheel's cellgen/checkpoints/, a source checkout's checkpoints/)."""
    from cellgen.defaults import checkpoints_dir, model_cards

    cards = model_cards()
    if not cards:
        click.echo(f"no checkpoints in {checkpoints_dir()}")
        return
    for card in cards:
        info = card.get("info", {})
        click.echo(f"{card['file']}{' (default)' if card['default'] else ''}: {card.get('kind')}, "
                   f"preset {card.get('config', {}).get('preset', '?')}, {info.get('steps', '?')} steps, "
                   f"{card.get('storage')}, sha256 {card.get('sha256', '?')[:16]}..."
                   + ("" if card["weights_present"] else "  [weights file missing]"))
