"""DeepCell Mesmer (compartment='both') through a Python 3.10 side environment.

deepcell 0.12.x needs Python < 3.11 and TensorFlow 2.8, so it cannot live in cellgen's own
environment. This module

* finds a Python 3.10 interpreter (:func:`find_python310`),
* builds, on demand, a venv with a pinned deepcell 0.12.10 stack under the cellgen cache
  (:func:`ensure_deepcell_env`),
* runs a persistent worker process in that venv (``mesmer_worker.py``) that loads the model
  once and segments many images (:class:`MesmerWorker`, used by :class:`DeepCellMesmer`).

Environment variables:

``CELLGEN_HOME``
    cellgen's cache root (default ``~/.cache/cellgen``); the venv is ``envs/deepcell-0.12.10``.
``CELLGEN_PYTHON310``
    the Python 3.10 interpreter to build the venv with (overrides the search).
``DEEPCELL_ACCESS_TOKEN``
    deepcell's own token, needed only to download Mesmer's weights when no model path is given
    and ``~/.deepcell/models/MultiplexSegmentation-9.tar.gz`` is not cached.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from functools import lru_cache
from pathlib import Path

import numpy as np

from cellgen.bench.methods.base import Method, MethodUnavailable, Segmentation, check_image
from cellgen.errors import CellgenError
from cellgen.fileio import file_digest

DEEPCELL_VERSION = "0.12.10"
ENV_NAME = f"deepcell-{DEEPCELL_VERSION}"
MARKER_NAME = "cellgen-env.json"
WORKER_SCRIPT = Path(__file__).with_name("mesmer_worker.py")

# Mesmer's own weights, as deepcell 0.12.10 fetches them (deepcell/applications/mesmer.py):
# fetch_data() caches the archive in ~/.deepcell/models and skips the download (and so the
# token) when the cached archive has this md5.
MESMER_WEIGHTS_KEY = "models/MultiplexSegmentation-9.tar.gz"
MESMER_WEIGHTS_MD5 = "a1dfbce2594f927b9112f23a0a1739e0"
MESMER_MODEL_MPP = 0.5

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

# Protocol shared with mesmer_worker.py (see its docstring).
_MAGIC = b"CGMW"
_PREFIX = struct.Struct(">4sIQ")
_MAX_HEADER = 1 << 20


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- locations


def cellgen_home() -> Path:
    """cellgen's cache root: ``$CELLGEN_HOME``, else ``~/.cache/cellgen``."""
    home = os.environ.get("CELLGEN_HOME")
    return Path(home).expanduser().absolute() if home else Path.home() / ".cache" / "cellgen"


def deepcell_env_dir() -> Path:
    """Where the deepcell venv lives (whether or not it exists yet)."""
    return cellgen_home() / "envs" / ENV_NAME


def mesmer_weights_path() -> Path:
    """Where deepcell caches Mesmer's weights archive (``~/.deepcell/models/...``)."""
    return Path.home() / ".deepcell" / "models" / MESMER_WEIGHTS_KEY.rsplit("/", 1)[-1]


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


def _require_python310() -> str:
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


def _side_env_vars() -> dict:
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
    env_vars = _side_env_vars()
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
        python = _require_python310()
        return _build_env(final, python, DEEPCELL_LOCK, progress)


# --------------------------------------------------------------------------- the worker


class _StderrTail(threading.Thread):
    """Drains a worker's stderr, keeping its last lines (and echoing them if asked)."""

    def __init__(self, stream, echo: bool):
        super().__init__(daemon=True, name="mesmer-worker-stderr")
        self.stream = stream
        self.echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=200)

    def run(self) -> None:
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.lines.append(line)
                    if self.echo:
                        print(f"[mesmer worker] {line}", file=sys.stderr)
        except (OSError, ValueError):
            pass

    def last(self) -> str:
        """The most telling recent line: the last that looks like an error, else the last."""
        lines = list(self.lines)
        for line in reversed(lines):
            if re.search(r"(Error|Exception|Killed|Aborted|Fatal|error:)", line):
                return _one_line(line, 300)
        return _one_line(lines[-1], 300) if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class MesmerWorker:
    """One ``mesmer_worker.py serve`` process in the side env: started once, many requests.

    All reads and writes have deadlines; a worker that dies or stops answering is killed and
    reported as a one-line :class:`CellgenError`.
    """

    def __init__(
        self,
        python: Path | str,
        model: str | None = None,
        startup_timeout: float = 600.0,
        verbose: bool = False,
    ):
        cmd = [str(python), "-I", str(WORKER_SCRIPT)]
        if verbose:
            cmd.append("--verbose")
        cmd.append("serve")
        if model:
            cmd += ["--model", str(model)]
        env = _side_env_vars()
        if not verbose:
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.requests = 0
        self.info: dict = {}
        self._broken: str | None = None
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches us; we end the worker ourselves
        )
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self._stderr = _StderrTail(self.proc.stderr, verbose)
        self._stderr.start()
        try:
            header, _ = self._read_message(time.monotonic() + startup_timeout, "start")
        except BaseException:
            self.kill()
            raise
        if not header.get("ok"):
            self.kill()
            raise CellgenError(f"deepcell worker could not load the model: {header.get('error', '?')}")
        self.info = header

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self._broken is None and self.proc.poll() is None

    # ---- low-level I/O with deadlines

    def _died(self, what: str) -> CellgenError:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        self._stderr.join(timeout=2)
        detail = self._stderr.last()
        how = f"exited with code {rc}" if rc is not None and rc >= 0 else (
            f"was killed by signal {-rc}" if rc is not None else "closed its output"
        )
        self.kill()
        return CellgenError(f"deepcell worker {how} during {what}" + (f": {detail}" if detail else ""))

    def _timeout(self, what: str, seconds: float) -> CellgenError:
        self.kill()
        return CellgenError(f"deepcell worker did not answer within {seconds:g} s during {what}; killed it")

    def _write_all(self, data: bytes, deadline: float, what: str, total: float) -> None:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(what, total)
            _, writable, _ = select.select([], [self._in], [], remaining)
            if not writable:
                continue
            try:
                n = os.write(self._in, view[: 1 << 20])
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise self._died(what) from None
            view = view[n:]

    def _read_exact(self, n: int, deadline: float, what: str, total: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(what, total)
            readable, _, _ = select.select([self._out], [], [], min(remaining, 1.0))
            if not readable:
                if self.proc.poll() is not None:
                    raise self._died(what)
                continue
            chunk = os.read(self._out, min(n - len(buf), 1 << 22))
            if not chunk:
                raise self._died(what)
            buf += chunk
        return bytes(buf)

    def _read_message(self, deadline: float, what: str) -> tuple[dict, dict[str, np.ndarray]]:
        total = max(deadline - time.monotonic(), 0.0)
        magic, hlen, plen = _PREFIX.unpack(self._read_exact(_PREFIX.size, deadline, what, total))
        if magic != _MAGIC or hlen > _MAX_HEADER:
            self.kill()
            raise CellgenError(f"deepcell worker sent a malformed reply during {what}")
        header = json.loads(self._read_exact(hlen, deadline, what, total).decode("utf-8"))
        arrays: dict[str, np.ndarray] = {}
        if plen:
            payload = self._read_exact(plen, deadline, what, total)
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        return header, arrays

    # ---- requests

    def request(
        self, header: dict, arrays: dict[str, np.ndarray] | None = None, timeout: float = 600.0
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request and wait for its reply; worker-side errors raise one-line CellgenError."""
        if not self.alive:
            raise CellgenError(f"deepcell worker is not running ({self._broken or 'it exited'})")
        op = header.get("op", "?")
        payload = b""
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            payload = buf.getvalue()
        hbytes = json.dumps(header).encode("utf-8")
        deadline = time.monotonic() + timeout
        self._write_all(_PREFIX.pack(_MAGIC, len(hbytes), len(payload)) + hbytes + payload, deadline, op, timeout)
        reply, out = self._read_message(deadline, op)
        self.requests += 1
        if not reply.get("ok"):
            raise CellgenError(f"deepcell worker failed on {op}: {reply.get('error', '?')}")
        return reply, out

    def kill(self) -> None:
        self._broken = self._broken or "killed"
        _kill(self.proc)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._stderr.join(timeout=2)
        with contextlib.suppress(OSError):
            self.proc.stderr.close()

    def close(self, timeout: float = 15.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout`` seconds."""
        if self.proc.poll() is None and self._broken is None:
            with contextlib.suppress(CellgenError):
                self.request({"op": "close"}, timeout=timeout)
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._broken = self._broken or "closed"
        _kill(self.proc)
        self._close_pipes()


# --------------------------------------------------------------------------- the method


_COMPARTMENT_ALIASES = {
    "both": "both",
    "whole-cell": "whole-cell",
    "whole_cell": "whole-cell",
    "cell": "whole-cell",
    "nuclear": "nuclear",
    "nucleus": "nuclear",
}


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


class DeepCellMesmer(Method):
    """DeepCell Mesmer (deepcell 0.12.10, TensorFlow 2.8) in a persistent side-env worker.

    Options:

    ``model``
        a local Keras model (SavedModel folder, or .h5 with deepcell's layers). Default: Mesmer's
        own weights the way deepcell gets them (cached ``~/.deepcell/models/MultiplexSegmentation-9.tar.gz``,
        else a download that needs ``DEEPCELL_ACCESS_TOKEN`` and internet).
    ``image_mpp``
        microns per pixel handed to Mesmer (it rescales to its 0.5 µm/px); default: the pixel
        size given to :meth:`segment`.
    ``compartment``
        ``both`` (default), ``whole-cell`` or ``nuclear``.
    ``timeout`` / ``startup_timeout``
        seconds one image / the worker start (TensorFlow import + model load) may take.
    ``progress``
        show the env setup (pip) and the worker's logs on stderr.

    The env is created on the first :meth:`segment` if missing (``cellgen bench setup deepcell``
    does it ahead); the worker starts on the first image and lives until :meth:`close`.
    """

    name = "deepcell"
    compartments = ("cell", "nucleus")

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        image_mpp: float | str | None = None,
        compartment: str = "both",
        *,
        timeout: float = 900.0,
        startup_timeout: float = 600.0,
        batch_size: int = 4,
        progress: bool | str = False,
    ):
        self.model = str(Path(model).expanduser().resolve()) if model not in (None, "") else None
        try:
            self.image_mpp = float(image_mpp) if image_mpp not in (None, "") else None
        except (TypeError, ValueError):
            raise CellgenError(f"deepcell: image_mpp must be a number, got {image_mpp!r}") from None
        if self.image_mpp is not None and not self.image_mpp > 0:
            raise CellgenError(f"deepcell: image_mpp must be positive, got {image_mpp!r}")
        key = str(compartment).strip().lower()
        if key not in _COMPARTMENT_ALIASES:
            raise CellgenError(f"deepcell: compartment must be one of both, whole-cell, nuclear; got {compartment!r}")
        self.compartment = _COMPARTMENT_ALIASES[key]
        self.compartments = {
            "both": ("cell", "nucleus"), "whole-cell": ("cell",), "nuclear": ("nucleus",)
        }[self.compartment]
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.batch_size = int(batch_size)
        self.progress = progress.strip().lower() in ("1", "true", "yes", "on") if isinstance(progress, str) else bool(progress)
        self.worker: MesmerWorker | None = None
        self.workers_started = 0
        self._load_error: CellgenError | None = None

    # ---- checks

    def check(self) -> None:
        if find_deepcell_env() is None:
            _require_python310()  # the env can be built on demand
        if self.model is not None:
            if not os.path.exists(self.model):
                raise MethodUnavailable(f"deepcell: model path {self.model} does not exist")
            return
        weights = mesmer_weights_path()
        token = os.environ.get("DEEPCELL_ACCESS_TOKEN")
        if weights.is_file():
            if _md5(weights) == MESMER_WEIGHTS_MD5 or token:
                return  # cached (or deepcell will re-download it with the token)
            raise MethodUnavailable(
                f"deepcell: cached Mesmer weights {weights} fail their md5 check and DEEPCELL_ACCESS_TOKEN is "
                "not set to download them again: delete the file and set the token, or pass model=PATH"
            )
        if not token:
            raise MethodUnavailable(
                f"deepcell: no Mesmer weights: DEEPCELL_ACCESS_TOKEN is not set and no cached weights file at "
                f"{weights} (where deepcell looks); set the token (https://users.deepcell.org; the download "
                "needs internet) or pass model=PATH"
            )

    def describe(self) -> dict:
        info = self.worker.info if self.worker is not None else {}
        return {
            "method": self.name,
            "application": "Mesmer",
            "deepcell": info.get("deepcell", DEEPCELL_VERSION),
            "tensorflow": info.get("tensorflow", "2.8.4"),
            "python": info.get("python"),
            "model": self.model or f"deepcell default ({MESMER_WEIGHTS_KEY}, md5 {MESMER_WEIGHTS_MD5})",
            "model_mpp": MESMER_MODEL_MPP,
            "image_mpp": self.image_mpp if self.image_mpp is not None else "pixel size of each image",
            "compartment": self.compartment,
            "batch_size": self.batch_size,
        }

    # ---- work

    def _ensure_worker(self) -> MesmerWorker:
        if self.worker is not None and self.worker.alive:
            return self.worker
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self._load_error is not None:  # loading is deterministic: don't retry per image
            raise self._load_error
        env = ensure_deepcell_env(progress=self.progress)
        try:
            self.worker = MesmerWorker(
                env_python(env), self.model, startup_timeout=self.startup_timeout, verbose=self.progress
            )
        except CellgenError as err:
            if "could not load the model" in str(err):
                self._load_error = err
            raise
        self.workers_started += 1
        return self.worker

    def segment(self, image: np.ndarray, pixel_size_um: float) -> Segmentation:
        img = check_image(image)
        h, w = img.shape[1:]
        x = np.ascontiguousarray(np.moveaxis(img, 0, -1))  # (H, W, [nucleus, cytoplasm])
        mpp = self.image_mpp if self.image_mpp is not None else float(pixel_size_um)
        worker = self._ensure_worker()
        reply, out = worker.request(
            {"op": "segment", "image_mpp": mpp, "compartment": self.compartment, "batch_size": self.batch_size},
            {"image": x},
            timeout=self.timeout,
        )
        labels = {}
        for key in ("cell", "nucleus"):
            arr = out.get(key)
            if key in self.compartments:
                if arr is None or arr.shape != (h, w):
                    got = None if arr is None else arr.shape
                    raise CellgenError(f"deepcell worker returned {key} labels of shape {got} for a {h}x{w} image")
                arr = arr.astype(np.uint32, copy=False)
            labels[key] = arr if key in self.compartments else None
        return Segmentation(cell=labels["cell"], nucleus=labels["nucleus"])

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


# --------------------------------------------------------------------------- test model


def make_random_mesmer_model(
    path: str | os.PathLike, seed: int = 0, progress: bool = False, timeout: float = 900.0
) -> Path:
    """Save a random-weight Mesmer-architecture model (PanopticNet resnet50, 256x256x2 input,
    semantic heads [1, 3, 1, 3], location, no normalisation) as a SavedModel folder at ``path``.

    Runs in the deepcell side env (created if needed). Weights depend only on ``seed``.
    The output is garbage as a segmenter: it is for testing the plumbing.
    """
    path = Path(path).expanduser().resolve()
    if path.exists():
        raise CellgenError(f"{path} already exists")
    env = ensure_deepcell_env(progress=progress)
    cmd = [str(env_python(env)), "-I", str(WORKER_SCRIPT)]
    if progress:
        cmd.append("--verbose")
    cmd += ["make-random-model", str(path), "--seed", str(int(seed))]
    env_vars = _side_env_vars()
    env_vars.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
            env=env_vars, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise CellgenError(f"making the random Mesmer model took longer than {timeout:.0f} s") from None
    if proc.returncode != 0 or not path.is_dir():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("mesmer worker:")), lines[-1] if lines else "")
        raise CellgenError(f"making the random Mesmer model failed (exit {proc.returncode}): {_one_line(why, 300)}")
    return path
