"""The Python 3.10 side environment that DeepCell Mesmer runs in.

deepcell 0.12.x needs Python < 3.11 and TensorFlow 2.8, so it cannot live in cellgen's own
environment. This module finds a Python 3.10 interpreter (:func:`find_python310`) and builds,
on demand, a venv with a pinned deepcell 0.12.10 stack under the cellgen cache
(:func:`ensure_deepcell_env`). :mod:`cellgen.bench.methods.mesmer_client` talks to the worker
that runs in it; :mod:`cellgen.bench.methods.deepcell` is the bench adapter.

Environment variables:

``CELLGEN_HOME``
    cellgen's cache root (default ``~/.cache/cellgen``); the venv is ``envs/deepcell-0.12.10``.
``CELLGEN_PYTHON310``
    the Python 3.10 interpreter to build the venv with (overrides the search).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

from cellgen.bench.methods.base import MethodUnavailable
from cellgen.errors import CellgenError

DEEPCELL_VERSION = "0.12.10"
ENV_NAME = f"deepcell-{DEEPCELL_VERSION}"
MARKER_NAME = "cellgen-env.json"

# The whole environment, installed with ``pip install --no-deps`` so the set is exact and
# needs no resolver. It is deepcell 0.12.10's runtime closure *without* ``jupyter`` and
# ``pydot`` (declared by deepcell but only used by notebooks / keras.utils.plot_model:
# 72 packages, ~2.0 GB instead of 159 packages, ~2.3 GB). The pins that matter:
#   tensorflow==2.8.4   deepcell requires tensorflow~=2.8.0; 2.8.4 is the last 2.8 patch
#   keras==2.8.0, tensorboard==2.8.0, tensorflow-estimator==2.8.0   what TF 2.8.4 requires
#   protobuf==3.19.6    TF 2.8 requires protobuf<3.20
#   numpy==1.23.5       TF 2.8 wheels are built against numpy 1.x (numpy 2 breaks them)
#   tensorflow-addons==0.16.1, spektral==1.0.6   deepcell's ~= pins
# The rest is what pip resolved for those on Python 3.10, pinned so a rebuild is identical.
DEEPCELL_LOCK: tuple[str, ...] = (
    "absl-py==2.5.1",
    "astunparse==1.6.3",
    "certifi==2026.10.18",
    "cffi==2.1.1",
    "charset-normalizer==3.5.2",
    "cloudpickle==3.1.2",
    "contourpy==1.3.2",
    "cryptography==50.0.2",
    "cycler==0.12.1",
    "Cython==0.29.37",
    "DeepCell==0.12.10",
    "DeepCell-Tracking==0.6.5",
    "DeepCell-Toolbox==0.12.1",
    "flatbuffers==25.12.19",
    "fonttools==4.65.0",
    "gast==0.7.0",
    "google-auth==2.62.2",
    "google-auth-oauthlib==0.4.6",
    "google-pasta==0.2.0",
    "grpcio==1.85.1",
    "h5py==3.16.0",
    "idna==3.20",
    "imageio==2.38.0",
    "joblib==1.6.0",
    "keras==2.8.0",
    "Keras-Preprocessing==1.1.2",
    "kiwisolver==1.5.1",
    "lazy-loader==0.6",
    "libclang==18.1.1",
    "lxml==6.1.3",
    "Markdown==3.10.3",
    "MarkupSafe==3.0.4",
    "matplotlib==3.10.9",
    "networkx==3.4.2",
    "numpy==1.23.5",
    "oauthlib==4.0.1",
    "opencv-python-headless==4.11.0.86",
    "opt-einsum==3.4.0",
    "packaging==26.3",
    "pandas==2.3.3",
    "pillow==12.3.0",
    "protobuf==3.19.6",
    "pyasn1==0.6.5",
    "pyasn1-modules==0.4.2",
    "pycparser==3.11",
    "pyparsing==3.3.3",
    "python-dateutil==3.0.0",
    "pytz==2026.6",
    "requests==2.34.2",
    "requests-oauthlib==2.0.0",
    "scikit-image==0.24.0",
    "scikit-learn==1.7.2",
    "scipy==1.15.3",
    "six==1.17.0",
    "spektral==1.0.6",
    "tensorboard==2.8.0",
    "tensorboard-data-server==0.6.1",
    "tensorboard-plugin-wit==1.8.1",
    "tensorflow==2.8.4",
    "tensorflow-addons==0.16.1",
    "tensorflow-estimator==2.8.0",
    "tensorflow-io-gcs-filesystem==0.37.1",
    "termcolor==3.3.0",
    "threadpoolctl==3.8.0",
    "tifffile==2025.5.10",
    "tqdm==4.70.1",
    "typeguard==4.6.0",
    "typing-extensions==4.16.0",
    "tzdata==2026.6",
    "urllib3==2.8.0",
    "Werkzeug==3.1.9",
    "wrapt==2.5.2",
)

# What must import in a finished env before it is renamed into place.
_SMOKE_TEST = (
    "import numpy, tensorflow, deepcell; from deepcell.applications import Mesmer; "
    "from deepcell.model_zoo import PanopticNet; print(deepcell.__version__, tensorflow.__version__)"
)

# --------------------------------------------------------------------------- locations


def cellgen_home() -> Path:
    """cellgen's cache root: ``$CELLGEN_HOME``, else ``~/.cache/cellgen``."""
    home = os.environ.get("CELLGEN_HOME")
    return Path(home).expanduser().absolute() if home else Path.home() / ".cache" / "cellgen"


def deepcell_env_dir() -> Path:
    """Where the deepcell venv lives (whether or not it exists yet)."""
    return cellgen_home() / "envs" / ENV_NAME


# --------------------------------------------------------------------------- Python 3.10

_PROBE = "import sys, venv, ensurepip; print(sys.version_info[0], sys.version_info[1]); print(sys.executable)"


@lru_cache(maxsize=None)
def _probe_python(candidate: str) -> str | None:
    """The real executable of ``candidate`` if it runs as Python 3.10 with venv+ensurepip."""
    try:
        out = subprocess.run(
            [candidate, "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 2 or lines[0].split() != ["3", "10"]:
        return None
    return lines[1].strip() or candidate


def _pyenv_candidates() -> list[str]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]).expanduser())
    roots.append(Path.home() / ".pyenv")
    found = []
    for root in roots:
        found += glob.glob(str(root / "versions" / "3.10*" / "bin" / "python3.10"))

    def version_key(path: str):
        name = Path(path).parent.parent.name  # e.g. 3.10.13
        return [int(p) if p.isdigit() else -1 for p in re.split(r"[.\-]", name)]

    return sorted(set(found), key=version_key, reverse=True)


def find_python310() -> str | None:
    """A working Python 3.10 interpreter, or ``None``.

    Order: ``$CELLGEN_PYTHON310`` (if set it must work: a bad value raises
    :class:`CellgenError` rather than silently falling back), ``python3.10`` on ``PATH``
    (a pyenv shim that does not resolve is skipped), ``~/.pyenv/versions/3.10*/bin/python3.10``
    (newest first). The interpreter must have the ``venv`` and ``ensurepip`` modules.
    A bad ``$CELLGEN_PYTHON310`` raises :class:`MethodUnavailable`.
    """
    override = os.environ.get("CELLGEN_PYTHON310")
    if override:
        exe = _probe_python(override)
        if exe is None:
            raise MethodUnavailable(
                f"CELLGEN_PYTHON310={override} is not a working Python 3.10 with venv and ensurepip"
            )
        return exe
    on_path = shutil.which("python3.10")
    if on_path:
        exe = _probe_python(on_path)
        if exe:
            return exe
    for candidate in _pyenv_candidates():
        exe = _probe_python(candidate)
        if exe:
            return exe
    return None


def require_python310() -> str:
    exe = find_python310()
    if exe is None:
        raise MethodUnavailable(
            f"deepcell {DEEPCELL_VERSION} needs Python 3.10 (it does not support 3.11+) and none was found: "
            "set CELLGEN_PYTHON310, put python3.10 on PATH, or install one (e.g. pyenv install 3.10)"
        )
    return exe


# --------------------------------------------------------------------------- the side env


def _lock_text() -> str:
    return "".join(line + "\n" for line in DEEPCELL_LOCK)


def _lock_digest() -> str:
    return hashlib.sha256(_lock_text().encode()).hexdigest()


def _read_marker(env: Path) -> dict | None:
    try:
        marker = json.loads((env / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def find_deepcell_env() -> Path | None:
    """The ready deepcell env (complete, marker matching the current pins), or ``None``."""
    env = deepcell_env_dir()
    marker = _read_marker(env)
    if marker is None or marker.get("lock_sha256") != _lock_digest():
        return None
    if not env_python(env).exists():  # e.g. its base interpreter was uninstalled
        return None
    return env


@contextlib.contextmanager
def _file_lock(path: Path, progress: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another cellgen process setting up {path.stem} ...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(cmd: list[str], log, progress: bool, env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``cmd``, appending its output to ``log``; echo it to stderr if ``progress``."""
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        tail.append(line.rstrip("\n"))
        if progress:
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = proc.wait()
    log.write(f"[exit {rc}]\n")
    log.flush()
    return rc, list(tail)


def _error_line(lines: list[str]) -> str:
    """The line that says why pip failed: its last ``ERROR:`` line, else its last line."""
    lines = [ln.strip() for ln in lines if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "(no output)"


def side_env_vars() -> dict:
    """Environment for processes run with the side env's Python: cellgen's own
    PYTHONPATH/PYTHONHOME must not leak into a 3.10 interpreter."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(key, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _build_env(
    final: Path,
    python: str,
    lock: tuple[str, ...],
    progress: bool,
    pip_args: tuple[str, ...] = (),
) -> Path:
    """Create the venv in a temporary sibling folder, install ``lock``, smoke-test, write the
    marker, then rename it to ``final``. Any failure removes the temporary folder.
    Caller holds the setup lock."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted setup (we hold the lock, so nobody is using them)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    log_path = final.parent / f"{final.name}.setup.log"
    t0 = time.perf_counter()
    env_vars = side_env_vars()
    try:
        with open(log_path, "w") as log:
            log.write(f"cellgen: building {final} with {python}\n")
            if progress:
                print(f"cellgen: creating the deepcell {DEEPCELL_VERSION} environment in {final} "
                      f"(Python {python}; TensorFlow 2.8, ~2 GB, a few minutes)", file=sys.stderr)
            rc, out = _run_logged([python, "-I", "-m", "venv", tmp], log, progress, env_vars)
            if rc != 0:
                raise CellgenError(
                    f"deepcell env setup failed: {python} -m venv exited {rc}: {_error_line(out)} (log: {log_path})"
                )
            req = tmp / "cellgen-requirements.txt"
            req.write_text("".join(line + "\n" for line in lock))
            rc, out = _run_logged(
                [env_python(tmp), "-I", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                 "--no-deps", *pip_args, "-r", req],
                log, progress, env_vars,
            )
            if rc != 0:
                raise CellgenError(
                    f"deepcell env setup failed: pip install exited {rc}: {_error_line(out)} (log: {log_path})"
                )
            rc, out = _run_logged([env_python(tmp), "-I", "-c", _SMOKE_TEST], log, progress, env_vars)
            if rc != 0:
                raise CellgenError(
                    f"deepcell env setup failed: the installed env does not import deepcell: "
                    f"{_error_line(out)} (log: {log_path})"
                )
            versions = out[-1].split() if out else []
            # Scripts in bin/ (pip, activate, ...) name the folder they were built in.
            _retarget_bin(tmp, final)
            rc, freeze = _run_logged([env_python(tmp), "-I", "-m", "pip", "freeze", "--all"], log, False, env_vars)
            py_version = subprocess.run(
                [str(env_python(tmp)), "-I", "-c", "import sys; print(sys.version.split()[0])"],
                capture_output=True, text=True, env=env_vars,
            ).stdout.strip()
            marker = {
                "cellgen_env": 1,
                "name": ENV_NAME,
                "deepcell": versions[0] if versions else DEEPCELL_VERSION,
                "tensorflow": versions[1] if len(versions) > 1 else None,
                "python": py_version,
                "base_python": python,
                "lock_sha256": hashlib.sha256("".join(line + "\n" for line in lock).encode()).hexdigest(),
                "lock": list(lock),
                "pip_freeze": [ln for ln in freeze if ln and not ln.startswith("[")] if rc == 0 else None,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "setup_seconds": round(time.perf_counter() - t0, 1),
            }
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        # swap into place; an older/mismatched env is moved aside first, then removed
        if final.exists() or final.is_symlink():
            old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"cellgen: deepcell environment ready in {time.perf_counter() - t0:.0f} s: {final}", file=sys.stderr)
    return final


def _retarget_bin(tmp: Path, final: Path) -> None:
    old, new = str(tmp).encode(), str(final).encode()
    for path in (tmp / "bin").iterdir():
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = path.read_bytes()
        if old in data:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            os.chmod(path, mode)


def ensure_deepcell_env(progress: bool = False) -> Path:
    """Return the deepcell 0.12.10 venv, creating it first if needed.

    The venv is ``$CELLGEN_HOME/envs/deepcell-0.12.10`` (default ``~/.cache/cellgen``). It is
    built in a temporary folder beside it and renamed into place only once pip, a smoke
    import and the marker file (``cellgen-env.json``: pins, ``pip freeze``, versions, time)
    are done, so an interrupted setup never leaves an env that looks ready. Concurrent calls
    wait on a lock file. ``progress`` echoes pip's output to stderr.

    Raises :class:`CellgenError` (one line) when no Python 3.10 is found or pip fails.
    """
    env = find_deepcell_env()
    if env is not None:
        return env
    final = deepcell_env_dir()
    with _file_lock(final.parent / f"{final.name}.lock", progress):
        env = find_deepcell_env()  # somebody else may have finished meanwhile
        if env is not None:
            return env
        python = require_python310()
        return _build_env(final, python, DEEPCELL_LOCK, progress)
