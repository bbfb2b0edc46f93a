import http.server
import json
import socket
import threading

import pytest

from cellgen.checkpoint import sha256_of
from cellgen.datasets import registry
from cellgen.datasets.h5 import verify
from cellgen.errors import CellgenError


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        if srv.status != 200:
            self.send_error(srv.status)
            return
        data, start = srv.payload, 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cut_after is not None:
            body, srv.cut_after = body[: srv.cut_after], None  # only the first answer is cut
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server(small_set):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.status, srv.cut_after, srv.ranges, srv.requests = small_set.read_bytes(), 200, None, True, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/small.h5"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def reg(tmp_path, monkeypatch, small_set, server):
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    entry = {"description": "test", "schema_version": 1, "sha256": sha256_of(small_set),
             "size_bytes": small_set.stat().st_size, "urls": [server.url], "mirrors": [], "license": "x",
             "citation": "x", "recipe": None}
    data = {"schema": 1, "sets": {"small": {"latest": "1", "versions": {"1": entry}}}}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("CELLGEN_REGISTRY", str(path))
    return data


def test_fresh_download_lands_verified_in_cache(reg, server, small_set, tmp_path):
    path = registry.download("small", progress=False)
    assert path == tmp_path / "cache" / "small-1.h5"
    assert path.read_bytes() == small_set.read_bytes()
    assert verify(path)["n_images"] == 9
    assert registry.download("small@1", progress=False) == path  # cached: no second request
    assert len(server.requests) == 1


def test_resume_after_cut_connection(reg, server, small_set, tmp_path):
    server.cut_after = 100_000
    with pytest.raises(CellgenError, match="rerun the same command to resume"):
        registry.download("small", progress=False)
    part = tmp_path / "cache" / "small-1.h5.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "cache" / "small-1.h5").exists()
    path = registry.download("small", progress=False)
    assert server.requests[-1] == "bytes=100000-"
    assert path.read_bytes() == small_set.read_bytes() and not part.exists()


def test_server_ignoring_range_restarts_cleanly(reg, server, small_set):
    server.cut_after, server.ranges = 50_000, False
    with pytest.raises(CellgenError):
        registry.download("small", progress=False)
    assert registry.download("small", progress=False).read_bytes() == small_set.read_bytes()


def test_wrong_checksum_leaves_nothing(reg, server, tmp_path):
    server.payload = server.payload[:-10] + b"0123456789"
    with pytest.raises(CellgenError, match="checksum mismatch"):
        registry.download("small", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_server_error_and_offline(reg, server, tmp_path):
    server.status = 500
    with pytest.raises(CellgenError, match="HTTP 500"):
        registry.download("small", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(CellgenError, match="cannot reach .* offline"):
        registry.download("small", url=f"http://127.0.0.1:{closed_port}/x.h5", progress=False)
    assert not (tmp_path / "cache" / "small-1.h5").exists()


def test_mirror_url_and_unpublished_sets(reg, server, monkeypatch, tmp_path):
    reg["sets"]["small"]["versions"]["1"]["urls"] = []
    (tmp_path / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(CellgenError, match="no published download address"):
        registry.download("small", progress=False)
    assert registry.download("small", url=server.url, progress=False).exists()
    with pytest.raises(CellgenError, match="unknown dataset"):
        registry.resolve("nope")
    with pytest.raises(CellgenError, match="no version '9'"):
        registry.resolve("small@9")


def test_shipped_registry_entries_are_complete():
    reg = registry.load_registry(registry.REGISTRY_FILE)
    for name, s in reg["sets"].items():
        assert s["latest"] in s["versions"]
        for e in s["versions"].values():
            for key in ("description", "schema_version", "sha256", "size_bytes", "urls", "mirrors", "license",
                        "citation", "recipe", "fingerprint"):
                assert key in e, (name, key)
            assert len(e["sha256"]) == 64
            # every set says what "the same set" is: exact arrays for masks and metadata, images by their means
            arrays = e["fingerprint"]["arrays"]
            assert e["fingerprint"]["scheme"] == 1 and arrays["masks/cell"]["kind"] == "exact", name
            assert len(arrays["images"]["mean"]) == arrays["images"]["shape"][0], name
            assert not e["urls"]  # nothing is published yet: no invented addresses


def test_build_small_standard_set_gives_registered_sha(tmp_path, monkeypatch):
    # the simulator uses no float kernels that depend on the CPU: the bytes themselves match
    monkeypatch.delenv("CELLGEN_REGISTRY", raising=False)
    expected = registry.resolve("sim-graded-small")[2]["sha256"]
    path, digest, check = registry.build("sim-graded-small", tmp_path / "b0.h5", progress=False)
    assert digest == expected and sha256_of(path) == expected and check.startswith("sha256 identical")
    summary = verify(tmp_path / "b0.h5")
    assert summary["tiers"] == {"low": 10, "medium": 10, "high": 10}


def test_build_with_foreign_checksum_keeps_nothing(tmp_path, monkeypatch):
    reg = registry.load_registry(registry.REGISTRY_FILE)
    entry = reg["sets"]["dsb2018-slice"]["versions"]["1"]
    entry["sha256"] = "0" * 64  # neither the bytes nor (below) the fingerprint of what gets built
    entry["fingerprint"]["arrays"]["masks/cell"]["sha256"] = "0" * 64
    pytest.importorskip("stardist")
    with pytest.raises(CellgenError, match="nothing was kept"):
        registry.build("dsb2018-slice", tmp_path / "d.h5", progress=False, registry=reg)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_checkpoints(models, tmp_path):
    """A checkpoints folder holding the tiny trained generator and renderer."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for src, name in ((models["gen"], "gen.pt"), (models["rend"], "rend.pt")):
        (folder / name).write_bytes(src.read_bytes())
        (folder / name).with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    return folder


def _sampled_registry(folder, tmp_path, gen_sha=None):
    recipe = {"builder": "sample", "generator": {"file": "gen.pt", "sha256": gen_sha or sha256_of(folder / "gen.pt")},
              "renderer": {"file": "rend.pt", "sha256": sha256_of(folder / "rend.pt")}, "seeds": [0, 3],
              "psi": [-1.0, 0.0, 1.0], "size": 64, "pixel_size_um": 0.5, "batch_size": 4, "variants": ["poisson"],
              "tiers": {"measure": "count", "thresholds": [3, 6], "names": ["low", "medium", "high"]}}
    entry = {"description": "test", "schema_version": 1, "sha256": "", "size_bytes": 0, "urls": [], "mirrors": [],
             "license": "x", "citation": "x", "recipe": recipe}
    return {"schema": 1, "sets": {"gen": {"latest": "1", "versions": {"1": entry}}}}


def test_sample_recipe_builds_the_same_bytes_twice(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGEN_CHECKPOINTS", str(tiny_checkpoints))
    reg = _sampled_registry(tiny_checkpoints, tmp_path)
    path, digest, _ = registry.build("gen", tmp_path / "a.h5", check=False, progress=False, registry=reg)
    reg["sets"]["gen"]["versions"]["1"]["sha256"] = digest
    path2, digest2, check = registry.build("gen", tmp_path / "b.h5", progress=False, registry=reg)
    assert digest2 == digest and check.startswith("sha256 identical")
    summary = verify(path2)
    assert summary["n_images"] == 12 and summary["image_size"] == [64, 64]


def test_sample_recipe_refuses_another_checkpoint(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGEN_CHECKPOINTS", str(tiny_checkpoints))
    reg = _sampled_registry(tiny_checkpoints, tmp_path, gen_sha="1" * 64)
    with pytest.raises(CellgenError, match="a different contour generator"):
        registry.build("gen", tmp_path / "a.h5", check=False, progress=False, registry=reg)
    assert not (tmp_path / "a.h5").exists()


def test_standard_sets_name_the_shipped_checkpoints():
    from cellgen.defaults import checkpoints_dir

    reg = registry.load_registry(registry.REGISTRY_FILE)
    sampled = {name: s["versions"][s["latest"]]["recipe"] for name, s in reg["sets"].items()
               if s["versions"][s["latest"]]["recipe"]["builder"] == "sample"}
    assert {"paper-protocol", "paper-protocol-small"} <= set(sampled)
    for name, recipe in sampled.items():
        for kind in ("generator", "renderer"):
            spec = recipe[kind]
            assert sha256_of(checkpoints_dir() / spec["file"]) == spec["sha256"], (name, kind)
        assert recipe["psi"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert sampled["paper-protocol"]["seeds"] == [0, 299] and sampled["paper-protocol-small"]["seeds"] == [0, 19]


def test_build_small_paper_protocol_set_is_the_registered_set(tmp_path, monkeypatch):
    # float32 rendering rounds differently on other CPUs: the build is held to the registered
    # sha256 or, failing that, to the registered fingerprint (docs/format.md)
    for var in ("CELLGEN_REGISTRY", "CELLGEN_CHECKPOINTS", "CELLGEN_GENERATOR", "CELLGEN_RENDERER"):
        monkeypatch.delenv(var, raising=False)
    entry = registry.resolve("paper-protocol-small")[2]
    path, digest, check = registry.build("paper-protocol-small", tmp_path / "p0.h5", progress=False)
    assert check.startswith("sha256 identical") if digest == entry["sha256"] else check.startswith("fingerprint")
    summary = verify(tmp_path / "p0.h5")
    assert summary["n_images"] == 100 and summary["variants"] == ["clean", "gaussian", "poisson"]
    assert all(n > 0 for n in summary["tiers"].values())
