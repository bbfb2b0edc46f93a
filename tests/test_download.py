"""cellgen.datasets.download: pooch's cache and hash check around the resuming downloader.

The resume, broken-connection, server-error and offline cases run through
``registry.download`` in test_registry.py; these cover what pooch adds or must keep.
"""

import functools
import hashlib
import http.server
import threading

import pytest

from cellgen.datasets import download
from cellgen.errors import CellgenError

PAYLOAD = bytes(range(256)) * 1000  # 256 kB, several read blocks


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "set.h5").write_bytes(PAYLOAD)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/set.h5", requests
    srv.shutdown()
    srv.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_cached_copy_is_checked_and_fetched_again_when_it_changed(served, tmp_path, monkeypatch):
    url, requests = served
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    path = download.fetch("demo", "1", SHA, [url], progress=False)
    assert path == tmp_path / "cache" / "demo-1.h5" and path.read_bytes() == PAYLOAD
    assert download.fetch("demo", "1", SHA, [url], progress=False) == path and len(requests) == 1
    path.write_bytes(PAYLOAD[:-1] + b"x")  # bit rot or a tampered file is never handed out
    assert download.fetch("demo", "1", SHA, [url], progress=False).read_bytes() == PAYLOAD
    assert len(requests) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo-1.h5"]  # no temporary or part file left


def test_first_failing_address_falls_through_to_the_next(served, tmp_path, monkeypatch):
    url, _ = served
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    missing = url.replace("set.h5", "gone.h5")
    assert download.fetch("demo", "1", SHA, [missing, url], progress=False).read_bytes() == PAYLOAD
    with pytest.raises(CellgenError, match="HTTP 404.*checksum mismatch"):
        download.fetch("other", "1", "0" * 64, [missing, url], progress=False)


def test_default_cache_is_the_platform_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLGEN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "cellgen" / "datasets"
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "mine"))
    assert download.cached_path("a", "1") == tmp_path / "mine" / "a-1.h5"


@pytest.mark.parametrize("name, version", [("../outside", "1"), ("sub/dir", "1"), ("a", "1/../../x")])
def test_names_that_would_leave_the_cache_are_refused(tmp_path, monkeypatch, name, version):
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    with pytest.raises(CellgenError, match="outside the cache"):
        download.fetch(name, version, SHA, ["http://127.0.0.1:9/x.h5"], progress=False)
    assert not any(tmp_path.rglob("*.h5*"))


def test_progress_bar_only_when_asked(served, tmp_path, monkeypatch, capsys):
    url, _ = served
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    download.fetch("demo", "1", SHA, [url], progress=False)
    assert capsys.readouterr().err == ""
    download.fetch("demo", "2", SHA, [url], progress=True)
    err = capsys.readouterr().err
    assert "demo-2.h5" in err and "256k" in err
