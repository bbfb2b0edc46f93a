import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest

from cellgen import pipeline
from cellgen.datasets.h5 import BenchmarkSet, BenchmarkWriter, verify
from cellgen.errors import DatasetError
from cellgen.masks import validate
from cellgen.simulate import SimulationConfig


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_read_back_and_lazy_access(small_set):
    with BenchmarkSet(small_set) as ds:
        assert len(ds) == 9 and ds.image_size == (128, 128)
        assert ds.variants == ["clean", "gaussian", "poisson"]
        assert ds.images(0).shape == (2, 128, 128) and ds.images(0).dtype == np.uint16
        assert ds.images(slice(0, 3), "poisson").shape == (3, 2, 128, 128)
        m = ds.masks(4)
        assert validate(m.cell, m.nucleus, m.semantic) == []
        meta = ds.metadata
        assert set(meta["tier"]) == {"low", "medium", "high"}
        assert (meta["seed"] == np.arange(3, 12)).all()
        assert np.isnan(meta["psi"]).all() and (meta["source"] == "simulate").all()
        for tier in ds.tier_scheme.names:
            got = [i for i, _, _ in ds.iter_images("gaussian", tier)]
            assert got == list(np.flatnonzero(meta["tier"] == tier))
        snr = ds.snr_db("gaussian")
        assert snr.shape == (9, 2) and np.isfinite(snr).all()
        params = json.loads(ds.noise_params("poisson"))
        assert params["poisson"] is True
        attrs = ds.attrs
        assert attrs["schema_version"] == 1 and json.loads(attrs["recipe"])["source"] == "simulate"
        with pytest.raises(DatasetError, match="no image variant 'severe'"):
            ds.images(0, "severe")
        with pytest.raises(DatasetError, match="unknown tier"):
            ds.indices("huge")


def test_verify_summary(small_set):
    summary = verify(small_set)
    assert summary["n_images"] == 9 and sum(summary["tiers"].values()) == 9


def write(path, n=4, **kw):
    return pipeline.simulate_set(path, SimulationConfig(size=96, count=(2, 8)), n, seed=7,
                                 variants=["gaussian"], progress=False, **kw)


def test_same_options_same_bytes(tmp_path):
    a, b = write(tmp_path / "a.h5"), write(tmp_path / "b.h5")
    assert sha(a) == sha(b)


def test_interrupted_run_resumes_to_identical_bytes(tmp_path, monkeypatch):
    reference = write(tmp_path / "ref.h5", n=5)
    real = pipeline.simulate_image
    calls = []

    def dies_on_fourth(seed, cfg):
        calls.append(seed)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(seed, cfg)

    monkeypatch.setattr(pipeline, "simulate_image", dies_on_fourth)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        write(out, n=5)
    assert not out.exists()
    partial = tmp_path / "out.h5.partial"
    # the three complete images were committed on the way out, as one part
    assert [p.name for p in partial.glob("part-*")] == ["part-000000000-000000003.h5"]
    monkeypatch.setattr(pipeline, "simulate_image", real)
    calls.clear()
    write(out, n=5)
    assert sha(out) == sha(reference)
    assert not partial.exists()


def test_partial_from_other_options_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    monkeypatch.setattr(pipeline, "simulate_image", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write(out)
    monkeypatch.undo()
    with pytest.raises(DatasetError, match="other options"):
        pipeline.simulate_set(out, SimulationConfig(size=96, count=3), 4, seed=7, progress=False)


def test_existing_output_needs_overwrite(tmp_path):
    path = write(tmp_path / "a.h5", n=1)
    with pytest.raises(DatasetError, match="--overwrite"):
        write(path, n=1)
    write(path, n=2, overwrite=True)
    assert len(BenchmarkSet(path)) == 2


def test_missing_truncated_and_foreign_files(tmp_path, small_set):
    with pytest.raises(DatasetError, match="no such file"):
        BenchmarkSet(tmp_path / "nope.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(small_set.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        verify(cut)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        verify(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="not a cellgen benchmark set"):
        verify(foreign)


def test_wrong_shape_dtype_and_inconsistent_masks(tmp_path, small_set):
    bad = tmp_path / "bad.h5"
    shutil.copy(small_set, bad)
    with h5py.File(bad, "r+") as f:
        del f["masks/cell"]
        f["masks/cell"] = np.zeros((9, 64, 64), np.uint32)
    with pytest.raises(DatasetError, match="masks/cell' has shape"):
        verify(bad)
    shutil.copy(small_set, bad)
    with h5py.File(bad, "r+") as f:
        data = f["masks/nucleus"][()].astype(np.int32)
        del f["masks/nucleus"]
        f["masks/nucleus"] = data
    with pytest.raises(DatasetError, match="dtype int32"):
        verify(bad)
    shutil.copy(small_set, bad)
    with h5py.File(bad, "r+") as f:
        n = f["masks/nucleus"][2]
        n[n == n.max()] = 0  # a cell loses its nucleus
        f["masks/nucleus"][2] = n
    with pytest.raises(DatasetError, match="image 2: .*without a nucleus"):
        verify(bad)
    shutil.copy(small_set, bad)
    with h5py.File(bad, "r+") as f:
        f["metadata/tier"][0] = "high" if f["metadata/tier"].asstr()[0] != "high" else "low"
    with pytest.raises(DatasetError, match="image 0: tier"):
        verify(bad)


def test_corrupt_chunk_is_reported(tmp_path, small_set):
    bad = tmp_path / "corrupt.h5"
    shutil.copy(small_set, bad)
    with h5py.File(bad, "r") as f:
        offset = f["masks/cell"].id.get_chunk_info(3).byte_offset
    raw = bytearray(bad.read_bytes())
    raw[offset:offset + 64] = b"\xff" * 64
    bad.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="image 3 cannot be read"):
        verify(bad)


def test_writer_rejects_invalid_masks(tmp_path):
    from cellgen.datasets.h5 import BenchmarkWriter, Sample
    from cellgen.density import DEFAULT_TIERS
    from cellgen.masks import Masks

    w = BenchmarkWriter(tmp_path / "x.h5", 1, (8, 8), pixel_size_um=1, tier_scheme=DEFAULT_TIERS,
                        variants={}, with_images=False, recipe={})
    cell = np.zeros((8, 8), np.uint32)
    cell[1:4, 1:4] = 1
    with pytest.raises(DatasetError, match="without a nucleus"):
        w.write(0, Sample(Masks(np.zeros((8, 8), np.uint8), cell, np.zeros_like(cell))))
    w.close()


def test_full_disk_keeps_partial_and_says_so(tmp_path, monkeypatch):
    import errno

    real_setitem = h5py.Dataset.__setitem__
    calls = []

    def fills_up(self, key, value):
        if self.name == "/images":
            calls.append(key)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", fills_up)
    monkeypatch.setattr(BenchmarkWriter, "PART_IMAGES", 1)
    out = tmp_path / "full.h5"
    with pytest.raises(DatasetError, match="disk full .* rerun the same command to resume"):
        write(out, n=4)
    monkeypatch.undo()
    parts = sorted(p.name for p in (tmp_path / "full.h5.partial").iterdir())
    assert parts == ["part-000000000-000000001.h5", "part-000000001-000000002.h5", "recipe.json"]
    write(out, n=4)
    assert sha(out) == sha(write(tmp_path / "ref.h5", n=4))
