"""'The same set on every machine' (docs/format.md): fingerprints, rebuilds under other
instruction sets, verify --against, the register tool, and registry names that stay in the cache."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cellgen.checkpoint import sha256_of
from cellgen.cli.root import main
from cellgen.datasets import fingerprint, register, registry
from cellgen.errors import CellgenError


def cellgen(capsys, *args) -> tuple[int, str, str]:
    """Run the command line in this process as a user would: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as err:
        code = err.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_registry(models, tmp_path_factory):
    """A registry with one sampled set (tiny trained models, 64 px, 4 seeds x 2 psi), registered
    by the maintainer tool on this machine's default instruction set."""
    root = tmp_path_factory.mktemp("same-set")
    folder = root / "checkpoints"
    folder.mkdir()
    for src, name in ((models["gen"], "gen.pt"), (models["rend"], "rend.pt")):
        (folder / name).write_bytes(src.read_bytes())
        (folder / name).with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    recipe = {"builder": "sample", "generator": {"file": "gen.pt", "sha256": sha256_of(folder / "gen.pt")},
              "renderer": {"file": "rend.pt", "sha256": sha256_of(folder / "rend.pt")}, "seeds": [0, 3],
              "psi": [-1.0, 1.0], "size": 64, "pixel_size_um": 0.5, "batch_size": 4, "variants": ["poisson"],
              "tiers": {"measure": "count", "thresholds": [3, 6], "names": ["low", "medium", "high"]}}
    entry = {"description": "test", "schema_version": 1, "sha256": "", "size_bytes": 0, "urls": [], "mirrors": [],
             "license": "x", "citation": "x", "recipe": recipe}
    path = root / "registry.json"
    path.write_text(json.dumps({"schema": 1, "sets": {"tiny": {"latest": "1", "versions": {"1": entry}}}}))
    env = {"CELLGEN_CHECKPOINTS": str(folder), "CELLGEN_REGISTRY": str(path), "CELLGEN_DATA": str(root / "cache")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert register.main(["tiny", "--registry", str(path), "--work-dir", str(root / "work"), "-q"]) == 0
        built = registry.build("tiny", root / "reference.h5", progress=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {"root": root, "registry": path, "env": env, "reference": built.path, "check": built.check}


def test_register_tool_writes_sha_fingerprint_and_size(tiny_registry):
    entry = registry.load_registry(tiny_registry["registry"])["sets"]["tiny"]["versions"]["1"]
    ref = tiny_registry["reference"]
    # the rebuild on the same machine reproduces the registered bytes
    assert entry["sha256"] == sha256_of(ref) and entry["size_bytes"] == ref.stat().st_size
    assert tiny_registry["check"].startswith("sha256 identical")
    fp = entry["fingerprint"]
    assert fp == json.loads(json.dumps(fingerprint.fingerprint(ref)))
    kinds = {name: a["kind"] for name, a in fp["arrays"].items()}
    assert kinds["images"] == kinds["noisy/poisson/images"] == "image"
    assert kinds["noisy/poisson/snr_db"] == "snr"
    assert kinds["masks/cell"] == kinds["metadata/tier"] == "exact"
    with h5py.File(ref) as f:
        np.testing.assert_allclose(fp["arrays"]["images"]["mean"], f["images"][()].mean(axis=(2, 3)), atol=6e-4)
        assert json.loads(f.attrs["recipe"])["precision"] == {"generator": "float64", "renderer": "float32"}


def test_build_under_another_instruction_set_is_the_same_set(tiny_registry):
    """Registered under this CPU's default kernels, rebuilt with oneDNN held to SSE4.1 and
    ATen's vector kernels off (chosen when torch starts, hence another process)."""
    out = tiny_registry["root"] / "sse41.h5"
    env = dict(os.environ, **tiny_registry["env"], ONEDNN_MAX_CPU_ISA="SSE41", ATEN_CPU_CAPABILITY="default",
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "cellgen", "datasets", "build", "tiny", "-o", str(out), "-q"],
                       capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "accepted: sha256 identical" in r.stdout or "accepted: fingerprint: the same set" in r.stdout
    checks = fingerprint.compare_files(out, tiny_registry["reference"])
    assert all(c.ok for c in checks), [c.line() for c in checks]
    # masks, metadata and attributes never move; only image arrays may (within tolerance)
    assert {c.name for c in checks if c.status != "identical"} <= {"images", "noisy/poisson/images",
                                                                   "noisy/poisson/snr_db"}


def _tampered(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_fingerprint_tolerates_rounding_but_not_changes(tiny_registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CELLGEN_REGISTRY", str(tiny_registry["registry"]))
    ref = tiny_registry["reference"]
    registered = registry.resolve("tiny")[2]["fingerprint"]

    def rounding(f):  # what another CPU's float32 rendering does: +-1 ADU in a few pixels
        img = f["images"][()]
        img[:, :, ::37, ::41] = np.where(img[:, :, ::37, ::41] > 0, img[:, :, ::37, ::41] - 1, 1)
        f["images"][...] = img

    loose = _tampered(ref, tmp_path / "rounding.h5", rounding)
    checks = {c.name: c for c in fingerprint.compare(fingerprint.fingerprint(loose), registered)}
    assert checks["images"].status == "within tolerance" and checks["masks/cell"].status == "identical"
    assert all(c.ok for c in checks.values())
    code, out, err = cellgen(capsys, "datasets", "verify", str(loose), "--against", "tiny")
    assert code == 0, err
    assert "images: within tolerance" in out and "masks/cell: identical" in out

    def brighter(f):  # one image 20 ADU brighter: not the same image any more
        f["images"][2] = f["images"][2] + np.uint16(20)

    def mask_pixel(f):
        cell = f["masks/cell"][1]
        cell[0, 0] = cell.max()
        f["masks/cell"][1] = cell

    def recipe(f):
        f.attrs["recipe"] = f.attrs["recipe"].replace('"size": 64', '"size": 65')

    for edit, name, words in ((brighter, "images", "1 of 8 images beyond the tolerance"),
                              (mask_pixel, "masks/cell", "exact array: its values differ"),
                              (recipe, "attributes", "/recipe differ")):
        bad = _tampered(ref, tmp_path / f"{edit.__name__}.h5", edit)
        code, out, err = cellgen(capsys, "datasets", "verify", str(bad), "--against", "tiny")
        assert code == 1 and f"  {name}: different ({words}" in out
        assert err.count("\n") == 1 and err.startswith("cellgen: error: ") and "differs from registered tiny@1" in err
        # both files at hand: the differences themselves are named too
        code, out, err = cellgen(capsys, "datasets", "verify", str(bad), "--against", str(ref))
        assert code == 1 and f"  {name}: different" in out and (name == "attributes" or "max |diff|" in out)


def test_malformed_registered_fingerprint_is_one_line(tiny_registry):
    mine = fingerprint.fingerprint(tiny_registry["reference"])
    for bad in ({"scheme": 1}, {"scheme": 2, "arrays": {}}, {**mine, "arrays": {"images": {"kind": "image"}}}):
        with pytest.raises(CellgenError) as err:
            fingerprint.compare(mine, bad)
        assert "\n" not in str(err.value) and "fingerprint" in str(err.value)


def test_build_refuses_a_set_with_other_masks(tiny_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGEN_CHECKPOINTS", tiny_registry["env"]["CELLGEN_CHECKPOINTS"])
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path))
    reg = registry.load_registry(tiny_registry["registry"])
    entry = reg["sets"]["tiny"]["versions"]["1"]
    entry["sha256"] = "0" * 64  # not this machine's bytes, so the fingerprint decides
    arrays = entry["fingerprint"]["arrays"]
    arrays["masks/nucleus"]["sha256"] = "1" * 64
    with pytest.raises(CellgenError, match=r"masks/nucleus: different .*nothing was kept"):
        registry.build("tiny", progress=False, registry=reg)
    assert list(tmp_path.iterdir()) == []
    arrays["masks/nucleus"]["sha256"] = json.loads(tiny_registry["registry"].read_text())[
        "sets"]["tiny"]["versions"]["1"]["fingerprint"]["arrays"]["masks/nucleus"]["sha256"]
    built = registry.build("tiny", progress=False, registry=reg)
    assert built.path == tmp_path / "tiny-1.h5" and built.check.startswith("fingerprint: every array and attribute identical")
    # the accepted rebuild is recognised as the registered set later (bench, verify NAME)
    assert registry.is_registered_file(built.path, entry)
    built.path.write_bytes(built.path.read_bytes()[:-1] + b"\0")
    assert not registry.is_registered_file(built.path, entry)


@pytest.mark.parametrize("bad", ["../../x", "/abs", "a/b", "..", "x..y", "", "name with space", "sub\\dir"])
def test_hostile_registry_names_are_refused(tmp_path, monkeypatch, capsys, bad):
    good = {"description": "x", "sha256": "0" * 64, "urls": ["http://127.0.0.1:9/x.h5"], "mirrors": []}
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    for sets in ({bad: {"latest": "1", "versions": {"1": good}}}, {"ok": {"latest": bad, "versions": {bad: good}}}):
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"schema": 1, "sets": sets}))
        monkeypatch.setenv("CELLGEN_REGISTRY", str(path))
        with pytest.raises(CellgenError, match="is not allowed"):
            registry.load_registry()
        code, _, err = cellgen(capsys, "datasets", "download", "ok" if bad not in sets else bad)
        assert code == 1 and err.count("\n") == 1 and "is not allowed" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["registry.json"]
