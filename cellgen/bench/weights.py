"""Fetching segmenters' published weights on first use.

A user who is online expects a segmenter to get its own weights, the way CellPose or DeepCell
do when run by hand. Their own downloaders wait forever on a stalled connection and leave a
half-written file behind on an interrupt; these do neither:

- the host name lookup, every connect and every read wait at most ``timeout`` seconds (a
  socket timeout alone does not bound the lookup, which hangs on a machine with broken DNS);
- the file is written beside its destination under a temporary name and renamed into place
  only once complete (and, when a checksum is known, checked), so a cache never holds a
  truncated file;
- a progress bar shows bytes as they come (stderr);
- anything that stops the download is one line: which file, from where, why, and what to do
  instead (copy the file there by hand, or pass a local path).

Public API: :func:`download`, :func:`fetch_deepcell_asset`, :exc:`DownloadError`,
:data:`DEEPCELL_API`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cellgen.errors import CellgenError

#: seconds a connect or a single read may stall before the download is abandoned
DEFAULT_TIMEOUT = 60.0
#: deepcell's asset service: POST ``s3_key`` with header ``X-Api-Key: <token>`` and it answers
#: JSON ``{"url": <signed address of the file>, "size": "<n> <unit>"}`` (deepcell.datasets._auth)
DEEPCELL_API = "https://users.deepcell.org/api/getData/"
DEEPCELL_TOKEN_ENV = "DEEPCELL_ACCESS_TOKEN"
_CHUNK = 1 << 16


class DownloadError(CellgenError):
    """A weights file could not be fetched; the message is one line saying why and what to do.

    Method adapters re-raise it as their ``MethodUnavailable``."""


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "no answer within the timeout"
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "no answer within the timeout"
    return " ".join(str(reason).split()) or type(reason).__name__


def _resolve(url: str, timeout: float) -> None:
    """Look the host of ``url`` up within ``timeout`` seconds, or raise TimeoutError."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return  # urlopen names the bad address itself
    errors: list[BaseException] = []

    def lookup():
        try:
            socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as err:
            errors.append(err)

    worker = threading.Thread(target=lookup, daemon=True)  # a stuck lookup is left behind, not waited for
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"looking up {parts.hostname} took over {timeout:g} s")
    if errors:
        raise errors[0]


def _open(request, timeout: float, what: str, fallback: str):
    try:
        _resolve(request.full_url, timeout)
        return urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as err:
        where = request.full_url if isinstance(request, urllib.request.Request) else request
        raise DownloadError(f"{what}: cannot download {where} ({_reason(err)}); {fallback}") from None


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    what: str = "weights",
    fallback: str = "copy the file there by hand",
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    headers: dict | None = None,
    md5: str | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` and return ``dest``.

    ``what`` names the file in messages (e.g. "cellpose: cyto3 weights"), ``fallback`` says
    what the user can do instead. ``md5``, when known, must match or nothing is kept.
    Raises :class:`DownloadError` (one line) on a network error, an HTTP error status, a
    stall longer than ``timeout`` seconds, a short read, a checksum mismatch or a full disk.
    """
    if not timeout or timeout <= 0:
        raise DownloadError(f"{what}: the download timeout must be positive, got {timeout}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "cellgen", **(headers or {})})
    hasher = hashlib.md5()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh, _open(request, timeout, what, fallback) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except (OSError, ValueError) as err:  # a stall or a dropped connection
                        raise DownloadError(f"{what}: download from {url} broke off after {got} bytes "
                                            f"({_reason(err)}); {fallback}") from None
                    if not block:
                        break
                    fh.write(block)
                    hasher.update(block)
                    got += len(block)
                    bar.update(len(block))
            if total is not None and got != total:
                raise DownloadError(f"{what}: download from {url} ended after {got} of {total} bytes; {fallback}")
            if got == 0:
                raise DownloadError(f"{what}: {url} sent an empty file; {fallback}")
        if md5 and hasher.hexdigest() != md5:
            raise DownloadError(f"{what}: the file from {url} has md5 {hasher.hexdigest()}, expected {md5}; "
                                f"nothing was kept; {fallback}")
        os.replace(tmp, dest)
    except OSError as err:  # writing: full disk, read-only cache
        raise DownloadError(f"{what}: cannot write {dest} ({_reason(err)}); {fallback}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _parse_size(text) -> int | None:
    """deepcell's ``"12.3 MB"`` sizes in bytes (None when absent or unreadable)."""
    try:
        value, unit = str(text).split()
        return int(float(value) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit])
    except (ValueError, KeyError):
        return None


def fetch_deepcell_asset(
    asset_key: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    fallback: str = "pass model=PATH to a local model instead",
) -> Path:
    """Download one of deepcell's licensed assets (e.g. Mesmer's weights archive) to ``dest``.

    The token comes from ``token`` or ``$DEEPCELL_ACCESS_TOKEN`` (issued at
    https://users.deepcell.org); the service answers with a signed address that is then
    fetched by :func:`download`. A missing or refused token, an unreachable service or a
    bad answer is one line (:class:`DownloadError`).
    """
    what = f"deepcell: {asset_key.rsplit('/', 1)[-1]}"
    token = token or os.environ.get(DEEPCELL_TOKEN_ENV)
    if not token:
        raise DownloadError(f"{what} is not cached at {dest} and {DEEPCELL_TOKEN_ENV} is not set to download it; "
                            f"get a token at https://users.deepcell.org and export it, or {fallback}")
    endpoint = endpoint or DEEPCELL_API
    body = urllib.parse.urlencode({"s3_key": asset_key}).encode()
    try:
        _resolve(endpoint, timeout)
    except OSError as err:
        raise DownloadError(f"{what}: cannot reach {endpoint} ({_reason(err)}); offline? {fallback}") from None
    request = urllib.request.Request(endpoint, data=body, method="POST",
                                     headers={"X-Api-Key": token, "User-Agent": "cellgen"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise DownloadError(f"{what}: {endpoint} refused {DEEPCELL_TOKEN_ENV} (HTTP {err.code}); check the token "
                                f"at https://users.deepcell.org, or {fallback}") from None
        raise DownloadError(f"{what}: {endpoint} answered {_reason(err)}; {fallback}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(f"{what}: cannot reach {endpoint} ({_reason(err)}); offline? {fallback}") from None
    with response:
        try:
            answer = json.loads(response.read(1 << 20).decode("utf-8"))
            url = answer["url"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DownloadError(f"{what}: {endpoint} gave no download address ({_reason(err)}); {fallback}") from None
    size = _parse_size(answer.get("size"))
    if progress and size:
        tqdm.write(f"{what}: downloading {size / 1e6:.0f} MB to {dest}")
    # signed storage addresses reject unknown agents; deepcell itself poses as wget
    return download(url, dest, what=what, fallback=fallback, timeout=timeout, progress=progress,
                    headers={"User-Agent": "Wget/1.20 (linux-gnu)"}, md5=md5)
