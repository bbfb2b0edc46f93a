"""Errors that the command line reports as one clear line instead of a traceback."""


class CellgenError(Exception):
    """A user-facing failure: bad input, missing file or weights, bad option.

    The CLI prints ``str(err)`` on one line and exits non-zero.
    """


class InvalidMaskError(CellgenError, ValueError):
    """Mask arrays that break the ground-truth contract (dtype, shape, ids, nesting)."""


class DatasetError(CellgenError):
    """A benchmark-set file that is missing, corrupt, foreign or inconsistent."""


class ChecksumMismatch(CellgenError):
    """A file whose sha256 is not the one recorded for it (corrupt, or replaced)."""
