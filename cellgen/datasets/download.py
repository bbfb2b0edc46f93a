"""Downloads of registered sets through pooch, resumable, into the cellgen cache.

pooch keeps the sha256 registry, the cache folder (``$CELLGEN_DATA`` overrides it; the
default is the platform's user cache, ``~/.cache/cellgen/datasets`` on Linux), checks the
hash of every download before it is moved into place, and fetches a file only when the
cached copy is missing or no longer matches. pooch restarts a broken download from byte
zero; :class:`ResumingDownloader` adds resumption: bytes land in ``NAME-VERSION.h5.part``
next to the target and a rerun continues from there with an HTTP Range request.

Public API: :func:`cache_dir`, :func:`cached_path`, :func:`fetch`, :class:`ResumingDownloader`.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from cellgen import __version__
from cellgen.errors import CellgenError

CACHE_ENV = "CELLGEN_DATA"
CHUNK = 1 << 16


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import pooch

    return Path(pooch.os_cache("cellgen")) / "datasets"


def cached_path(name: str, version: str) -> Path:
    """Where ``NAME@VERSION`` lives in the cache; a name that would leave the cache is refused."""
    folder = cache_dir()
    target = folder / f"{name}-{version}.h5"
    if target.resolve().parent != folder.resolve():
        raise CellgenError(f"dataset name {name!r} with version {version!r} would be stored outside the cache {folder}")
    return target


class ResumingDownloader:
    """A pooch downloader that keeps partial bytes in ``part`` and resumes with HTTP Range.

    pooch calls it with a temporary file in the cache folder; the complete download is moved
    there, so pooch's hash check decides whether it is kept (a mismatch deletes it).
    """

    def __init__(self, part: Path, size: int | None = None, progress: bool = True, timeout: float = 30.0):
        self.part, self.size, self.progress, self.timeout = Path(part), size, progress, timeout

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        if check_only:  # pooch's is_available()
            try:
                with urllib.request.urlopen(self._request(url, method="HEAD"), timeout=self.timeout) as response:
                    return response.status < 400
            except (urllib.error.URLError, OSError):
                return False
        self._fetch(url)
        os.replace(self.part, output_file)

    @staticmethod
    def _request(url: str, method: str = "GET") -> urllib.request.Request:
        return urllib.request.Request(url, headers={"User-Agent": f"cellgen/{__version__}"}, method=method)

    def _fetch(self, url: str) -> None:
        # urllib rather than requests: on a cut connection it hands over every byte that
        # arrived, so the part file keeps all of them for the resume
        from tqdm import tqdm

        have = self.part.stat().st_size if self.part.exists() else 0
        request = self._request(url)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # the partial file is already complete
                return
            raise CellgenError(f"{url}: server answered HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise CellgenError(f"cannot reach {url} ({getattr(err, 'reason', err)}); offline? "
                               "'cellgen datasets build' needs no network") from None
        with response:
            if have and response.status != 206:
                have = 0  # the server ignored the Range request: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else self.size
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=self.part.name[:-5],
                       disable=not self.progress)
            try:
                with open(self.part, "ab" if have else "wb") as fh:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        bar.update(len(block))
            except (OSError, TimeoutError, ConnectionError) as err:
                got = self.part.stat().st_size if self.part.exists() else 0
                raise CellgenError(f"download from {url} broke off after {got} bytes ({err}); "
                                   "rerun the same command to resume") from None
            finally:
                bar.close()
        got = self.part.stat().st_size
        if total is not None and got < total:
            raise CellgenError(f"download from {url} ended after {got} of {total} bytes; "
                               "rerun the same command to resume")


@contextmanager
def _pooch_log(progress: bool):
    """pooch announces each download on its logger; quiet runs stay quiet."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    if not progress:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fetch(name: str, version: str, sha256: str, urls: list[str], size: int | None = None, progress: bool = True,
          timeout: float = 30.0) -> Path:
    """The set ``NAME@VERSION`` in the cache, downloaded from the first address that serves it.

    A cached file with the registered sha256 is returned without a request; one that no longer
    matches is fetched again. Every failed address is named in the error.
    """
    import pooch

    target = cached_path(name, version)
    if not sha256:
        raise CellgenError(f"{name}@{version} has no registered sha256, so a download could not be checked")
    errors = []
    for address in urls:
        cache = pooch.create(path=target.parent, base_url="", env=CACHE_ENV,
                             registry={target.name: f"sha256:{sha256}"}, urls={target.name: address})
        downloader = ResumingDownloader(target.with_name(target.name + ".part"), size, progress, timeout)
        try:
            with _pooch_log(progress):
                return Path(cache.fetch(target.name, downloader=downloader))
        except CellgenError as err:
            errors.append(str(err))
        except ValueError as err:  # pooch's hash check: the download was deleted
            got = re.search(r"got ([0-9a-f]{64})", str(err))
            errors.append(f"{address}: checksum mismatch (got {got.group(1)[:16] if got else '?'}..., expected "
                          f"{sha256[:16]}...); the download was discarded")
        except OSError as err:
            raise CellgenError(f"cannot write to the dataset cache {target.parent}: {err.strerror or err}") from None
    raise CellgenError("; ".join(errors))
