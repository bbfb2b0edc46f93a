"""The ``cellgen`` command line: a thin layer over the pipeline modules.

One module per stage; importing them attaches their commands to the root group in the
pipeline's order, which is the order ``cellgen --help`` lists them in.
"""

from cellgen.cli.root import cli, command_line, main
from cellgen.cli import make, checkpoints, train, evaluate, datasets, bench, noise  # noqa: F401, E402 - registers commands

__all__ = ["cli", "command_line", "main"]
