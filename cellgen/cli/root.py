"""The root ``cellgen`` group, the entry point, and what every command shares.

Commands live in the sibling modules, one per stage, and attach themselves to :data:`cli`
when :mod:`cellgen.cli` imports them.
"""

from __future__ import annotations

import shlex
import sys

import click

from cellgen import __version__
from cellgen.errors import CellgenError

_NOT_CONTENT = {"--overwrite", "-q", "--quiet"}
_OUTPUT = {"-o", "--output"}
# where the work runs never changes the result: left out of the recorded command, so a set
# made on 8 workers has the bytes of one made in one process
_WHERE = {"--workers", "--jobs", "--scheduler"}
_ARGV_KEY = "cellgen.argv"


def command_line() -> str:
    """The command as typed, recorded as provenance: only what decides the content, so the
    same options written to another file name give the same bytes.

    The arguments are the ones this invocation parsed (``main(argv)``, click's test runner or
    the shell), never a stale ``sys.argv`` from whatever process called in.
    """
    ctx = click.get_current_context(silent=True)
    args = ctx.meta.get(_ARGV_KEY) if ctx is not None else None
    kept, skip = [], False
    for token in sys.argv[1:] if args is None else args:
        if skip:
            skip = False
        elif token in _OUTPUT or token in _WHERE:
            skip = True
        elif token not in _NOT_CONTENT and not any(token.startswith(o + "=") for o in _OUTPUT | _WHERE):
            kept.append(token)
    return shlex.join(["cellgen", *kept])


class OrderedGroup(click.Group):
    def list_commands(self, ctx):  # keep the order commands were added: the pipeline's order
        return list(self.commands)


class _RootGroup(OrderedGroup):
    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)  # before parsing consumes it
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_ARGV_KEY] = argv  # meta is shared with every sub-context
        return ctx


@click.group(cls=_RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellgen")
def cli():
    """Synthetic fluorescent-cell segmentation benchmarks with exact masks."""


def print_summary(path):
    from cellgen.datasets.info import cells_text, set_info

    data = set_info(path)
    tiers = ", ".join(f"{k} {v}" for k, v in data["tiers"].items())
    variants = ", ".join(data["variants"]) or "none (masks only)"
    click.echo(f"wrote {path}: {data['n_images']} images, tiers: {tiers}; cells per image: {cells_text(data)}; "
               f"variants: {variants}")


def main(argv=None):
    """Entry point: user-facing errors become one line on stderr and exit status 1."""
    _terminate_like_ctrl_c()
    try:
        cli.main(args=argv, prog_name="cellgen", standalone_mode=False)
    except click.exceptions.Abort:  # click's form of Ctrl-C (and so of SIGTERM)
        click.echo("cellgen: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "cellgen"
        click.echo(f"cellgen: error: {err.format_message()} (see '{where} --help')", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        click.echo(f"cellgen: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except CellgenError as err:
        click.echo(f"cellgen: error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("cellgen: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("cellgen: error: out of memory; use a smaller --size, --n or --batch-size", err=True)
        sys.exit(1)
    except OSError as err:  # the system said no (full disk, permissions, a vanished file)
        text = (str(err).splitlines() or [type(err).__name__])[0]
        if getattr(err, "errno", None) == 28:
            text += "; free space and rerun the same command to resume"
        click.echo(f"cellgen: error: {text}", err=True)
        sys.exit(1)


def _terminate_like_ctrl_c():
    """SIGTERM (a scheduler's or a container's stop) ends a run the way Ctrl-C does: complete
    images are kept and the same command resumes."""
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


