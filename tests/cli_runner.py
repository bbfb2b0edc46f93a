"""Run the ``cellgen`` command line inside the test process, as a subprocess would run it.

A subprocess pays 2-3 s of torch import per call; click's test runner does not. ``run_cli``
goes through :func:`cellgen.cli.main`, so the exit status and the one-line ``error:`` on
stderr are the ones a user sees. Tests whose subject is the process itself (signals, a
killed run, the console script) keep using a real subprocess.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from click.testing import CliRunner

from cellgen.cli import main


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd=None, env=None) -> Ran:
    """``cellgen ARGS`` in ``cwd`` with ``env`` (a full environment or overrides)."""
    here = os.getcwd()
    sigterm = signal.getsignal(signal.SIGTERM)  # main() turns SIGTERM into Ctrl-C; keep pytest's
    try:
        if cwd is not None:
            os.chdir(cwd)
        with CliRunner().isolation(env=env) as (out, err, _):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            return Ran(code, out.getvalue().decode(), err.getvalue().decode())
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, sigterm)
