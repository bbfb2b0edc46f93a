"""Weights downloads (cellgen.bench.weights) against a local HTTP server on 127.0.0.1:
DeepCell's token path (asset service -> signed address -> file, md5-checked) and the
failures a user meets offline or with a bad token, each as one line that keeps nothing."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse

import pytest

from cellgen.bench import weights
from tests.local_http import LocalServer, closed_port_url

ASSET = "models/MultiplexSegmentation-9.tar.gz"
PAYLOAD = bytes(range(256)) * 300  # stands in for the weights archive
TOKEN = "test-token-123"


@pytest.fixture
def deepcell_service(monkeypatch):
    """The asset service and the file store of deepcell, both on one local server."""
    server = LocalServer()

    def get_data(handler, body):
        form = urllib.parse.parse_qs(body.decode())
        if handler.headers.get("X-Api-Key") != TOKEN:
            return (403, {}, b'{"detail": "bad token"}')
        if form.get("s3_key") != [ASSET]:
            return (404, {}, b"{}")
        answer = {"url": server.url + "/signed/archive.tar.gz?sig=abc", "size": f"{len(PAYLOAD) / 1e3} kB"}
        return (200, {"Content-Type": "application/json"}, json.dumps(answer).encode())

    server.routes["/api/getData/"] = get_data
    server.routes["/signed/archive.tar.gz?sig=abc"] = (200, {}, PAYLOAD)
    monkeypatch.setattr(weights, "DEEPCELL_API", server.url + "/api/getData/")
    monkeypatch.delenv("DEEPCELL_ACCESS_TOKEN", raising=False)
    yield server
    server.close()


def test_token_fetches_the_asset_md5_checked(deepcell_service, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", TOKEN)
    dest = tmp_path / "models" / "MultiplexSegmentation-9.tar.gz"
    got = weights.fetch_deepcell_asset(ASSET, dest, md5=hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    post, fetch = deepcell_service.log
    assert post[0] == "POST" and post[2]["X-Api-Key"] == TOKEN
    assert urllib.parse.parse_qs(post[3].decode()) == {"s3_key": [ASSET]}
    assert fetch[:2] == ("GET", "/signed/archive.tar.gz?sig=abc")
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_token_problems_are_one_line(deepcell_service, tmp_path, monkeypatch):
    dest = tmp_path / "MultiplexSegmentation-9.tar.gz"
    with pytest.raises(weights.DownloadError, match="DEEPCELL_ACCESS_TOKEN is not set.*users.deepcell.org"):
        weights.fetch_deepcell_asset(ASSET, dest, progress=False)
    assert deepcell_service.log == []  # nothing asked without a token
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "wrong")
    with pytest.raises(weights.DownloadError, match=r"refused DEEPCELL_ACCESS_TOKEN \(HTTP 403\)") as err:
        weights.fetch_deepcell_asset(ASSET, dest, progress=False)
    assert "\n" not in str(err.value) and "model=PATH" in str(err.value)
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", TOKEN)
    with pytest.raises(weights.DownloadError, match="md5 .* expected 0{32}; nothing was kept"):
        weights.fetch_deepcell_asset(ASSET, dest, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(weights.DownloadError, match="cannot reach http://127.0.0.1:.*offline"):
        weights.fetch_deepcell_asset(ASSET, dest, endpoint=closed_port_url() + "/api/getData/", progress=False)


def test_stalled_download_gives_up_after_the_timeout(tmp_path):
    server = LocalServer()
    server.routes["/slow"] = "stall"
    t0 = time.perf_counter()
    try:
        with pytest.raises(weights.DownloadError, match="no answer within the timeout"):
            weights.download(server.url + "/slow", tmp_path / "w", timeout=0.5, progress=False)
    finally:
        server.close()
    assert time.perf_counter() - t0 < 10
    assert list(tmp_path.iterdir()) == []


def test_mesmer_check_downloads_its_weights_once(deepcell_service, tmp_path, monkeypatch):
    """DeepCellMesmer.check fetches the missing archive (md5-checked) before any image; the
    side environment itself is not needed for that and is stood in for by a folder."""
    from cellgen.bench.methods import MethodUnavailable
    from cellgen.bench.methods import deepcell as dc

    monkeypatch.setattr(dc, "find_deepcell_env", lambda: tmp_path / "env")
    monkeypatch.setattr(dc, "MESMER_WEIGHTS_MD5", hashlib.md5(PAYLOAD).hexdigest())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", "wrong")
    with pytest.raises(MethodUnavailable, match=r"refused DEEPCELL_ACCESS_TOKEN \(HTTP 403\)"):
        dc.DeepCellMesmer().check()
    monkeypatch.setenv("DEEPCELL_ACCESS_TOKEN", TOKEN)
    dc.DeepCellMesmer(download_timeout=5).check()
    assert dc.mesmer_weights_path() == tmp_path / ".deepcell" / "models" / "MultiplexSegmentation-9.tar.gz"
    assert dc.mesmer_weights_path().read_bytes() == PAYLOAD
    n = len(deepcell_service.log)
    dc.DeepCellMesmer().check()  # cached with the right md5: no request
    assert len(deepcell_service.log) == n


def test_mesmer_image_mpp_must_be_the_sets_pixel_size():
    from cellgen.bench.methods import deepcell as dc
    from cellgen.errors import CellgenError

    assert dc.DeepCellMesmer().settings_for_set(0.65) == {"image_mpp": 0.65, "model_mpp": 0.5, "rescale_factor": 1.3}
    assert dc.DeepCellMesmer(image_mpp=0.5).settings_for_set(0.5)["image_mpp"] == 0.5
    with pytest.raises(CellgenError, match="image_mpp 0.65 differs from the set's pixel size 0.5"):
        dc.DeepCellMesmer(image_mpp=0.65).settings_for_set(0.5)


def test_a_hanging_name_lookup_is_bounded_too(tmp_path, monkeypatch):
    """A socket timeout does not cover DNS; a lookup that never returns still ends the download."""
    import socket
    import threading

    release = threading.Event()

    def stuck(*args, **kwargs):
        release.wait(20)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    t0 = time.perf_counter()
    try:
        with pytest.raises(weights.DownloadError, match="no answer within the timeout") as err:
            weights.download("http://weights.example.invalid/cyto3", tmp_path / "w", timeout=0.5, progress=False)
    finally:
        release.set()
    assert time.perf_counter() - t0 < 5 and "weights.example.invalid" in str(err.value)
    assert list(tmp_path.iterdir()) == []
