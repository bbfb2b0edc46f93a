"""Issue 12, points 2-4 and 6: crash-safe resumable writing, refusing corrupt sets before they
are scored, numeric options checked before any work, and one-line errors for bad weights.

The SIGKILL tests fork a child that dies with ``os._exit`` at a chosen moment: like SIGKILL,
no ``finally``, ``except`` or ``atexit`` runs in it.
"""

import hashlib
import json
import os
import shutil
import signal

import h5py
import numpy as np
import pytest

from cellgen import pipeline
from cellgen.datasets import h5, staging
from cellgen.datasets.h5 import BenchmarkWriter
from cellgen.datasets.verification import check_before_scoring, verify_set
from cellgen.errors import CellgenError, DatasetError
from cellgen.simulate import SimulationConfig

CONFIG = SimulationConfig(size=64, count=(1, 3), cell_radius_um=5)


def write(path, n=5, **kwargs):
    return pipeline.simulate_set(path, CONFIG, n, seed=2, variants=["poisson"], progress=False, **kwargs)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def leftovers(path):
    return sorted(p.name for p in path.parent.glob(path.name + ".*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return write(tmp_path_factory.mktemp("ref") / "ref.h5")


@pytest.fixture
def one_image_parts(monkeypatch):
    monkeypatch.setattr(BenchmarkWriter, "PART_IMAGES", 1)


def die_in_child(path, patch):
    """Run ``write(path)`` in a forked child that ``patch`` makes die abruptly; returns its exit code."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            patch()
            write(path)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def dies_on(target, name, when):
    """Replace ``target.name`` with a version that ends the process (no cleanup) when ``when(*args)``."""
    real = getattr(target, name)

    def wrapper(*args, **kwargs):
        if when(*args):
            os._exit(9)
        return real(*args, **kwargs)

    return lambda: setattr(target, name, wrapper)


@pytest.mark.parametrize("moment", ["part written, not yet renamed", "merge half written",
                                    "set renamed, parts not yet removed"])
def test_killed_at_any_moment_rerun_gives_the_uninterrupted_bytes(tmp_path, reference, one_image_parts, moment):
    out = tmp_path / "out.h5"
    patch = {
        "part written, not yet renamed": dies_on(staging.os, "replace", lambda src, dst: "part-000000002" in str(src)),
        "merge half written": dies_on(h5, "copy_images", lambda dst, index, *a: index == 3),
        "set renamed, parts not yet removed": dies_on(staging.shutil, "rmtree", lambda *a: True),
    }[moment]
    assert die_in_child(out, patch) == 9
    assert (tmp_path / "out.h5.partial").is_dir()
    assert write(out) == out  # the rerun finishes (or sees the killed run had finished)
    assert sha(out) == sha(reference)
    assert leftovers(out) == []


def test_interrupted_run_keeps_complete_images_and_resumes(tmp_path, reference, monkeypatch):
    real = pipeline.simulate_image
    calls = []

    def interrupted(seed, cfg):
        calls.append(seed)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(seed, cfg)

    monkeypatch.setattr(pipeline, "simulate_image", interrupted)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        write(out)
    monkeypatch.setattr(pipeline, "simulate_image", lambda seed, cfg: calls.append(seed) or real(seed, cfg))
    calls.clear()
    write(out)
    assert calls == [5, 6]  # images 0-2 were kept; only 3 and 4 were computed again
    assert sha(out) == sha(reference)


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, reference, monkeypatch, capsys):
    from cellgen.cli import main

    real = pipeline.simulate_image
    calls = []

    def terminated(seed, cfg):
        calls.append(seed)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler or `docker stop` sends
        return real(seed, cfg)

    monkeypatch.setattr(pipeline, "simulate_image", terminated)
    out = tmp_path / "out.h5"
    args = ["simulate", "--n", "5", "--size", "64", "--count", "1:3", "--cell-radius", "5", "--seed", "2",
            "--variants", "clean,poisson", "-q", "-o", str(out)]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip() == "cellgen: interrupted; rerun the same command to resume"
    assert sorted(p.name for p in (tmp_path / "out.h5.partial").glob("part-*")) == ["part-000000000-000000002.h5"]
    monkeypatch.setattr(pipeline, "simulate_image", real)
    write(out)
    assert sha(out) == sha(reference)


def test_overwrite_always_starts_clean(tmp_path, reference):
    out = tmp_path / "ref.h5"
    # leftovers of every kind: another run's parts, an old single-file .partial and its repack
    other = staging.Staging(out, json.dumps({"other": "options"}))
    other.open()
    (other.folder / "part-000000000-000000001.h5").write_bytes(b"not a part")
    with pytest.raises(DatasetError, match="other options"):
        write(out)
    write(out, overwrite=True)
    assert sha(out) == sha(reference) and leftovers(out) == []
    out.with_name("ref.h5.partial").write_bytes(b"old-style partial")
    out.with_name("ref.h5.partial.repack").write_bytes(b"old repack")
    write(out, overwrite=True)
    assert sha(out) == sha(reference) and leftovers(out) == []


def test_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, reference, monkeypatch, one_image_parts):
    out = tmp_path / "out.h5"
    real_usage = shutil.disk_usage
    commits = []

    def filling(path):  # the disk fills up after two images were committed
        usage = real_usage(path)
        commits.append(path)
        return usage._replace(free=0) if len(commits) > 3 else usage

    monkeypatch.setattr(staging.shutil, "disk_usage", filling)
    with pytest.raises(DatasetError, match=r"not enough disk space .* rerun the same command to resume"):
        write(out)
    monkeypatch.undo()
    assert len(list((tmp_path / "out.h5.partial").glob("part-*"))) == 2
    write(out)
    assert sha(out) == sha(reference) and leftovers(out) == []


def test_disk_and_memory_are_estimated_before_any_work(tmp_path, monkeypatch):
    from cellgen import resources

    small = shutil.disk_usage(tmp_path)._replace(free=10**6)
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: small)
    with pytest.raises(CellgenError, match=r"need about .* MB of disk .* has 1.0 MB free"):
        write(tmp_path / "big.h5", n=50)
    assert leftovers(tmp_path / "big.h5") == [] and not (tmp_path / "big.h5").exists()
    monkeypatch.setattr(resources, "available_memory", lambda: 2**30)
    with pytest.raises(CellgenError, match=r"simulating one 8192x8192 image needs about 13.4 GB of memory"):
        SimulationConfig(size=8192, count=10)


# -- corrupt and tampered sets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.h5"
    pipeline.simulate_set(path, SimulationConfig(size=64, count=2, cell_radius_um=5), 3, seed=4,
                          variants=["gaussian"], progress=False)
    return path


def _replace(f, name, array):
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=array)
    for k, v in attrs.items():
        f[name].attrs[k] = v


def _nucleus_outside(f):
    nuc, cell = f["masks/nucleus"][0], f["masks/cell"][0]
    ys, xs = np.nonzero(cell == 0)
    nuc[ys[0], xs[0]] = 1
    f["masks/nucleus"][0] = nuc


def _other_tier(f):
    col = f["metadata/tier"]
    col[0] = "low" if col.asstr()[0] != "low" else "high"


def _tiers(thresholds):
    def edit(f):
        scheme = json.loads(f.attrs["tier_scheme"])
        f.attrs["tier_scheme"] = json.dumps(dict(scheme, thresholds=thresholds))
    return edit


TAMPERINGS = {
    "all-zero images": (lambda f: f["images"].__setitem__(Ellipsis, 0), "image 0 is all zero"),
    "density column disagrees with the masks": (
        lambda f: f["metadata/cells_per_mm2"].__setitem__(0, 5.0), "metadata cells_per_mm2 is 5 but its masks give"),
    "recipe is not JSON": (lambda f: f.attrs.__setitem__("recipe", "{oops"), "'recipe' is not JSON"),
    "NaN SNR": (lambda f: f["noisy/gaussian/snr_db"].__setitem__(1, np.nan), "SNR is NaN for 1 image"),
    "NaN tier thresholds": (_tiers([float("nan"), 1600.0]), "tier thresholds must be finite"),
    "nucleus outside its cell": (_nucleus_outside, "image 0:"),
    "cell masks stored as int64": (lambda f: _replace(f, "masks/cell", f["masks/cell"][()].astype(np.int64)),
                                   "'masks/cell' has dtype int64, expected uint32"),
    "edited tier": (_other_tier, "image 0: tier"),
    "NaN pixel size": (lambda f: f.attrs.__setitem__("pixel_size_um", np.nan), "pixel_size_um is nan"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_verify_catches_tampering(tmp_path, good_set, name):
    edit, message = TAMPERINGS[name]
    bad = tmp_path / "bad.h5"
    shutil.copyfile(good_set, bad)
    with h5py.File(bad, "r+") as f:
        edit(f)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        verify_set(bad)
    assert "\n" not in str(err.value)


def test_bench_refuses_a_corrupt_set_before_segmenting(tmp_path, good_set, capsys, monkeypatch):
    from cellgen.cli import main

    assert check_before_scoring(good_set)["n_images"] == 3
    bad = tmp_path / "bad.h5"
    shutil.copyfile(good_set, bad)
    with h5py.File(bad, "r+") as f:
        _nucleus_outside(f)
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--method", "watershed", "--data", str(bad), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and err.startswith("cellgen: error: ") and "\n" not in err
    assert not out.exists()
    # a cached registered set whose bytes are not the registered ones
    from cellgen.datasets import registry

    name = next(iter(registry.load_registry()["sets"]))
    _, version, entry = registry.resolve(name)
    monkeypatch.setenv("CELLGEN_DATA", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    shutil.copyfile(good_set, registry.cached_path(name, version))
    with pytest.raises(DatasetError, match="does not match the registered sha256"):
        check_before_scoring(registry.cached_path(name, version), entry)


# -- options checked before any work ---------------------------------------------------------------

SIM = ["simulate", "-q", "--n", "2", "--size", "64", "--count", "2"]
BAD_OPTIONS = {
    "--density nan": ([*SIM, "--density", "nan"], "finite"),
    "--density -5": ([*SIM, "--density", "-5"], "at least 0"),
    "--density 1e9": ([*SIM, "--density", "1e9"], "cannot fit a 64x64 image"),
    "--pixel-size nan": ([*SIM, "--pixel-size", "nan"], "finite"),
    "--pixel-size inf": ([*SIM, "--pixel-size", "inf"], "finite"),
    "--cell-radius -1": ([*SIM, "--cell-radius", "-1"], "above 0"),
    "--touching nan": ([*SIM, "--touching", "nan"], "finite"),
    "--count -3": ([*SIM, "--count", "-3"], "expected N >= 0"),
    "--count 100000": ([*SIM, "--count", "100000"], "cannot fit"),
    "--tier-thresholds nan,5": ([*SIM, "--tier-thresholds", "nan,5"], "finite"),
    "--tier-thresholds 5,1": ([*SIM, "--tier-thresholds", "5,1"], "must increase"),
    "--seed -1": ([*SIM, "--seed", "-1"], "--seed"),
    "--size 100000": (["simulate", "-q", "--n", "2", "--size", "100000"], "of memory"),
    "--n 1000000000": (["simulate", "-q", "--n", "1000000000", "--size", "64", "--count", "1"], "of disk"),
    "-o ''": ([*SIM, "-o", ""], "output file name is empty"),
    "sample --psi nan": (["sample", "-q", "--psi", "nan"], "finite"),
    "sample --seeds 0-1000000000": (["sample", "-q", "--seeds", "0-1000000000"], "more than the"),
    "sample --device bogus": (["sample", "-q", "--device", "bogus"], "unknown device 'bogus'"),
    "sample --pixel-size nan": (["sample", "-q", "--pixel-size", "nan"], "finite"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_numeric_options_are_refused_before_any_work(tmp_path, capsys, case):
    from cellgen.cli import main

    args, message = BAD_OPTIONS[case]
    out = tmp_path / "out.h5"
    if "-o" not in args:
        args = [*args, "-o", str(out)]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err.strip()
    assert stop.value.code in (1, 2)
    assert err.startswith("cellgen: error:") and "\n" not in err and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a staging folder


def test_resolve_device_refuses_unknown_devices():
    from cellgen.device import resolve_device

    for bad in ("bogus", "cuda:x", "mps"):
        with pytest.raises(CellgenError):
            resolve_device(bad)


# -- weights files ----------------------------------------------------------------------------------


def test_hostile_and_broken_weights_files_are_one_cellgen_line(tmp_path):
    import pickle

    import torch

    from cellgen.checkpoint import load_checkpoint
    from cellgen.safe_load import load_weights

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    files = {"hostile.pt": pickle.dumps({"w": Hostile()}, protocol=2), "hostile4.pt": pickle.dumps(Hostile()),
             "garbage.pt": os.urandom(2048)}
    torch.save({"w": torch.ones(3)}, tmp_path / "good.pt")
    files["truncated.pt"] = (tmp_path / "good.pt").read_bytes()[:300]
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        for load in (lambda p: load_weights(p, "CellPose cell model"), load_checkpoint):
            with pytest.raises(CellgenError) as err:
                load(tmp_path / name)
            text = str(err.value)
            assert "\n" not in text and "weights_only" not in text and str(tmp_path / name) in text
    with pytest.raises(CellgenError, match="would import posix.system"):
        load_weights(tmp_path / "hostile.pt")
    assert not (tmp_path / "ran").exists()
    assert torch.equal(load_weights(tmp_path / "good.pt")["w"], torch.ones(3))
