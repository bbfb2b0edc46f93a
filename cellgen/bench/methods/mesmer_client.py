"""Client of the Mesmer worker process that runs in the deepcell side environment.

:class:`MesmerWorker` starts ``mesmer_worker.py serve`` with the side env's Python, which
loads the model once and then answers many requests (one image each). Messages are framed
as ``MAGIC, header length, payload length`` + JSON header + ``.npz`` payload (see
``mesmer_worker.py``). Every read and write has a deadline; a worker that dies or stops
answering is killed and reported as one line.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from cellgen.bench.methods.deepcell_env import side_env_vars
from cellgen.bench.methods.mesmer_worker import MAGIC, PREFIX, encode_message
from cellgen.errors import CellgenError

WORKER_SCRIPT = Path(__file__).with_name("mesmer_worker.py")


class WorkerError(CellgenError):
    """The worker died, stopped answering, or failed a request."""


class ModelLoadError(WorkerError):
    """The worker started but could not load the model: retrying gives the same result."""


# Protocol shared with mesmer_worker.py (see its docstring); the worker module imports only
# the standard library at module level, so the client takes the framing from it.
_MAGIC, _PREFIX = MAGIC, PREFIX
_MAX_HEADER = 1 << 20


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                return one_line(line, 300)
        return one_line(lines[-1], 300) if lines else ""


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
        env = side_env_vars()
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
            raise ModelLoadError(f"deepcell worker could not load the model: {header.get('error', '?')}")
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
        return WorkerError(f"deepcell worker {how} during {what}" + (f": {detail}" if detail else ""))

    def _timeout(self, what: str, seconds: float) -> CellgenError:
        self.kill()
        return WorkerError(f"deepcell worker did not answer within {seconds:g} s during {what}; killed it")

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
            raise WorkerError(f"deepcell worker sent a malformed reply during {what}")
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
            raise WorkerError(f"deepcell worker is not running ({self._broken or 'it exited'})")
        op = header.get("op", "?")
        deadline = time.monotonic() + timeout
        self._write_all(encode_message(header, arrays), deadline, op, timeout)
        reply, out = self._read_message(deadline, op)
        self.requests += 1
        if not reply.get("ok"):
            raise WorkerError(f"deepcell worker failed on {op}: {reply.get('error', '?')}")
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
